"""A real HTTP server on 127.0.0.1 that speaks the OpenAI chat and completions wire format
and injects faults on demand: for the remote backend's tests and benchmark.

It answers every prompt with well-formed tasks in the project's reply format, each with an
instruction made of pseudo-words drawn from a global counter, so no two instructions ever
overlap enough for the ROUGE-L filter to drop them. What it served is recorded per request
(`hits`), so a test can check that every task the server delivered reached the loop exactly
once and that every injected fault shows up as exactly one retry.

Faults, per request: a scripted queue (`script=[...]`, consumed first; None = no fault) and
then a seeded random draw (`fault_rate`, `fault_kinds`):

    429            rate limited, with Retry-After (seconds) or retry-after-ms
    500, 503       server errors with an OpenAI-style error body
    slow           answers only after `slow_s` (set it past the client's timeout)
    drop           closes the connection without a response
    partial        sends the headers and half the body, then closes
    invalid_json   200 with a body that is not JSON
    length         a 200 reply cut off mid-task, finish_reason "length" (not a retry)
    400            a plain bad request (not retryable)

Run standalone for the benchmark:  python tests/fake_openai_server.py --latency 0.2
(prints "listening on http://127.0.0.1:PORT/v1" and serves until killed; GET /_fake/stats
returns the counters as JSON).
"""

from __future__ import annotations

import argparse
import json
import random
import re
import threading
import time
from collections import Counter, deque
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

RETRYABLE = {"429", "500", "503", "slow", "drop", "partial", "invalid_json"}
ALL_FAULTS = sorted(RETRYABLE | {"length", "400"})

_SYLLABLES = ["ka", "lo", "mi", "ne", "ru", "ta", "vo", "zi", "pe", "su", "da", "fo", "gi", "ha", "ju", "be",
              "co", "ly", "wu", "xe"]
_CONTEXT_ERROR = ("This model's maximum context length is 512 tokens. However, your messages resulted in "
                  "{n} tokens. Please reduce the length of the messages.")


def count_examples(prompt: str) -> int:
    """In-context tasks in a prompt: "Task N" header lines followed by a filled-in instruction."""
    return len(re.findall(r"(?m)^Task \d+\nInstruction: \S", prompt))


def pseudo_word(rng: random.Random) -> str:
    return "".join(rng.choice(_SYLLABLES) for _ in range(3))


def make_task_text(counter: int) -> tuple[str, str]:
    """A unique (instruction, output) pair for the server's `counter`-th task."""
    rng = random.Random(counter)
    w = [pseudo_word(rng) for _ in range(7)]
    instruction = f"Describe the {w[0]} of {w[1]} {w[2]} {w[3]} with {w[4]} number {counter}."
    return instruction, f"The {w[5]} {w[6]} is a made-up answer {counter}."


@dataclass
class Hit:
    """One request the server received and what it did with it."""

    path: str
    body: dict[str, Any]
    authorization: str | None
    fault: str | None
    status: int
    arrived: float
    instructions: list[str] = field(default_factory=list)  # complete tasks delivered (200 only)
    usage: dict[str, int] = field(default_factory=dict)


class FakeOpenAIServer:
    def __init__(self, *, api_key: str | None = None, model: str | None = None, latency_s: float = 0.0,
                 script: list[str | None] | None = None, fault_rate: float = 0.0,
                 fault_kinds: list[str] | None = None, seed: int = 0, slow_s: float = 2.0,
                 retry_after: str | None = None, retry_after_ms: int | None = 20,
                 tasks_per_reply: int = 1, max_prompt_tasks: int | None = None, echo_key_on_401: bool = True,
                 echo_auth_in_errors: bool = False):
        self.api_key = api_key
        self.model = model
        self.latency_s = latency_s
        self.script: deque[str | None] = deque(script or [])
        self.fault_rate = fault_rate
        self.fault_kinds = list(fault_kinds or sorted(RETRYABLE))
        unknown = set(self.fault_kinds) - set(ALL_FAULTS)
        if unknown:
            raise ValueError(f"unknown fault kinds {sorted(unknown)}; known: {ALL_FAULTS}")
        self.rng = random.Random(seed)
        self.slow_s = slow_s
        self.retry_after = retry_after
        self.retry_after_ms = retry_after_ms
        self.tasks_per_reply = tasks_per_reply
        self.max_prompt_tasks = max_prompt_tasks
        self.echo_key_on_401 = echo_key_on_401
        # A careless server that quotes the request's Authorization header in its error
        # messages: the client must scrub the key from whatever it logs or stores.
        self.echo_auth_in_errors = echo_auth_in_errors
        self.in_flight = 0
        self.max_in_flight = 0
        self.hits: list[Hit] = []
        self._counter = 0
        self._lock = threading.Lock()
        self._httpd: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # ------------------------------------------------------------------ lifecycle

    def start(self, port: int = 0) -> FakeOpenAIServer:
        server = self

        class Handler(_Handler):
            fake = server

        class Server(ThreadingHTTPServer):
            request_queue_size = 256  # the default 5 drops connects when many arrive at once

        httpd = Server(("127.0.0.1", port), Handler)
        httpd.daemon_threads = True
        httpd.block_on_close = False  # a "slow" handler may still be sleeping at shutdown
        self._httpd = httpd
        self._thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd = None

    def __enter__(self) -> FakeOpenAIServer:
        return self.start() if self._httpd is None else self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def port(self) -> int:
        assert self._httpd is not None, "server not started"
        return self._httpd.server_address[1]

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    # ------------------------------------------------------------------ bookkeeping

    def next_fault(self) -> str | None:
        with self._lock:
            if self.script:
                return self.script.popleft()
            if self.fault_rate and self.rng.random() < self.fault_rate:
                return self.rng.choice(self.fault_kinds)
            return None

    def next_counter(self) -> int:
        with self._lock:
            self._counter += 1
            return self._counter

    def record(self, hit: Hit) -> None:
        with self._lock:
            self.hits.append(hit)

    def delivered_instructions(self) -> list[str]:
        return [i for h in self.hits if h.status == 200 and h.fault in (None, "length") for i in h.instructions]

    def fault_counts(self) -> Counter:
        return Counter(h.fault for h in self.hits if h.fault is not None)

    def retryable_faults(self) -> int:
        return sum(n for f, n in self.fault_counts().items() if f in RETRYABLE)

    def stats(self) -> dict[str, Any]:
        with self._lock:
            hits = list(self.hits)
        return {"hits": len(hits), "faults": dict(Counter(h.fault for h in hits if h.fault)),
                "delivered_replies": sum(1 for h in hits if h.status == 200 and h.fault in (None, "length")),
                "delivered_tasks": sum(len(h.instructions) for h in hits
                                       if h.status == 200 and h.fault in (None, "length")),
                "usage": {k: sum(h.usage.get(k, 0) for h in hits) for k in ("prompt_tokens", "completion_tokens")}}

    # ------------------------------------------------------------------ replies

    def reply_text(self, prompt: str, is_chat: bool, stop: list[str]) -> tuple[str, list[str]]:
        """Tasks continuing `prompt`; returns (text, instructions of the complete tasks)."""
        # A plain prompt ends inside the next task block ("Task N\nInstruction:"), which the
        # reply continues; a chat prompt says which task number to write next.
        continues = not is_chat and prompt.rstrip().endswith("Instruction:")
        headers = [int(n) for n in re.findall(r"(?m)^Task (\d+)$", prompt)]
        asked = re.search(r'a line "Task (\d+)"', prompt)
        if continues:
            next_index = headers[-1] if headers else 1
        else:
            next_index = int(asked.group(1)) if asked else max(headers, default=0) + 1
        parts, instructions = [], []
        for k in range(self.tasks_per_reply):
            instruction, output = make_task_text(self.next_counter())
            body = f"{instruction}\nInput: <noinput>\nOutput: {output}"
            if k == 0 and continues:
                parts.append(" " + body)  # the prompt ends with "Task N\nInstruction:"
            else:
                parts.append(f"Task {next_index + k}\nInstruction: {body}")
            instructions.append(instruction)
        text = "\n\n".join(parts)
        for s in stop:
            cut = text.find(s)
            if s and cut >= 0:
                kept = text[:cut]
                instructions = [i for i in instructions if i in kept]
                text = kept
        return text, instructions


def _plain_error_body(message: str, kind: str, code: str | None = None) -> bytes:
    return json.dumps({"error": {"message": message, "type": kind, "param": None, "code": code}}).encode()


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    # Headers and body go out in two writes; with Nagle on, the second waits for the client's
    # delayed ACK (40 ms on Linux) and every reply would be 40 ms slower than `latency_s`.
    disable_nagle_algorithm = True
    fake: FakeOpenAIServer

    def log_message(self, format: str, *args: Any) -> None:  # keep test output quiet
        pass

    def handle_one_request(self) -> None:
        try:
            super().handle_one_request()
        except (BrokenPipeError, ConnectionResetError):  # the client gave up (timeout, cancel)
            self.close_connection = True

    def _send(self, status: int, body: bytes, headers: dict[str, str] | None = None) -> None:
        if getattr(self, "_hit", None) is not None:
            self._settle()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(body)
        self.wfile.flush()

    def do_GET(self) -> None:
        if self.path.rstrip("/") == "/_fake/stats":
            self._send(200, json.dumps(self.fake.stats()).encode())
        elif self.path.rstrip("/").endswith("/models"):
            self._send(200, json.dumps({"object": "list", "data": [
                {"id": self.fake.model or "fake-model", "object": "model", "owned_by": "fake"}]}).encode())
        else:
            self._send(404, _plain_error_body(f"no route {self.path}", "invalid_request_error"))

    def do_POST(self) -> None:
        fake = self.fake
        arrived = time.monotonic()
        raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        try:
            body = json.loads(raw or b"{}")
        except json.JSONDecodeError:
            body = {}
        auth = self.headers.get("Authorization")
        hit = Hit(self.path, body, auth, None, 200, arrived)
        with fake._lock:
            fake.in_flight += 1
            fake.max_in_flight = max(fake.max_in_flight, fake.in_flight)
        self._hit: Hit | None = hit
        try:
            self._answer(fake, body, auth, hit)
        finally:
            self._settle()

    def _settle(self) -> None:
        """Record the hit before the client can see the reply, so a test reading `hits` right
        after a reply always finds it."""
        if self._hit is not None:
            with self.fake._lock:
                self.fake.in_flight -= 1
            self.fake.record(self._hit)
            self._hit = None

    def _answer(self, fake: FakeOpenAIServer, body: dict[str, Any], auth: str | None, hit: Hit) -> None:
        def _error_body(message: str, kind: str, code: str | None = None) -> bytes:
            if fake.echo_auth_in_errors:
                message += f" (request auth: {auth})"
            return _plain_error_body(message, kind, code)

        path = self.path.rstrip("/")
        is_chat = path.endswith("/chat/completions")
        if not is_chat and not path.endswith("/completions"):
            hit.status = 404
            return self._send(404, _error_body(f"Invalid URL (POST {self.path})", "invalid_request_error"))
        if fake.api_key is not None and auth != f"Bearer {fake.api_key}":
            hit.status = 401
            shown = (auth or "").removeprefix("Bearer ") if fake.echo_key_on_401 else "***"
            return self._send(401, _error_body(f"Incorrect API key provided: {shown}.", "invalid_request_error",
                                               "invalid_api_key"))
        if fake.model is not None and body.get("model") != fake.model:
            hit.status = 404
            return self._send(404, _error_body(f"The model `{body.get('model')}` does not exist.",
                                               "invalid_request_error", "model_not_found"))
        if is_chat:
            prompt = "\n\n".join(str(m.get("content", "")) for m in body.get("messages", []))
        else:
            prompt = body.get("prompt", "")
            prompt = prompt[0] if isinstance(prompt, list) else str(prompt)
        n_examples = count_examples(prompt)
        if fake.max_prompt_tasks is not None and n_examples > fake.max_prompt_tasks:
            hit.status, hit.fault = 400, "too_long"
            return self._send(400, _error_body(_CONTEXT_ERROR.format(n=100 * n_examples), "invalid_request_error",
                                               "context_length_exceeded"))
        fault = hit.fault = fake.next_fault()
        if fake.latency_s:
            time.sleep(fake.latency_s)
        if fault == "429":
            hit.status = 429
            headers = {}
            if fake.retry_after is not None:
                headers["Retry-After"] = fake.retry_after
            if fake.retry_after_ms is not None:
                headers["retry-after-ms"] = str(fake.retry_after_ms)
            return self._send(429, _error_body("Rate limit reached for requests.", "requests", "rate_limit_exceeded"),
                              headers)
        if fault in ("500", "503"):
            hit.status = int(fault)
            return self._send(hit.status, _error_body("The server had an error while processing your request.",
                                                      "server_error"))
        if fault == "400":
            hit.status = 400
            return self._send(400, _error_body("Invalid value for 'top_p': must be at most 1.",
                                               "invalid_request_error"))
        if fault == "drop":
            hit.status = 0
            self.close_connection = True
            return None
        if fault == "slow":
            hit.status = 0  # the client times out before this reply; whatever we send is not received
            self._settle()
            time.sleep(fake.slow_s)
        text, instructions = fake.reply_text(prompt, is_chat, list(body.get("stop") or []))
        finish = "stop"
        if fault == "length":
            text += f"\n\nTask 99\nInstruction: {make_task_text(fake.next_counter())[0]}\nInp"
            finish = "length"
        usage = {"prompt_tokens": len(prompt) // 4, "completion_tokens": max(1, len(text) // 4)}
        usage["total_tokens"] = usage["prompt_tokens"] + usage["completion_tokens"]
        if is_chat:
            choice = {"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": finish}
            obj = "chat.completion"
        else:
            choice = {"index": 0, "text": text, "finish_reason": finish, "logprobs": None}
            obj = "text_completion"
        payload = json.dumps({"id": f"cmpl-{fake.next_counter()}", "object": obj, "created": int(time.time()),
                              "model": body.get("model", "fake"), "choices": [choice], "usage": usage}).encode()
        if fault == "invalid_json":
            hit.status = 200
            return self._send(200, b'{"id": "cmpl-x", "choices": [{"index": 0, "message": ')
        if fault == "partial":
            hit.status = 0
            self._settle()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload[: len(payload) // 2])
            self.wfile.flush()
            self.close_connection = True
            return None
        if fault != "slow":
            hit.instructions, hit.usage = instructions, usage
        self._send(200, payload)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--latency", type=float, default=0.0, help="seconds before every reply")
    ap.add_argument("--fault-rate", type=float, default=0.0)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    server = FakeOpenAIServer(latency_s=args.latency, fault_rate=args.fault_rate, seed=args.seed).start(args.port)
    print(f"listening on {server.base_url}", flush=True)
    try:
        threading.Event().wait()
    except KeyboardInterrupt:
        server.stop()


if __name__ == "__main__":
    main()
