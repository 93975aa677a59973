"""A backend that replays canned replies: for tests, dry runs and CI without weights.

Replies come from a list (cycled), a JSONL file of {"text", "finish_reason"} records, or a
callable `(request) -> str | Reply` that can make replies depend on the prompt.

A file's records may name the request they answer ({"request_id": 7, "text": ...}); then
request 7 gets that reply whatever the order of calls, so a resumed run continues the
script where the interrupted one stopped (a request the script does not answer gets an
error reply). `delay_s` makes every reply take that long: tests use it to kill a run
part way.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Callable, Iterable, Iterator

from ..jsonl import JsonlFormatError, iter_records, line_ref
from .base import GenerationParams, Reply, Request


class ScriptedBackend:
    name = "scripted"

    def __init__(self, replies: list[str | Reply] | Callable[[Request], str | Reply] | str | Path,
                 delay_s: float = 0.0):
        self._by_request: dict[int, Reply] | None = None
        if isinstance(replies, (str, Path)):
            replies, self._by_request = _read_script(Path(replies))
        if not callable(replies) and not replies and not self._by_request:
            raise ValueError("ScriptedBackend needs at least one reply")
        self._replies = replies
        self.delay_s = delay_s
        self.calls = 0
        self.prompts: list[Request] = []

    def _reply_for(self, request: Request) -> Reply:
        if self.delay_s > 0:
            time.sleep(self.delay_s)
        if self._by_request is not None:
            r = self._by_request.get(request.id) or Reply(
                "", "error", error=f"the script has no reply for request {request.id}")
        elif callable(self._replies):
            r = self._replies(request)
        else:
            r = self._replies[self.calls % len(self._replies)]
        self.calls += 1
        if isinstance(r, str):
            r = Reply(text=r)
        return Reply(r.text, r.finish_reason, len(request.prompt.as_text().split()), len(r.text.split()), r.error)

    def imap(self, requests: Iterable[Request], params: GenerationParams) -> Iterator[tuple[Request, Reply]]:
        for req in requests:
            self.prompts.append(req)
            yield req, self._reply_for(req)

    def close(self) -> None:
        pass


def _read_script(path: Path) -> tuple[list[Reply], dict[int, Reply] | None]:
    """Read a replies file: a list to cycle, or (when records carry request_id) a map."""
    replies: list[Reply] = []
    keyed: dict[int, Reply] = {}
    for lineno, rec in iter_records(path):
        try:
            rid = rec.pop("request_id", None)
            reply = Reply(**rec)
            if rid is not None:
                rid = int(rid)
        except (ValueError, TypeError) as e:
            raise JsonlFormatError(f"{line_ref(path, lineno)}: not a reply record "
                                   f"{{text, finish_reason, request_id?}} ({e})") from e
        if rid is None:
            replies.append(reply)
        else:
            keyed[rid] = reply
    if keyed and replies:
        raise JsonlFormatError(f"{path}: either every record names its request_id or none does")
    return replies, keyed or None
