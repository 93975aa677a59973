"""Reading the replies of Self-Instruct's first two steps: a numbered list of new
instructions, and a Yes/No verdict. Like `parsing.parse_reply`, nothing here raises:
what cannot be read becomes a `Rejection` (or None) that the loop counts.

Instruction lists, leniently:

    Task 9: Name three primes.          "9. ...", "9) ...", "**Task 9:** ...", "Task 9: Instruction: ..."
    Task 10: Summarise the
    paragraph in one sentence.          a wrapped line continues the item, until a blank line
    Input: ...                          a field label (the model drifting into another format) ends it

A reply cut off by the token limit loses its last item (`truncated`), as in the paper, unless
a blank line or a field label already closed that item (the cut then fell in chatter after it).
"""

from __future__ import annotations

import re

from .parsing import ParseResult, parse_guarded, unwrap_value
from .records import Candidate, Rejection

_ITEM = re.compile(r"^\s*(?:[#>*_]+\s*)?(?:task\s*#?\s*)?(\d{1,3})\s*(?:\*\*|__)?\s*[:.)\-]\s*(?:\*\*|__)?\s*(.*)$",
                   re.IGNORECASE)
_FIELD = re.compile(r"^\s*(?:[#>*_]+\s*)?(?:input|output|example|class\s*label|label|answer|response)\b\s*\d*\s*"
                    r"(?:\*\*|__)?\s*[:：]", re.IGNORECASE)
_INSTRUCTION_LABEL = re.compile(r"^(?:\*\*|__)?\s*instruction\s*(?:\*\*|__)?\s*[:：]\s*", re.IGNORECASE)
_YES_NO = re.compile(r"\b(yes|no|true|false)\b", re.IGNORECASE)


def _clean_instruction(lines: list[str]) -> str:
    text = " ".join(" ".join(lines).split())
    text = _INSTRUCTION_LABEL.sub("", text)
    if text.count("**") == 1 and (text.startswith("**") or text.endswith("**")):
        text = text.strip("* ")  # the other half went with the list number ("**9. Do X.**")
    return unwrap_value(text, ("**", "__"), min_inner=1)


def parse_instruction_list(text: str, finish_reason: str = "stop", prefix: str = "") -> ParseResult:
    """Candidates (instruction only) from a numbered-list reply. `prefix` is the header the
    prompt ended with on the reply's behalf ("Task 9:"), so the first item reads whole."""

    def fill(result: ParseResult) -> None:
        items: list[list[str]] = []
        open_item = False
        for line in (prefix + (text or "")).splitlines():
            m = _ITEM.match(line)
            if m:
                items.append([m.group(2)])
                open_item = True
                continue
            if not items:
                continue  # a preamble ("Sure! Here are more tasks:")
            if not line.strip() or _FIELD.match(line):
                open_item = False
                continue
            if open_item:
                items[-1].append(line)
        if finish_reason == "length" and items and open_item:
            result.rejections.append(Rejection("truncated", "parse", raw="\n".join(items.pop()).strip()))
        for lines in items:
            instruction = _clean_instruction(lines)
            raw = "\n".join(lines).strip()
            if not instruction:
                result.rejections.append(Rejection("empty_instruction", "parse", raw=raw))
            else:
                result.candidates.append(Candidate(instruction, raw=raw))

    return parse_guarded(text, fill)


def parse_yes_no(text: str) -> bool | None:
    """The verdict of a classification-identification reply: the first yes/no (or
    true/false) word of its first non-empty line; None when there is none."""
    for line in (text or "").splitlines():
        if line.strip():
            m = _YES_NO.search(line)
            return None if m is None else m.group(1).lower() in ("yes", "true")
    return None
