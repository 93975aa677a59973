"""The Self-Instruct paper's heuristic filters (section 2.3), one small class each.

Defaults match the paper's release: instructions of 4-150 words; no keyword a text-only
model cannot act on (image, graph, file, ... as whole words, so "profile" stays); no
"Write a program" (often ambiguous as to language and output); no leading punctuation
or non-ASCII character; and a task must have an output.
"""

from __future__ import annotations

import re
import string
from dataclasses import dataclass, field

from ..records import Candidate
from .base import KEEP, Verdict, drop


@dataclass(slots=True)
class WordCountFilter:
    min_words: int = 4
    max_words: int = 150
    name: str = "length"

    def check(self, c: Candidate) -> Verdict:
        n = len(c.instruction.split())
        if n < self.min_words:
            return drop("too_short", words=n)
        if n > self.max_words:
            return drop("too_long", words=n)
        return KEEP


@dataclass(slots=True)
class KeywordFilter:
    keywords: list[str]
    name: str = "keywords"
    _pattern: re.Pattern[str] | None = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        if self.keywords:
            # Whole words; a phrase matches across any run of white space ("go  to").
            alts = sorted((r"\s+".join(map(re.escape, k.split())) for k in self.keywords), key=len, reverse=True)
            self._pattern = re.compile(r"\b(?:" + "|".join(alts) + r")\b", re.IGNORECASE)

    def check(self, c: Candidate) -> Verdict:
        if self._pattern is not None and (m := self._pattern.search(c.instruction)):
            return drop("blocked_keyword", keyword=m.group(0).lower())
        return KEEP


@dataclass(slots=True)
class PrefixFilter:
    prefixes: list[str]
    name: str = "prefix"

    def check(self, c: Candidate) -> Verdict:
        head = " ".join(c.instruction.split()).lower()
        for p in self.prefixes:
            if head.startswith(" ".join(p.split()).lower()):
                return drop("blocked_prefix", prefix=p)
        return KEEP


@dataclass(slots=True)
class LeadingCharFilter:
    name: str = "leading_char"

    def check(self, c: Candidate) -> Verdict:
        s = c.instruction.strip()
        if not s:
            return drop("empty_instruction")
        if s[0] in string.punctuation:
            return drop("starts_with_punctuation", char=s[0])
        if not s[0].isascii():
            return drop("starts_with_non_ascii", char=s[0])
        return KEEP


# Placeholders a model copies from the prompt format into the output slot. Words like
# "None" or "N/A" are left alone: they can be a task's true answer.
_PLACEHOLDER_OUTPUTS = {"<noinput>", "<no input>", "<nooutput>", "<no output>", "<empty>"}


@dataclass(slots=True)
class EmptyOutputFilter:
    """Drops a candidate with no output, or only the prompt format's no-input marker as
    its output (a base model's copy of the Input line, seen in a third of its tasks)."""

    name: str = "empty_output"

    def check(self, c: Candidate) -> Verdict:
        out = c.output.strip()
        if not out:
            return drop("empty_output")
        if out.lower() in _PLACEHOLDER_OUTPUTS:
            return drop("empty_output", placeholder=out)
        return KEEP
