"""Append-only JSONL files that survive kill -9.

A record counts once its line is flushed. On open, a torn last line (a kill in the middle
of a write) is cut off and logged, so the file always holds whole records only.

`iter_records` is the one JSONL line reader: task files, scripted replies and the run's
own files all go through it, so a bad line always gets the same error, naming the file,
the line and what each line must be.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any, Callable, Iterator, Literal

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


class JsonlFormatError(ValueError):
    """A JSONL file holds a line that is not one JSON object."""


def line_ref(path: Path | str, lineno: int) -> str:
    """How errors point at a line: "seed_tasks/x.jsonl line 7"."""
    return f"{path} line {lineno}"


def iter_records(path: Path, *, torn_tail: Literal["raise", "skip"] = "raise", hint: str = "",
                 error: Callable[[str], Exception] = JsonlFormatError) -> Iterator[tuple[int, dict[str, Any]]]:
    """Yield (line number, record) for each non-blank line of a JSONL file.

    A line that is not valid JSON, or is JSON but not an object, raises `error` naming
    the file and the line; `hint` (say, "; fix the line, then resume") is appended to it.
    With torn_tail="skip", an unparseable last line with no newline after it (another
    process is in the middle of writing it) is logged and skipped instead. A file this
    process owns is mended with `repair_tail` before reading, and read with "raise".
    """
    with path.open("rb") as f:  # decoded line by line, so bad UTF-8 is named by its line
        for lineno, raw in enumerate(f, 1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                raise error(f"{line_ref(path, lineno)}: not valid UTF-8 (byte {e.start + 1} of the line); "
                            f"save the file as UTF-8{hint}") from e
            if not line.strip():
                continue
            try:
                rec = json.loads(line.rstrip("\n"))  # so a column past the end is not "column 1"
            except json.JSONDecodeError as e:
                if torn_tail == "skip" and not line.endswith("\n"):  # only the last line lacks one
                    log.info("%s: skipping a partly written last line", path)
                    return
                raise error(f"{line_ref(path, lineno)}: not valid JSON ({e.msg} at column {e.colno}); "
                            f"each line must be one JSON object{hint}") from e
            if not isinstance(rec, dict):
                raise error(f"{line_ref(path, lineno)}: expected a JSON object, got {type(rec).__name__}; "
                            f"each line must be one JSON object{hint}")
            yield lineno, rec


def read_jsonl(path: Path) -> Iterator[dict[str, Any]]:
    """The records of one of the run's append-only files; none when it does not exist yet.
    Call `repair_tail` first: a torn last line here is an error."""
    if not path.exists():
        return
    for _, rec in iter_records(path, hint="; fix or delete the line, or move the file aside, then resume"):
        yield rec


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


def _replace_with(path: Path, text: str) -> None:
    """Replace `path` by `text` in one step, so a reader (or a crash) never sees half a file."""
    tmp = path.with_suffix(path.suffix + ".tmp")
    with tmp.open("w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def rewrite_jsonl(path: Path, records: list[dict[str, Any]]) -> None:
    """Replace a JSONL file with `records` in one step (for a repair on open, never while
    an appender holds the file)."""
    _replace_with(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))


def write_json_atomic(path: Path, data: Any) -> None:
    """Replace `path` with `data` as indented JSON, in one step."""
    _replace_with(path, json.dumps(data, indent=2, ensure_ascii=False, default=str))
