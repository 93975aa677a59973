"""A filter looks at one candidate and keeps it or drops it with a reason.

Filters never raise and never write: the loop counts each reason in stats.json and saves
each dropped candidate with its reason in rejected.jsonl (datatrove's pattern).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

from ..records import Candidate


@dataclass(slots=True, frozen=True)
class Verdict:
    keep: bool
    reason: str | None = None
    detail: dict[str, Any] = field(default_factory=dict)


KEEP = Verdict(True)


def drop(reason: str, **detail: Any) -> Verdict:
    return Verdict(False, reason, detail)


class Filter(Protocol):
    name: str

    def check(self, candidate: Candidate) -> Verdict: ...


def run_filters(filters: list[Filter], candidate: Candidate) -> Verdict:
    """Apply filters in order (cheap ones first); the first drop wins. Keep-details merge."""
    detail: dict[str, Any] = {}
    for f in filters:
        v = f.check(candidate)
        if not v.keep:
            return v
        detail.update(v.detail)
    return Verdict(True, None, detail) if detail else KEEP
