"""Where each machine instruction stands in Self-Instruct's three steps, on disk.

`instructions.jsonl` in the run directory is append-only, one record per line:

    {"step": "instructions", "request_id": 7, "tasks": [{"id": "machine_task_12", "instruction": ..., "meta": ...}]}
    {"step": "classification", "id": "machine_task_12", "is_classification": true, "answer": "Yes"}
    {"step": "rejected", "id": "machine_task_12", "reason": "no_valid_instances"}

A task whose instances were kept is finished by its line in `pool.jsonl` (a `Task` record,
as the Alpaca method writes), so the pool file stays what export and finetuning read.

One line per instruction request holds all the instructions accepted from its reply (or
none), so a request is durable whole or not at all, and a resumed run never re-issues a
request whose instructions it already has. The loop flushes the pool before this file,
and this file's instruction records before any pool line can name them, so after a kill
-9 every instruction is in exactly one state: unclassified, classified, rejected or in
the pool. Those not finished are completed first on resume, exactly once.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

from .jsonl import JsonlAppender, read_jsonl, repair_tail

log = logging.getLogger(__name__)

PREFIX = "machine_task_"


def task_number(task_id: str) -> int:
    """machine_task_12 -> 12; -1 for ids of another shape."""
    tail = task_id[len(PREFIX):] if task_id.startswith(PREFIX) else ""
    return int(tail) if tail.isdigit() else -1


@dataclass(slots=True)
class MachineInstruction:
    id: str
    instruction: str
    request_id: int
    meta: dict[str, Any] = field(default_factory=dict)
    is_classification: bool | None = None
    classification_answer: str | None = None
    finished: bool = False  # in the pool, or rejected at the instance step

    @property
    def number(self) -> int:
        return task_number(self.id)

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.id, "instruction": self.instruction, "meta": self.meta}


class StepLog:
    def __init__(self, path: Path | None, finished_ids: Iterable[str] = ()):
        self.path = path
        self.items: dict[str, MachineInstruction] = {}
        self.max_request_id = -1
        finished = set(finished_ids)
        self._next = max((task_number(i) + 1 for i in finished), default=0)
        self._out: JsonlAppender | None = None
        if path is None:
            return
        repair_tail(path)
        for rec in read_jsonl(path):
            self._replay(rec)
        for tid in finished & self.items.keys():
            self.items[tid].finished = True
        unknown = finished - self.items.keys()
        if unknown:
            log.warning("%d pool tasks have no record in %s (treated as finished)", len(unknown), path)
        if self.items:
            log.info("resumed %d machine instructions from %s (%d not finished)", len(self.items), path,
                     len(self.pending()))
        self._out = JsonlAppender(path)

    def _replay(self, rec: dict[str, Any]) -> None:
        step = rec.get("step")
        if step == "instructions":
            self.max_request_id = max(self.max_request_id, int(rec["request_id"]))
            for t in rec.get("tasks", []):
                item = MachineInstruction(t["id"], t["instruction"], int(rec["request_id"]), dict(t.get("meta") or {}))
                self.items[item.id] = item
                self._next = max(self._next, item.number + 1)
            return
        item = self.items.get(rec.get("id", ""))
        if item is None:
            log.warning("%s: a %s record for unknown task %r, ignored", self.path, step, rec.get("id"))
        elif step == "classification":
            item.is_classification = bool(rec["is_classification"])
            item.classification_answer = rec.get("answer")
        elif step == "rejected":
            item.finished = True

    def _write(self, rec: dict[str, Any]) -> None:
        if self._out is not None:
            self._out.write(rec)

    # ----------------------------------------------------------------------- transitions

    def next_id(self) -> str:
        tid = f"{PREFIX}{self._next}"
        self._next += 1
        return tid

    def add_request(self, request_id: int, items: list[MachineInstruction]) -> None:
        """Step 1 is done for a request: these instructions were accepted from its reply."""
        for item in items:
            self.items[item.id] = item
        self.max_request_id = max(self.max_request_id, request_id)
        self._write({"step": "instructions", "request_id": request_id, "tasks": [i.to_dict() for i in items]})

    def classify(self, item: MachineInstruction, is_classification: bool, answer: str) -> None:
        item.is_classification = is_classification
        item.classification_answer = answer
        self._write({"step": "classification", "id": item.id, "is_classification": is_classification,
                     "answer": answer})

    def reject(self, item: MachineInstruction, reason: str) -> None:
        """Step 3 left the task without instances: it never enters the pool (its instruction
        stays in the ROUGE index) and is not tried again."""
        item.finished = True
        self._write({"step": "rejected", "id": item.id, "reason": reason})

    def finish(self, item: MachineInstruction) -> None:
        """The task entered the pool; pool.jsonl holds the record."""
        item.finished = True

    # ----------------------------------------------------------------------- queries

    def pending(self) -> list[MachineInstruction]:
        """Instructions not finished yet, oldest first."""
        return sorted((i for i in self.items.values() if not i.finished), key=lambda i: i.number)

    def flush(self) -> None:
        if self._out is not None:
            self._out.flush()

    def close(self) -> None:
        if self._out is not None:
            self._out.close()
