"""Instances for a machine-generated task: reading them from a reply, and the paper's
instance filters (Wang et al. 2022, section 2.3 and its released post-processing).

Replies look like the prompt's examples (selfinstruct/si_prompts.py):

    Example 1                 input-first               output-first (classification)
    Input: ...                                          Class label: positive
    Output: ...                                         Input: ...

Leniently: "Example" headers are optional (a field seen twice starts the next instance),
"Output:" and "Class label:" both name the output in either order, values may span
lines, and "Task:" (the model starting another task) ends the reply.

`filter_instances` decides, in this order, with one reason each:
  truncated            the reply hit the token limit: its last instance may be cut off
  empty_output         nothing to learn from
  input_equals_output  the model copied the input
  ends_with_colon      input or output ends with ":", usually an unfinished generation
  conflicting_outputs  the same non-empty input with different outputs: the task is
                       ambiguous or the outputs wrong, so the whole task is dropped
  duplicate            an exact repeat of an earlier instance (input and output)
  over_limit           beyond the per-task cap (paper: 5), first ones kept
Values are compared with surrounding white space stripped.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass, field

from .parsing import _NO_INPUT  # the spellings of "no input" the task parser accepts, shared on purpose
from .records import Instance

REASONS = ("truncated", "empty_output", "input_equals_output", "ends_with_colon", "conflicting_outputs",
           "duplicate", "over_limit")

_HEADER = re.compile(r"^\s*(?:[#>*_]+\s*)?example\s*#?\s*\d*\s*[:.)\-]?\s*(?:\*\*|__)?\s*$", re.IGNORECASE)
# A field line, possibly after markdown, a list number or its example's header ("2. Example 2: Input: ...").
_FIELD = re.compile(r"^\s*(?:[#>*_]+\s*)?(?:\d+\s*[.)]\s*)?(?:example\s*#?\s*\d+\s*[:.)\-]?\s*(?:\*\*|__)?\s*)?"
                    r"(?:\*\*|__)?\s*(input|output|class\s*label|label)\s*(?:\*\*|__)?\s*[:：]\s*(?:\*\*|__)?\s?(.*)$",
                    re.IGNORECASE)
_NEXT_TASK = re.compile(r"^\s*(?:[#>*_]+\s*)?task\s*\d*\s*[:：]", re.IGNORECASE)


@dataclass(slots=True)
class ParsedInstance:
    input: str
    output: str
    raw: str = ""

    def to_dict(self) -> dict[str, str]:
        return {"input": self.input, "output": self.output}


def _value(lines: list[str]) -> str:
    text = "\n".join(lines).strip()
    if len(text) >= 4 and text.startswith("**") and text.endswith("**"):
        text = text[2:-2].strip()
    return text


def parse_instances(text: str, prefix: str = "") -> list[ParsedInstance]:
    """Instances from a reply, in order. `prefix` is what the prompt ended with on the
    reply's behalf ("Example 1\\nInput:"). Blocks with no field at all are chatter and skipped."""
    blocks: list[dict[str, list[str]]] = []
    raws: list[list[str]] = []
    cur: dict[str, list[str]] = {}
    raw: list[str] = []
    current: str | None = None

    def close() -> None:
        nonlocal cur, raw, current
        if cur:
            blocks.append(cur)
            raws.append(raw)
        cur, raw, current = {}, [], None

    for line in (prefix + (text or "")).splitlines():
        if _NEXT_TASK.match(line):
            break
        if _HEADER.match(line):
            close()
            raw.append(line)
            continue
        m = _FIELD.match(line)
        if m:
            name = "input" if m.group(1).lower() == "input" else "output"
            if name in cur:
                close()
            cur[name] = [m.group(2)]
            current = name
            raw.append(line)
            continue
        raw.append(line)
        if current is not None:
            cur[current].append(line)
    close()
    out = []
    for fields, lines in zip(blocks, raws):
        inp = _value(fields.get("input", []))
        if inp.lower() in _NO_INPUT:
            inp = ""
        out.append(ParsedInstance(inp, _value(fields.get("output", [])), "\n".join(lines).strip()))
    return out


@dataclass(slots=True)
class InstanceDecision:
    kept: list[Instance] = field(default_factory=list)
    dropped: list[tuple[str, ParsedInstance]] = field(default_factory=list)  # (reason, instance), in order
    task_reason: str | None = None  # set when a rule drops the whole task

    def counts(self) -> dict[str, int]:
        return dict(Counter(reason for reason, _ in self.dropped))


def _invalid(inst: ParsedInstance) -> str | None:
    inp, out = inst.input.strip(), inst.output.strip()
    if not out:
        return "empty_output"
    if inp == out:
        return "input_equals_output"
    if inp.endswith(":") or out.endswith(":"):
        return "ends_with_colon"
    return None


def filter_instances(parsed: list[ParsedInstance], truncated: bool = False, max_instances: int = 5
                     ) -> InstanceDecision:
    """Apply the instance filters (see the module docstring) and say what each dropped."""
    d = InstanceDecision()
    survivors = list(parsed)
    if truncated and survivors:
        d.dropped.append(("truncated", survivors.pop()))
    valid = []
    for inst in survivors:
        reason = _invalid(inst)
        if reason:
            d.dropped.append((reason, inst))
        else:
            valid.append(inst)
    outputs_by_input: dict[str, set[str]] = {}
    for inst in valid:
        if inst.input.strip():
            outputs_by_input.setdefault(inst.input.strip(), set()).add(inst.output.strip())
    if any(len(outs) > 1 for outs in outputs_by_input.values()):
        d.dropped.extend(("conflicting_outputs", inst) for inst in valid)
        d.task_reason = "conflicting_outputs"
        return d
    seen: set[tuple[str, str]] = set()
    for inst in valid:
        key = (inst.input.strip(), inst.output.strip())
        if key in seen:
            d.dropped.append(("duplicate", inst))
            continue
        seen.add(key)
        if len(d.kept) >= max_instances:
            d.dropped.append(("over_limit", inst))
        else:
            d.kept.append(Instance(*key))
    return d
