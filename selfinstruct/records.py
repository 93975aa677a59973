"""Plain records that flow between stages, and readers for the task formats we accept.

A `Task` is Self-Instruct's unit: one instruction with one or more instances
(input/output pairs). Seed tasks and machine-generated tasks share the type;
machine tasks carry generation metadata in `meta`.

Readers accept three shapes of file and raise `TaskFormatError` naming the file
and line of the first bad record, so a user can fix it instead of guessing:
  * Self-Instruct JSONL: id, name, instruction, instances [{input, output}], is_classification
  * Alpaca JSON (a list) or JSONL: instruction, input, output
  * chat JSONL: messages [{role, content}, ...]  (the user turn is the instruction)
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator

from .jsonl import iter_records, line_ref


class TaskFormatError(ValueError):
    """A task file holds a record we cannot read."""


@dataclass(slots=True)
class Instance:
    input: str
    output: str

    def to_dict(self) -> dict[str, str]:
        return {"input": self.input, "output": self.output}


@dataclass(slots=True)
class Task:
    id: str
    instruction: str
    instances: list[Instance]
    name: str = ""
    is_classification: bool | None = None
    origin: str = "seed"  # "seed" or "machine"
    meta: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {
            "id": self.id,
            "name": self.name,
            "instruction": self.instruction,
            "instances": [i.to_dict() for i in self.instances],
            "is_classification": self.is_classification,
        }
        if self.origin != "seed":
            d["origin"] = self.origin
        if self.meta:
            d["meta"] = self.meta
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Task:
        return cls(
            id=str(d["id"]),
            name=str(d.get("name") or ""),
            instruction=str(d["instruction"]),
            instances=[Instance(str(i.get("input") or ""), str(i.get("output") or "")) for i in d["instances"]],
            is_classification=d.get("is_classification"),
            origin=str(d.get("origin", "seed")),
            meta=dict(d.get("meta") or {}),
        )


@dataclass(slots=True)
class Candidate:
    """A task the LM proposed, before filtering. `raw` is the reply text it was parsed from."""

    instruction: str
    input: str = ""
    output: str = ""
    raw: str = ""

    def to_dict(self) -> dict[str, str]:
        return {"instruction": self.instruction, "input": self.input, "output": self.output}


@dataclass(slots=True)
class Rejection:
    """Something that did not make it into the pool, and why. Written to rejected.jsonl."""

    reason: str
    stage: str  # "parse", "filter", "instances", ...
    raw: str = ""
    candidate: dict[str, Any] | None = None
    detail: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"stage": self.stage, "reason": self.reason}
        if self.candidate is not None:
            d["candidate"] = self.candidate
        if self.detail:
            d["detail"] = self.detail
        d["raw"] = self.raw
        return d


# --------------------------------------------------------------------------- readers

_SELF_INSTRUCT_KEYS = {"instruction", "instances"}
_ALPACA_KEYS = {"instruction", "output"}


def _task_from_record(rec: Any, where: str, index: int) -> Task:
    if not isinstance(rec, dict):
        raise TaskFormatError(f"{where}: expected a JSON object, got {type(rec).__name__}")
    try:
        if _SELF_INSTRUCT_KEYS <= rec.keys():
            instances = rec["instances"]
            if not isinstance(instances, list) or not instances:
                raise TaskFormatError(f"{where}: 'instances' must be a non-empty list of {{input, output}}")
            for inst in instances:
                if not isinstance(inst, dict) or "output" not in inst:
                    raise TaskFormatError(f"{where}: every instance needs an 'output' (and optional 'input')")
            task = Task.from_dict({"id": rec.get("id", f"task_{index}"), **rec})
        elif _ALPACA_KEYS <= rec.keys():
            task = Task(
                id=str(rec.get("id", f"task_{index}")),
                instruction=str(rec["instruction"]),
                instances=[Instance(str(rec.get("input") or ""), str(rec["output"]))],
                is_classification=rec.get("is_classification"),
            )
        elif "messages" in rec:
            msgs = rec["messages"]
            user = [m["content"] for m in msgs if m.get("role") == "user"]
            assistant = [m["content"] for m in msgs if m.get("role") == "assistant"]
            if not user or not assistant:
                raise TaskFormatError(f"{where}: 'messages' needs a user and an assistant turn")
            task = Task(id=str(rec.get("id", f"task_{index}")), instruction=user[0],
                        instances=[Instance("", assistant[0])])
        else:
            raise TaskFormatError(
                f"{where}: unknown record shape with keys {sorted(rec)}; expected Self-Instruct "
                "(instruction, instances), Alpaca (instruction, input, output) or chat (messages)"
            )
    except (KeyError, TypeError, AttributeError) as e:
        raise TaskFormatError(f"{where}: malformed record ({e!r})") from e
    if not task.instruction.strip():
        raise TaskFormatError(f"{where}: empty 'instruction'")
    return task


def iter_tasks(path: str | Path) -> Iterator[Task]:
    """Yield tasks from a JSONL file (any accepted shape) or a JSON list file."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"task file not found: {path}")
    if path.suffix == ".json":
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as e:
            raise TaskFormatError(f"{line_ref(path, e.lineno)}: not valid JSON ({e.msg} at column {e.colno}); "
                                  "a .json task file must hold one JSON list of records") from e
        if not isinstance(data, list):
            raise TaskFormatError(f"{path}: a .json task file must hold a list of records")
        for i, rec in enumerate(data):
            yield _task_from_record(rec, f"{path}: record {i}", i)
        return
    for lineno, rec in iter_records(path, error=TaskFormatError):
        yield _task_from_record(rec, line_ref(path, lineno), lineno - 1)


def load_tasks(paths: str | Path | Iterable[str | Path]) -> list[Task]:
    """Load tasks from one path or several; a directory means every *.jsonl / *.json in it, sorted."""
    if isinstance(paths, (str, Path)):
        paths = [paths]
    tasks: list[Task] = []
    for p in paths:
        p = Path(p)
        files = sorted([*p.glob("*.jsonl"), *p.glob("*.json")]) if p.is_dir() else [p]
        for file in files:
            tasks.extend(iter_tasks(file))
    return tasks


def write_jsonl(path: str | Path, records: Iterable[dict[str, Any]]) -> int:
    """Write records as JSONL (UTF-8, one object per line); return the count."""
    n = 0
    with Path(path).open("w", encoding="utf-8") as f:
        for rec in records:
            f.write(json.dumps(rec, ensure_ascii=False) + "\n")
            n += 1
    return n
