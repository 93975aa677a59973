"""Run counters, rewritten atomically to stats.json every round so a run in progress can be
inspected (`selfinstruct stats`) and a resumed run continues its counts."""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from .jsonl import write_json_atomic


@dataclass
class RunStats:
    requests: int = 0
    failed_requests: int = 0
    retries: int = 0
    truncated_replies: int = 0
    candidates: int = 0
    kept: int = 0
    dropped: Counter = field(default_factory=Counter)  # reason -> count (parse and filter stages)
    prompt_tokens: int = 0
    completion_tokens: int = 0
    elapsed_s: float = 0.0
    rounds: int = 0
    next_request_id: int = 0
    extra: dict[str, Any] = field(default_factory=dict)  # stage-specific counters (instances, costs...)

    @property
    def total_dropped(self) -> int:
        return sum(self.dropped.values())

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["dropped"] = dict(sorted(self.dropped.items(), key=lambda kv: (-kv[1], kv[0])))
        d["total_dropped"] = self.total_dropped
        d["keep_rate"] = round(self.kept / self.candidates, 4) if self.candidates else 0.0
        d["tokens_per_s"] = round(self.completion_tokens / self.elapsed_s, 2) if self.elapsed_s else 0.0
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> RunStats:
        names = {f for f in cls.__dataclass_fields__}
        s = cls(**{k: v for k, v in d.items() if k in names})
        s.dropped = Counter(s.dropped)
        return s

    def save(self, path: Path) -> None:
        write_json_atomic(path, self.to_dict())

    @classmethod
    def load(cls, path: Path) -> RunStats:
        if not path.exists():
            return cls()
        return cls.from_dict(json.loads(path.read_text(encoding="utf-8")))
