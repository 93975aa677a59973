"""Append-only JSONL files that survive kill -9.

A record counts once its line is flushed. On open, a torn last line (a kill in the middle
of a write) is cut off and logged, so the file always holds whole records only.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any, Iterator

log = logging.getLogger(__name__)


def repair_tail(path: Path) -> int:
    """Truncate a partial or unparseable last line; return the bytes removed."""
    if not path.exists():
        return 0
    with path.open("rb+") as f:
        f.seek(0, os.SEEK_END)
        size = f.tell()
        if size == 0:
            return 0
        # Read back far enough to see the last full line.
        chunk = min(size, 1 << 20)
        f.seek(size - chunk)
        tail = f.read(chunk)
        keep = size
        if not tail.endswith(b"\n"):
            cut = tail.rfind(b"\n")
            keep = size - chunk + cut + 1 if cut >= 0 else (0 if chunk == size else size)
        else:
            last_start = tail.rfind(b"\n", 0, len(tail) - 1) + 1
            try:
                json.loads(tail[last_start:])
            except ValueError:
                keep = size - chunk + last_start
        if keep < size:
            f.truncate(keep)
            log.warning("%s: removed a torn last line (%d bytes) left by an interrupted write", path, size - keep)
        return size - keep


def read_jsonl(path: Path) -> Iterator[dict[str, Any]]:
    if not path.exists():
        return
    with path.open(encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if line.strip():
                try:
                    yield json.loads(line)
                except json.JSONDecodeError as e:
                    raise ValueError(f"{path}:{lineno}: corrupt record ({e.msg}); "
                                     "move the file aside or fix the line, then resume") from e


class JsonlAppender:
    """Buffered appends; `flush()` makes them durable (called once per round).

    Records wait in memory until `flush()`, which writes them in one piece: a file
    object's own buffer would spill every 8 KB, leaving part of a round (and a torn
    line) on disk while the stats that say where the round started are not yet written.
    """

    def __init__(self, path: Path):
        self.path = path
        repair_tail(path)
        self._f = path.open("a", encoding="utf-8")
        self._pending: list[str] = []

    def write(self, record: dict[str, Any]) -> None:
        self._pending.append(json.dumps(record, ensure_ascii=False) + "\n")

    def flush(self) -> None:
        if self._pending:
            self._f.write("".join(self._pending))
            self._pending.clear()
        self._f.flush()
        os.fsync(self._f.fileno())

    def close(self) -> None:
        if not self._f.closed:
            self.flush()
            self._f.close()


def write_json_atomic(path: Path, data: Any) -> None:
    """Replace `path` in one step, so a reader (or a crash) never sees half a file."""
    tmp = path.with_suffix(path.suffix + ".tmp")
    with tmp.open("w", encoding="utf-8") as f:
        json.dump(data, f, indent=2, ensure_ascii=False, default=str)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
