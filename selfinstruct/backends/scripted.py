"""A backend that replays canned replies: for tests, dry runs and CI without weights.

Replies come from a list (cycled), a JSONL file of {"text", "finish_reason"} records, or a
callable `(request) -> str | Reply` that can make replies depend on the prompt.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Callable, Iterable, Iterator

from .base import GenerationParams, Reply, Request


class ScriptedBackend:
    name = "scripted"

    def __init__(self, replies: list[str | Reply] | Callable[[Request], str | Reply] | str | Path):
        if isinstance(replies, (str, Path)):
            with Path(replies).open(encoding="utf-8") as f:
                replies = [Reply(**json.loads(line)) for line in f if line.strip()]
        if not callable(replies) and not replies:
            raise ValueError("ScriptedBackend needs at least one reply")
        self._replies = replies
        self.calls = 0
        self.prompts: list[Request] = []

    def _reply_for(self, request: Request) -> Reply:
        if callable(self._replies):
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
