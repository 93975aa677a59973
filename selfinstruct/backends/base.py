"""The one small interface every LM backend implements.

The loop hands a backend a stream of `Request`s and reads `(request, Reply)` pairs back
in completion order. A local backend batches the stream; a remote one keeps many requests
in flight. Either way the loop filters and persists each reply as it arrives.

A `Reply` always says why generation stopped: a reply cut off by the token limit
(`finish_reason == "length"`) loses its last, incomplete task in parsing.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Iterator, Protocol, runtime_checkable


@dataclass(slots=True)
class GenerationParams:
    temperature: float = 0.7
    top_p: float = 0.5
    max_new_tokens: int = 1024
    stop: list[str] = field(default_factory=list)
    seed: int | None = None
    # Generate at least this many tokens (end-of-text is held back until then); benchmarks use it
    # so that every sequence of a batch is the same length. Local backends only.
    min_new_tokens: int = 0


@dataclass(slots=True)
class Prompt:
    """Either plain text (completion style) or chat messages (chat style).

    `prefill` starts the assistant's turn on its behalf (only backends with
    `supports_prefill` get one). `reply_prefix` is the text that the reply continues (the
    end of a plain prompt, or the prefill); the parser reads `reply_prefix + reply`.
    """

    text: str | None = None
    messages: list[dict[str, str]] | None = None
    prefill: str = ""
    reply_prefix: str = ""

    def as_text(self) -> str:
        if self.text is not None:
            return self.text
        return "\n\n".join(m["content"] for m in self.messages or [])


@dataclass(slots=True)
class Request:
    """One prompt plus what the loop needs to know about it when its reply comes back.

    `shrink`, when set, returns a smaller version of this request (fewer in-context tasks)
    or None; a backend calls it when a server rejects the prompt as too long.
    """

    id: int
    prompt: Prompt
    meta: dict[str, Any] = field(default_factory=dict)
    shrink: Callable[[], Request | None] | None = None


@dataclass(slots=True)
class Reply:
    text: str
    finish_reason: str = "stop"  # "stop" | "length" | "error"
    prompt_tokens: int = 0
    completion_tokens: int = 0
    error: str | None = None
    retries: int = 0


class BackendError(RuntimeError):
    """A backend cannot work at all (bad model path, missing key, refused request)."""


@runtime_checkable
class LMBackend(Protocol):
    name: str

    def imap(self, requests: Iterable[Request], params: GenerationParams) -> Iterator[tuple[Request, Reply]]:
        """Generate for each request, yielding as replies complete (any order).

        Requests are pulled lazily: the loop builds later prompts from a pool that grows
        with the replies already yielded.
        """
        ...

    def close(self) -> None: ...


def batched(it: Iterable[Request], n: int) -> Iterator[list[Request]]:
    batch: list[Request] = []
    for r in it:
        batch.append(r)
        if len(batch) == n:
            yield batch
            batch = []
    if batch:
        yield batch
