"""The growing task pool: human seeds plus accepted machine tasks, and their ROUGE-L index.

Machine tasks are persisted to `pool.jsonl` (append-only, flushed every round); on resume
the pool and its index are rebuilt from that file, so the file is the single source of truth.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Sequence

from .jsonl import JsonlAppender, read_jsonl, repair_tail
from .records import Task
from .similarity import RougeLIndex

log = logging.getLogger(__name__)


class TaskPool:
    def __init__(self, seeds: Sequence[Task], path: Path | None = None, index: RougeLIndex | None = None):
        if not seeds:
            raise ValueError("the seed task pool is empty: point seed_tasks at at least one task file")
        self.seeds = list(seeds)
        self.machine: list[Task] = []
        self.index = index if index is not None else RougeLIndex()
        self.index.extend(t.instruction for t in self.seeds)
        self.path = path
        self._out: JsonlAppender | None = None
        if path is not None:
            torn = repair_tail(path)
            loaded = [Task.from_dict(d) for d in read_jsonl(path)]
            if torn and loaded:
                loaded = _drop_partial_request(path, loaded)
            self.machine.extend(loaded)
            self.index.extend(t.instruction for t in loaded)
            if loaded:
                log.info("resumed %d machine tasks from %s", len(loaded), path)
            self._out = JsonlAppender(path)

    def __len__(self) -> int:
        return len(self.seeds) + len(self.machine)

    @property
    def machine_count(self) -> int:
        return len(self.machine)

    def next_id(self) -> str:
        return f"machine_task_{len(self.machine)}"

    def add(self, task: Task) -> None:
        """Accept a task: it joins the index at once (later candidates of the same batch are
        compared against it) and its line is written; durable at the next `flush()`."""
        self.machine.append(task)
        self.index.add(task.instruction)
        if self._out is not None:
            self._out.write(task.to_dict())

    def flush(self) -> None:
        if self._out is not None:
            self._out.flush()

    def close(self) -> None:
        if self._out is not None:
            self._out.close()


def _drop_partial_request(path: Path, loaded: list[Task]) -> list[Task]:
    """A torn last line may be one of several tasks from one reply, whose other tasks went
    to disk in the same interrupted write. Cut them too, so that request is made again
    whole (resuming starts after the pool's last request id) rather than half kept."""
    rid = loaded[-1].meta.get("request_id")
    if rid is None:
        return loaded
    keep = len(loaded)
    while keep and loaded[keep - 1].meta.get("request_id") == rid:
        keep -= 1
    offset = seen = 0
    with path.open("rb+") as f:
        for line in f:
            if seen == keep:
                break
            offset += len(line)
            seen += bool(line.strip())
        f.truncate(offset)
    log.warning("%s: also removed %d task(s) of request %s written with the torn line; it will be made again",
                path, len(loaded) - keep, rid)
    return loaded[:keep]
