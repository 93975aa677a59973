"""Turn an LM reply into candidate tasks. Never raises: what cannot be parsed becomes a
`Rejection` with its raw text and a reason, and is saved in the run's rejects file.

Accepted shapes, leniently (small models drift from the format):

    Task 9                                   ### / **Task 9** / Task 9: also start a block
    Instruction: Name three primes.          "9. Instruction:", "**Instruction:**", "### Instruction:"
    Input: <noinput>                         <noinput>, N/A, None, (none) mean no input
    Output: 2, 3 and 5.                      multi-line values run until the next label

A reply cut off by the token limit (finish_reason "length") loses only its last block,
which is rejected as `truncated`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Callable

from .records import Candidate, Rejection

_FIELD = re.compile(
    r"^\s*(?:#+\s*)?(?:task\s*#?\s*\d+\s*[:.)\-]?\s*)?(?:\*\*|__)?\s*(?:\d+\s*[.)]\s*)?(?:\*\*|__)?\s*"
    r"(instructions?|input|output)\s*(?:\*\*|__)?\s*[:：]\s*(?:\*\*|__)?\s?(.*)$",
    re.IGNORECASE,
)
_HEADER = re.compile(r"^\s*(?:#+\s*)?(?:\*\*|__)?\s*(?:task\s*#?\s*\d+\s*[:.)\-]?|#{3,})\s*(?:\*\*|__)?\s*$",
                     re.IGNORECASE)
# "Task 9: Name three primes." -- a header with the instruction on the same line.
_HEADER_INLINE = re.compile(r"^\s*(?:#+\s*)?(?:\*\*|__)?\s*task\s*#?\s*\d+\s*[:.)\-]\s*(?:\*\*|__)?\s*(\S.*)$",
                            re.IGNORECASE)
_NO_INPUT = {"", "<noinput>", "<no input>", "noinput", "no input", "n/a", "na", "none", "(none)", "-", "null",
             "<none>", "nothing", "empty"}


@dataclass(slots=True)
class ParseResult:
    candidates: list[Candidate] = field(default_factory=list)
    rejections: list[Rejection] = field(default_factory=list)


@dataclass(slots=True)
class _Block:
    fields: dict[str, list[str]] = field(default_factory=dict)
    order: list[str] = field(default_factory=list)
    lines: list[str] = field(default_factory=list)
    plural_label: bool = False  # the instruction was labelled "Instructions:"

    def raw(self) -> str:
        return "\n".join(self.lines).strip()


def unwrap_value(text: str, marks: tuple[str, ...] = ("**",), min_inner: int = 0) -> str:
    """`text` without the markdown emphasis (each of `marks`, in turn), then the quotes, that a
    model wrapped the whole of it in: '**"Name a prime."**' -> 'Name a prime.'. A mark pair
    counts only around at least `min_inner` characters with no mark inside ("**a** and **b**"
    is two emphases, not one); quotes only when there are just two."""
    for mark in marks:
        if (len(text) >= 2 * len(mark) + min_inner and text.startswith(mark) and text.endswith(mark)
                and mark not in text[len(mark):-len(mark)]):
            text = text[len(mark):-len(mark)].strip()
    if len(text) >= 2 and text[0] == text[-1] and text[0] in "\"'`" and text.count(text[0]) == 2:
        text = text[1:-1].strip()
    return text


def _clean(lines: list[str]) -> str:
    # min_inner=1: a bare "****" (a masked password, say) is a value, not an empty emphasis.
    return unwrap_value("\n".join(lines).strip(), min_inner=1)


def _split_blocks(text: str) -> list[_Block]:
    blocks: list[_Block] = []
    cur = _Block()
    current_field: str | None = None

    def close() -> None:
        nonlocal cur, current_field
        if cur.fields or cur.raw():
            blocks.append(cur)
        cur = _Block()
        current_field = None

    for line in text.splitlines():
        if _HEADER.match(line):
            close()
            cur.lines.append(line)
            continue
        m = _FIELD.match(line)
        if m and current_field == "output" and m.group(1).lower() == "instructions" and not cur.plural_label:
            # "Instructions:" inside an output is a recipe's or a how-to's own heading (seed
            # tasks 23 and 71 of the original set), unless the model labels its tasks that way.
            m = None
        inline = None if m else _HEADER_INLINE.match(line)
        if inline:
            close()
            cur.fields["instruction"] = [inline.group(1)]
            cur.order.append("instruction")
            current_field = "instruction"
            cur.lines.append(line)
            continue
        if m:
            label = m.group(1).lower()
            name = {"instructions": "instruction"}.get(label, label)
            # A second instruction, or a field seen twice, starts the next task.
            if name == "instruction" and cur.fields or name in cur.fields:
                close()
            cur.fields[name] = [m.group(2)]
            cur.order.append(name)
            if name == "instruction":
                cur.plural_label = label == "instructions"
            current_field = name
            cur.lines.append(line)
            continue
        cur.lines.append(line)
        if current_field is not None:
            cur.fields[current_field].append(line)
    close()
    return blocks


def parse_guarded(text: str, fill: Callable[[ParseResult], None]) -> ParseResult:
    """Run a parser body that fills a `ParseResult`, with the guarantees every reply parser
    gives: a reply that yields nothing is reported as `no_task_found`, and an exception
    inside becomes a `parser_error` rejection (a reply must never crash a run)."""
    result = ParseResult()
    try:
        fill(result)
        if not result.candidates and not result.rejections:
            result.rejections.append(Rejection("no_task_found", "parse", raw=text or ""))
    except Exception as e:
        result.candidates.clear()
        result.rejections = [Rejection("parser_error", "parse", raw=text or "", detail={"error": repr(e)})]
    return result


def parse_reply(text: str, finish_reason: str = "stop", prefix: str = "") -> ParseResult:
    """Parse one reply. `prefix` is text the prompt ended with on the reply's behalf
    (plain prompts end with "Instruction:"), so the first block reads whole."""

    def fill(result: ParseResult) -> None:
        blocks = [b for b in _split_blocks(prefix + (text or "")) if b.fields or b.raw()]
        if finish_reason == "length" and blocks:
            last = blocks.pop()
            result.rejections.append(Rejection("truncated", "parse", raw=last.raw()))
        for block in blocks:
            _parse_block(block, result)

    return parse_guarded(text, fill)


def _parse_block(block: _Block, result: ParseResult) -> None:
    raw = block.raw()
    if "instruction" not in block.fields:
        # Preamble or chatter between tasks ("Sure! Here are...") carries no task: only report
        # it when it is all there is, so polite replies do not flood the rejects file.
        if block.fields:
            result.rejections.append(Rejection("missing_instruction", "parse", raw=raw))
        elif not result.candidates and raw:
            result.rejections.append(Rejection("no_task_found", "parse", raw=raw))
        return
    instruction = _clean(block.fields["instruction"])
    if not instruction:
        result.rejections.append(Rejection("empty_instruction", "parse", raw=raw))
        return
    if "output" not in block.fields:
        result.rejections.append(Rejection("missing_output", "parse", raw=raw,
                                           candidate={"instruction": instruction}))
        return
    inp = _clean(block.fields.get("input", []))
    if inp.strip().lower() in _NO_INPUT:
        inp = ""
    result.candidates.append(Candidate(instruction, inp, _clean(block.fields["output"]), raw=raw))
