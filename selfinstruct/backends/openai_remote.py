"""The remote backend: any OpenAI-compatible server (OpenAI, vLLM, llama.cpp server, Ollama).

Requests run on the official `openai` async client, on an event loop in a background
thread, so up to `max_concurrency` of them are in flight while the caller's thread filters
and persists the replies that came back. `imap` pulls the next request from the loop's lazy
stream only when a slot frees, because later prompts sample from the pool the earlier
replies grew.

Faults, by what they mean:

    429, 5xx, 408, timeouts, dropped connections, unreadable replies
        retried with tenacity: exponential back-off with jitter (a 429's Retry-After wins
        and pauses every request to that server), at most `max_attempts` attempts, each
        retry logged at WARNING. After the last attempt the request yields an error Reply.
    400 "prompt too long" (any server's wording of it)
        the request is rebuilt with fewer in-context tasks (`Request.shrink`) and re-sent.
    401, 403, 404
        the key, the model name or the URL is wrong: the run stops at once with the
        server's message (RemoteConfigError).
    other 4xx
        this request fails fast with the server's message; the run goes on.

A run of failed requests (`max(10, max_concurrency)` in a row, none succeeding) means the
server is down: the run stops with BackendError rather than spin.

The key is read from the environment variable `api_key_env` and only handed to the client;
every message this module logs, raises or returns is scrubbed of it.
"""

from __future__ import annotations

import email.utils
import itertools
import json
import logging
import math
import os
import queue
import random
import re
import threading
import time
from collections import Counter
from dataclasses import dataclass
from typing import Any, Iterable, Iterator

from ..config import ConfigError
from .aioloop import LoopThread
from .base import BackendError, GenerationParams, Reply, Request
from .ratelimit import Cooldown, RateLimiter

log = logging.getLogger(__name__)

NO_KEY = "no-key-needed"  # what a local server that checks no key is sent
MAX_STOP_STRINGS = 4  # the OpenAI API's limit; most compatible servers share it
FATAL_STATUS = {401: "the key was refused", 403: "the key may not use this model or endpoint",
                404: "the model or the URL does not exist on this server"}
# How OpenAI, vLLM, llama.cpp and TGI word "your prompt does not fit the context window".
_TOO_LONG = re.compile(r"context[ _-]?(length|size|window)|maximum context|too many tokens|prompt is too long|"
                       r"too long for|exceed_context|exceeds? the (available )?context|input is too long",
                       re.IGNORECASE)


class RemoteConfigError(BackendError, ConfigError):
    """The remote settings cannot work (missing or refused key, unknown model or URL)."""


class ServerUnavailableError(BackendError):
    """Every recent request failed after all its attempts."""


class _Failure(Exception):
    attempts = 0  # attempts made at this prompt size when it was given up


class _Retryable(_Failure):
    def __init__(self, reason: str, message: str, retry_after: float | None = None):
        super().__init__(message)
        self.reason = reason
        self.message = message
        self.retry_after = retry_after


class _PromptTooLong(_Failure):
    pass


class _RequestFailed(_Failure):
    pass


class _InvalidReply(Exception):
    pass


@dataclass(slots=True)
class _TooLong:
    """A request the server found too long, handed back to be shrunk on the caller's thread."""

    request: Request
    attempts: int
    message: str


def parse_retry_after(headers: Any) -> float | None:
    """Seconds to wait from `retry-after-ms`, or `Retry-After` in seconds or as an HTTP date."""
    if headers is None:
        return None
    ms = headers.get("retry-after-ms")
    if ms is not None:
        try:
            return max(0.0, float(ms) / 1000)
        except ValueError:
            pass
    value = headers.get("retry-after")
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


def _server_message(exc: Exception) -> str:
    """The server's own error text (an OpenAI-style {"error": {"message": ...}} or the body)."""
    body = getattr(exc, "body", None)
    if isinstance(body, dict):
        inner = body.get("error", body)
        if isinstance(inner, dict) and inner.get("message"):
            return str(inner["message"])
        if isinstance(inner, str):
            return inner
        if body.get("message"):
            return str(body["message"])
    return str(getattr(exc, "message", None) or exc)


class OpenAIBackend:
    name = "openai"
    supports_plain = True  # a plain prompt goes to the chat endpoint as one user message
    supports_prefill = False  # the API has no portable way to start the assistant's turn

    def __init__(self, model: str, *, base_urls: list[str] | str = "https://api.openai.com/v1",
                 endpoint: str = "chat", api_key_env: str = "OPENAI_API_KEY", require_key: bool = True,
                 max_concurrency: int = 16, requests_per_minute: float = 0, tokens_per_minute: float = 0,
                 timeout_s: float = 120, max_attempts: int = 6, token_budget: int = 0, cost_budget: float = 0,
                 price_per_1m_prompt_tokens: float = 0, price_per_1m_completion_tokens: float = 0,
                 backoff_s: float = 1.0, backoff_max_s: float = 60.0):
        urls = [base_urls] if isinstance(base_urls, str) else list(base_urls)
        if not urls or not all(u.strip() for u in urls):
            raise RemoteConfigError("backend.openai.base_urls is empty; give the server's URL, e.g. "
                                    "http://127.0.0.1:8000/v1")
        if endpoint not in ("chat", "completions"):
            raise RemoteConfigError(f"backend.openai.endpoint: {endpoint!r} is not 'chat' or 'completions'")
        if max_concurrency < 1 or max_attempts < 1 or timeout_s <= 0:
            raise RemoteConfigError("backend.openai: max_concurrency and max_attempts must be >= 1 and "
                                    "timeout_s > 0")
        if cost_budget and not (price_per_1m_prompt_tokens or price_per_1m_completion_tokens):
            raise RemoteConfigError("backend.openai.cost_budget needs prices: set price_per_1m_prompt_tokens "
                                    "and price_per_1m_completion_tokens")
        key = os.environ.get(api_key_env, "").strip()
        if not key and require_key:
            raise RemoteConfigError(
                f"the environment variable {api_key_env} is not set; export {api_key_env}=<your key> "
                f"(backend.openai.api_key_env names the variable), or set backend.openai.require_key: false "
                f"for a local server that needs no key")
        self._key = key  # never logged, never written: see _scrub
        self.model_name = model
        self.base_urls = [u.rstrip("/") for u in urls]
        self.endpoint = endpoint
        self.supports_chat = endpoint == "chat"
        self.max_concurrency = max_concurrency
        self.timeout_s = timeout_s
        self.max_attempts = max_attempts
        self.backoff_s = backoff_s
        self.backoff_max_s = backoff_max_s
        self.token_budget = token_budget
        self.cost_budget = cost_budget
        self.prices = (price_per_1m_prompt_tokens, price_per_1m_completion_tokens)
        self.max_consecutive_failures = max(10, max_concurrency)
        self._rpm = RateLimiter(requests_per_minute) if requests_per_minute else None
        self._tpm = RateLimiter(tokens_per_minute) if tokens_per_minute else None
        self._cooldown = Cooldown()
        self._loop: LoopThread | None = None
        self._clients: list[Any] = []
        self._next_client = itertools.count()
        self._counts: Counter = Counter()  # retry reasons etc. since the last annotate_stats
        self._counts_lock = threading.Lock()
        self._warned_stop = False

    @classmethod
    def from_config(cls, cfg: Any) -> OpenAIBackend:
        """Build from a `BackendConfig` (kind openai) and its `openai:` section."""
        r = cfg.openai
        return cls(cfg.model, base_urls=r.base_urls, endpoint=r.endpoint, api_key_env=r.api_key_env,
                   require_key=r.require_key, max_concurrency=r.max_concurrency,
                   requests_per_minute=r.requests_per_minute, tokens_per_minute=r.tokens_per_minute,
                   timeout_s=r.timeout_s, max_attempts=r.max_attempts, token_budget=r.token_budget,
                   cost_budget=r.cost_budget, price_per_1m_prompt_tokens=r.price_per_1m_prompt_tokens,
                   price_per_1m_completion_tokens=r.price_per_1m_completion_tokens, backoff_s=r.backoff_s,
                   backoff_max_s=r.backoff_max_s)

    def __repr__(self) -> str:
        return f"OpenAIBackend(model={self.model_name!r}, base_urls={self.base_urls!r}, endpoint={self.endpoint!r})"

    # ------------------------------------------------------------------ lifecycle

    def _scrub(self, text: str) -> str:
        return text.replace(self._key, "***") if self._key else text

    def _start(self) -> LoopThread:
        if self._loop is None:
            self._loop = LoopThread()

            async def make_clients() -> list[Any]:
                import openai

                # Retries are ours (tenacity), so the client's own are off.
                return [openai.AsyncOpenAI(api_key=self._key or NO_KEY, base_url=url, max_retries=0,
                                           timeout=self.timeout_s) for url in self.base_urls]

            self._clients = self._loop.call(make_clients())
            log.info("remote backend: model %s at %s (%s endpoint), up to %d requests in flight",
                     self.model_name, ", ".join(self.base_urls), self.endpoint, self.max_concurrency)
        return self._loop

    def close(self) -> None:
        if self._loop is None:
            return

        async def close_clients() -> None:
            for c in self._clients:
                await c.close()

        try:
            self._loop.call(close_clients(), timeout=10)
        except Exception as e:  # closing must not hide the run's own outcome
            log.debug("closing HTTP clients: %s", self._scrub(repr(e)))
        self._loop.close()
        self._loop, self._clients = None, []

    # ------------------------------------------------------------------ the stream

    def imap(self, requests: Iterable[Request], params: GenerationParams) -> Iterator[tuple[Request, Reply]]:
        loop = self._start()
        source = iter(requests)
        in_flight: dict[Any, Request] = {}
        completed: queue.SimpleQueue = queue.SimpleQueue()
        exhausted = False
        failures_in_a_row = 0

        def submit(req: Request, attempts: int = 0) -> None:
            fut = loop.submit(self._complete(req, params, attempts))
            in_flight[fut] = req
            fut.add_done_callback(completed.put)

        try:
            while True:
                # Top up the free slots; each pull builds a prompt from the pool as it is now.
                while not exhausted and len(in_flight) < self.max_concurrency:
                    req = next(source, None)
                    if req is None:
                        exhausted = True
                        break
                    submit(req)
                if not in_flight:
                    return
                while True:
                    try:
                        fut = completed.get(timeout=1.0)  # a timeout keeps Ctrl-C responsive
                        break
                    except queue.Empty:
                        continue
                del in_flight[fut]
                result = fut.result()  # RemoteConfigError: stop the run now
                if isinstance(result, _TooLong):
                    result = self._shrink(result)
                    if isinstance(result, _TooLong):
                        submit(result.request, result.attempts)
                        continue
                req, reply = result
                failures_in_a_row = failures_in_a_row + 1 if reply.finish_reason == "error" else 0
                yield req, reply
                if failures_in_a_row >= self.max_consecutive_failures:
                    raise ServerUnavailableError(
                        f"the last {failures_in_a_row} requests to {', '.join(self.base_urls)} all failed "
                        f"(last error: {reply.error}); check that the server is up, then run the same command "
                        "to continue")
        finally:
            if in_flight:  # closed early (target reached, budget, error): cancel cleanly
                loop.cancel(in_flight)

    def _shrink(self, too_long: _TooLong) -> _TooLong | tuple[Request, Reply]:
        """The smaller request to send next, or the request's failure when none is left. Runs on
        the caller's thread, where the request's prompt builder (the loop's) lives."""
        req = too_long.request
        smaller = req.shrink() if req.shrink is not None else None
        if smaller is None:
            msg = f"the prompt is too long for the server even at its smallest: {too_long.message}"
            log.error("request %d failed: %s", req.id, msg)
            return req, Reply("", "error", error=msg, retries=too_long.attempts - 1)
        self._count("retry_prompt_too_long")
        log.warning("request %d: the server says the prompt is too long (%s); retrying with fewer in-context "
                    "tasks (%d -> %d)", req.id, too_long.message, len(req.meta.get("examples", ())),
                    len(smaller.meta.get("examples", ())))
        return _TooLong(smaller, too_long.attempts, too_long.message)

    # ------------------------------------------------------------------ one request

    async def _complete(self, req: Request, params: GenerationParams,
                        attempts: int = 0) -> tuple[Request, Reply] | _TooLong:
        """Send `req` until it succeeds or fails for good. `attempts`: made before, at larger sizes."""
        try:
            reply, n = await self._with_retries(req, params)
            reply.retries = attempts + n - 1
            return req, reply
        except _PromptTooLong as e:
            return _TooLong(req, attempts + e.attempts, self._scrub(str(e)))
        except _Retryable as e:  # the last attempt failed too
            msg = self._scrub(f"gave up after {e.attempts} attempts: {e.reason}: {e.message}")
            log.error("request %d failed: %s", req.id, msg)
            return req, Reply("", "error", error=msg, retries=attempts + e.attempts - 1)
        except _RequestFailed as e:
            msg = self._scrub(str(e))
            log.error("request %d failed (not retried): %s", req.id, msg)
            return req, Reply("", "error", error=msg, retries=attempts + e.attempts - 1)

    async def _with_retries(self, req: Request, params: GenerationParams) -> tuple[Reply, int]:
        try:  # most requests succeed at once: spare them the retry machinery
            return await self._attempt(req, params), 1
        except _Retryable as e:
            first_failure: _Retryable | None = e
        except _Failure as e:
            e.attempts = 1
            raise

        import tenacity

        async def attempt() -> Reply:
            nonlocal first_failure
            if first_failure is not None:  # tenacity's attempt 1 is the one that already failed
                failure, first_failure = first_failure, None
                raise failure
            return await self._attempt(req, params)

        retrying = tenacity.AsyncRetrying(
            stop=tenacity.stop_after_attempt(self.max_attempts),
            wait=self._wait,
            retry=tenacity.retry_if_exception_type(_Retryable),
            before_sleep=lambda state: self._log_retry(req, state),
            reraise=True,
        )
        try:
            async for tried in retrying:
                with tried:
                    reply = await attempt()
        except _Failure as e:
            e.attempts = retrying.statistics.get("attempt_number", 1)
            raise
        return reply, retrying.statistics.get("attempt_number", 1)

    def _wait(self, state: Any) -> float:
        exc = state.outcome.exception() if state.outcome is not None else None
        if isinstance(exc, _Retryable) and exc.retry_after is not None:
            return min(exc.retry_after, self.backoff_max_s)
        # Exponential back-off plus up to one base of jitter, so the retries of a burst spread out.
        base = self.backoff_s * 2 ** (state.attempt_number - 1)
        return min(base + random.uniform(0, self.backoff_s), self.backoff_max_s)

    def _log_retry(self, req: Request, state: Any) -> None:
        exc = state.outcome.exception()
        reason = getattr(exc, "reason", type(exc).__name__)
        self._count(f"retry_{reason}")
        delay = state.next_action.sleep if state.next_action is not None else 0.0
        log.warning("request %d: %s (%s) on attempt %d of %d; retrying in %.2fs", req.id, reason,
                    self._scrub(getattr(exc, "message", str(exc)))[:200], state.attempt_number, self.max_attempts,
                    delay)

    async def _attempt(self, req: Request, params: GenerationParams) -> Reply:
        await self._cooldown.wait()
        if self._rpm is not None:
            await self._rpm.acquire(1)
        booked = 0.0
        if self._tpm is not None:
            booked = len(req.prompt.as_text()) / 4 + params.max_new_tokens  # what the server will count
            await self._tpm.acquire(booked)
        client = self._clients[next(self._next_client) % len(self._clients)]
        try:
            reply = await self._send(client, req, params)
        except Exception as e:  # classified below; CancelledError is not an Exception and passes
            raise self._classify(e) from None
        if self._tpm is not None:
            self._tpm.adjust(reply.prompt_tokens + reply.completion_tokens - booked)
        return reply

    async def _send(self, client: Any, req: Request, params: GenerationParams) -> Reply:
        stop = list(params.stop)
        if len(stop) > MAX_STOP_STRINGS:
            if not self._warned_stop:
                log.warning("the API takes at most %d stop strings; sending the first %d of %s",
                            MAX_STOP_STRINGS, MAX_STOP_STRINGS, stop)
                self._warned_stop = True
            stop = stop[:MAX_STOP_STRINGS]
        body: dict[str, Any] = {"model": self.model_name, "temperature": params.temperature,
                                "top_p": params.top_p, "max_tokens": params.max_new_tokens}
        if stop:
            body["stop"] = stop
        if params.seed is not None:
            # One seed per request: reproducible on servers that honour it, yet not the same
            # random stream for every prompt.
            body["seed"] = (params.seed * 1_000_003 + req.id) % 2**31
        prompt = req.prompt
        if self.endpoint == "chat":
            body["messages"] = prompt.messages or [{"role": "user", "content": prompt.as_text()}]
        else:
            body["prompt"] = prompt.as_text()
        # The client's generic POST: its auth, timeouts and error types, without re-validating
        # our own request body against the API's type hints or building response models,
        # which cost more CPU per request than everything else here together.
        data = await client.post(f"/{'chat/completions' if self.endpoint == 'chat' else 'completions'}",
                                 cast_to=object, body=body)
        try:
            choice = data["choices"][0]
            text = (choice["message"]["content"] if self.endpoint == "chat" else choice["text"]) or ""
            finish = choice.get("finish_reason")
        except (AttributeError, IndexError, TypeError, KeyError) as e:
            raise _InvalidReply(f"the reply has no choices[0] text ({type(e).__name__}: {e})") from None
        if not isinstance(text, str):
            raise _InvalidReply("the reply's text is not a string")
        usage = data.get("usage") if isinstance(data, dict) else None
        if isinstance(usage, dict) and usage.get("prompt_tokens") is not None:
            p_tok, c_tok = int(usage.get("prompt_tokens") or 0), int(usage.get("completion_tokens") or 0)
        else:  # some servers report no usage: estimate (4 characters a token) so budgets still bind
            self._count("usage_estimated")
            p_tok, c_tok = math.ceil(len(prompt.as_text()) / 4), math.ceil(len(text) / 4)
        return Reply(text, "length" if finish == "length" else "stop", p_tok, c_tok)

    def _classify(self, e: Exception) -> Exception:
        import openai

        if isinstance(e, openai.APITimeoutError):
            return _Retryable("timeout", f"no reply within {self.timeout_s:g}s")
        if isinstance(e, openai.APIConnectionError):
            cause = e.__cause__ or e.__context__
            return _Retryable("connection", f"{e.message} ({type(cause).__name__ if cause else 'no detail'})")
        if isinstance(e, (json.JSONDecodeError, _InvalidReply, openai.APIResponseValidationError)):
            return _Retryable("invalid_reply", f"unreadable reply: {e}")
        if isinstance(e, openai.APIStatusError):
            status, message = e.status_code, self._scrub(_server_message(e))
            if status == 429 or status == 408 or status >= 500:
                retry_after = parse_retry_after(getattr(e.response, "headers", None))
                if status == 429 and retry_after is not None:
                    self._cooldown.extend(min(retry_after, self.backoff_max_s))
                return _Retryable(f"HTTP {status}", message, retry_after)
            if status in (400, 413, 422) and _TOO_LONG.search(message):
                return _PromptTooLong(message)
            if status in FATAL_STATUS:
                return RemoteConfigError(
                    f"{self.endpoint} request to {', '.join(self.base_urls)} for model {self.model_name!r} got "
                    f"HTTP {status} ({FATAL_STATUS[status]}): {message}")
            return _RequestFailed(f"HTTP {status}: {message}")
        if isinstance(e, BackendError):
            return e
        return _RequestFailed(self._scrub(f"{type(e).__name__}: {e}"))

    # ------------------------------------------------------------------ accounting

    def _count(self, what: str) -> None:
        with self._counts_lock:
            self._counts[what] += 1

    def cost(self, prompt_tokens: int, completion_tokens: int) -> float:
        return (prompt_tokens * self.prices[0] + completion_tokens * self.prices[1]) / 1e6

    def annotate_stats(self, stats: Any) -> None:
        """Add this backend's counters (retry reasons, estimated usage) and the cost so far to
        `stats.extra`. Counters are added as deltas, so a resumed run keeps its history."""
        with self._counts_lock:
            counts, self._counts = self._counts, Counter()
        reasons = stats.extra.setdefault("retry_reasons", {})
        for what, n in counts.items():
            if what.startswith("retry_"):
                reasons[what[len("retry_"):]] = reasons.get(what[len("retry_"):], 0) + n
            else:
                stats.extra[what] = stats.extra.get(what, 0) + n
        if any(self.prices):
            stats.extra["cost"] = round(self.cost(stats.prompt_tokens, stats.completion_tokens), 6)

    def stop_reason(self, stats: Any) -> str | None:
        """Called by the loop at each round boundary: a reason to stop once a budget is spent."""
        self.annotate_stats(stats)
        used = stats.prompt_tokens + stats.completion_tokens
        if self.token_budget and used >= self.token_budget:
            return (f"token budget reached ({used} of {self.token_budget} tokens); raise "
                    "backend.openai.token_budget to continue")
        if self.cost_budget:
            spent = self.cost(stats.prompt_tokens, stats.completion_tokens)
            if spent >= self.cost_budget:
                return (f"cost budget reached ({spent:.4f} of {self.cost_budget:g}); raise "
                        "backend.openai.cost_budget to continue")
        return None
