"""OpenAIBackend against a real HTTP server on 127.0.0.1 (tests/fake_openai_server.py):
the wire format of both endpoints, each fault kind, fatal errors, key handling, shrinking,
concurrency and cancellation."""

from __future__ import annotations

import logging
import socket
import threading
import time
from pathlib import Path

import pytest

from fake_openai_server import FakeOpenAIServer
from selfinstruct.backends.base import BackendError, GenerationParams, Prompt, Reply, Request
from selfinstruct.backends.openai_remote import OpenAIBackend, RemoteConfigError, ServerUnavailableError
from selfinstruct.config import ConfigError, load_config
from selfinstruct.parsing import parse_reply
from selfinstruct.prompts import AlpacaPromptBuilder
from selfinstruct.records import load_tasks

ROOT = Path(__file__).resolve().parents[1]
SEEDS = load_tasks(ROOT / "seed_tasks" / "seed_tasks.jsonl")
PARAMS = GenerationParams(temperature=0.7, top_p=0.9, max_new_tokens=128, stop=["Task 7"], seed=42)
LOGGER = "selfinstruct.backends.openai_remote"


@pytest.fixture
def servers():
    started: list[FakeOpenAIServer] = []

    def start(**kw) -> FakeOpenAIServer:
        s = FakeOpenAIServer(**kw).start()
        started.append(s)
        return s

    yield start
    for s in started:
        s.stop()


@pytest.fixture
def backends():
    made: list[OpenAIBackend] = []

    def make(server_or_urls, model: str = "fake-model", **kw) -> OpenAIBackend:
        urls = server_or_urls if isinstance(server_or_urls, list) else [server_or_urls.base_url]
        opts = dict(require_key=False, timeout_s=2.0, backoff_s=0.005, backoff_max_s=0.05, max_concurrency=4)
        b = OpenAIBackend(model, base_urls=urls, **{**opts, **kw})
        made.append(b)
        return b

    yield make
    for b in made:
        b.close()


def make_request(rid: int, n_examples: int = 5, style: str = "chat") -> Request:
    """A request as the loop builds it, with a `shrink` that drops two in-context tasks."""
    examples = SEEDS[rid % 50: rid % 50 + n_examples]
    prompt = AlpacaPromptBuilder(style=style).build(examples)

    def shrink():
        return make_request(rid, n_examples - 2, style) if n_examples > 2 else None

    return Request(rid, prompt, {"examples": [t.id for t in examples]}, shrink)


def run_all(backend, requests, params=PARAMS) -> list[tuple[Request, Reply]]:
    return list(backend.imap(requests, params))


# ---------------------------------------------------------------------------- wire format

def test_chat_request_and_reply_on_the_wire(servers, backends):
    server = servers()
    backend = backends(server)
    req = make_request(3)
    [(got_req, reply)] = run_all(backend, [req])
    [hit] = server.hits
    assert hit.path == "/v1/chat/completions"
    assert hit.body["model"] == "fake-model"
    assert hit.body["messages"] == req.prompt.messages
    assert (hit.body["temperature"], hit.body["top_p"], hit.body["max_tokens"]) == (0.7, 0.9, 128)
    assert hit.body["stop"] == ["Task 7"]
    assert hit.body["seed"] == (42 * 1_000_003 + 3) % 2**31
    assert hit.authorization == "Bearer no-key-needed"  # require_key: false and no variable set
    assert got_req is req
    assert (reply.finish_reason, reply.retries, reply.error) == ("stop", 0, None)
    assert (reply.prompt_tokens, reply.completion_tokens) == (hit.usage["prompt_tokens"],
                                                              hit.usage["completion_tokens"])
    parsed = parse_reply(reply.text, reply.finish_reason, prefix=req.prompt.reply_prefix)
    assert [c.instruction for c in parsed.candidates] == hit.instructions


def test_completions_request_and_reply_on_the_wire(servers, backends):
    server = servers()
    backend = backends(server, endpoint="completions")
    assert (backend.supports_chat, backend.supports_plain, backend.supports_prefill) == (False, True, False)
    req = make_request(4, style="plain")
    [(_, reply)] = run_all(backend, [req])
    [hit] = server.hits
    assert hit.path == "/v1/completions"
    assert hit.body["prompt"] == req.prompt.text
    assert "messages" not in hit.body
    # The reply continues the prompt's last line, "Task 6\nInstruction:".
    assert req.prompt.reply_prefix == "Task 6\nInstruction:"
    parsed = parse_reply(reply.text, reply.finish_reason, prefix=req.prompt.reply_prefix)
    assert [c.instruction for c in parsed.candidates] == hit.instructions
    assert not parsed.rejections


def test_a_plain_prompt_goes_to_the_chat_endpoint_as_one_user_message(servers, backends):
    server = servers()
    req = make_request(5, style="plain")
    run_all(backends(server), [req])
    assert server.hits[0].body["messages"] == [{"role": "user", "content": req.prompt.text}]


def test_more_than_four_stop_strings_are_cut_to_the_api_limit(servers, backends, caplog):
    server = servers()
    params = GenerationParams(stop=["a1", "a2", "a3", "a4", "a5"])
    with caplog.at_level(logging.WARNING, LOGGER):
        run_all(backends(server), [make_request(0), make_request(1)], params)
    assert all(h.body["stop"] == ["a1", "a2", "a3", "a4"] for h in server.hits)
    assert sum("at most 4 stop strings" in r.message for r in caplog.records) == 1


# ---------------------------------------------------------------------------- faults

@pytest.mark.parametrize("fault, reason", [
    ("429", "HTTP 429"), ("500", "HTTP 500"), ("503", "HTTP 503"), ("slow", "timeout"),
    ("drop", "connection"), ("partial", "connection"), ("invalid_json", "invalid_reply"),
])
def test_each_transient_fault_is_retried_and_logged(servers, backends, caplog, fault, reason):
    server = servers(script=[fault, None], slow_s=1.0)
    backend = backends(server, timeout_s=0.4)
    with caplog.at_level(logging.WARNING, LOGGER):
        [(req, reply)] = run_all(backend, [make_request(7)])
    assert (reply.finish_reason, reply.retries, reply.error) == ("stop", 1, None)
    assert len(server.hits) == 2
    assert [c.instruction for c in parse_reply(reply.text).candidates] == server.hits[1].instructions
    [warning] = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert warning.getMessage().startswith(f"request 7: {reason} (")
    assert "on attempt 1 of 6; retrying in" in warning.getMessage()


def test_retry_after_is_honoured(servers, backends, caplog):
    server = servers(script=["429", None], retry_after="1", retry_after_ms=None)
    with caplog.at_level(logging.WARNING, LOGGER):
        [(_, reply)] = run_all(backends(server, backoff_s=0.001, backoff_max_s=5), [make_request(0)])
    assert reply.retries == 1
    assert server.hits[1].arrived - server.hits[0].arrived >= 0.95
    assert "retrying in 1.00s" in caplog.text


def test_a_reply_cut_off_by_the_token_limit_is_kept_not_retried(servers, backends):
    server = servers(script=["length"])
    [(_, reply)] = run_all(backends(server), [make_request(0)])
    assert (reply.finish_reason, reply.retries, len(server.hits)) == ("length", 0, 1)
    parsed = parse_reply(reply.text, reply.finish_reason)
    assert [c.instruction for c in parsed.candidates] == server.hits[0].instructions
    assert [r.reason for r in parsed.rejections] == ["truncated"]


def test_a_plain_4xx_fails_that_request_fast_with_the_servers_message(servers, backends, caplog):
    server = servers(script=["400"])
    with caplog.at_level(logging.ERROR, LOGGER):
        [(_, reply)] = run_all(backends(server), [make_request(0)])
    assert (reply.finish_reason, reply.retries, reply.text, len(server.hits)) == ("error", 0, "", 1)
    assert reply.error == "HTTP 400: Invalid value for 'top_p': must be at most 1."
    assert "request 0 failed (not retried)" in caplog.text


def test_a_request_gives_up_after_max_attempts(servers, backends):
    server = servers(fault_rate=1.0, fault_kinds=["503"])
    [(_, reply)] = run_all(backends(server, max_attempts=3), [make_request(0)])
    assert (reply.finish_reason, reply.retries, len(server.hits)) == ("error", 2, 3)
    assert reply.error.startswith("gave up after 3 attempts: HTTP 503: The server had an error")


def test_a_server_that_is_down_stops_the_run_instead_of_spinning(backends):
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    backend = backends([f"http://127.0.0.1:{port}/v1"], max_attempts=2, max_concurrency=2)
    pulled = []

    def requests():
        for i in range(100):
            pulled.append(i)
            yield make_request(i)

    got = []
    with pytest.raises(ServerUnavailableError, match="the last 10 requests .* all failed"):
        for req, reply in backend.imap(requests(), PARAMS):
            got.append(reply)
    assert len(got) == 10 and all(r.finish_reason == "error" and r.retries == 1 for r in got)
    assert "connection" in got[-1].error
    assert len(pulled) <= 12  # at most max_concurrency beyond what was answered


def test_prompt_too_long_is_retried_with_fewer_in_context_tasks(servers, backends, caplog):
    server = servers(max_prompt_tasks=4)
    shrunk_on = []

    def watched(request):  # the loop's prompt builder is not thread-safe: shrink on the caller's thread
        inner = request.shrink

        def shrink():
            shrunk_on.append(threading.current_thread())
            smaller = inner()
            return watched(smaller) if smaller is not None else None

        request.shrink = shrink
        return request

    with caplog.at_level(logging.WARNING, LOGGER):
        [(req, reply)] = run_all(backends(server), [watched(make_request(9, n_examples=8))])
    assert shrunk_on == [threading.current_thread()] * 2
    assert req.id == 9 and len(req.meta["examples"]) == 4  # 8 -> 6 -> 4 in-context tasks
    assert (reply.finish_reason, reply.retries) == ("stop", 2)
    assert [h.fault for h in server.hits] == ["too_long", "too_long", None]
    assert caplog.text.count("prompt is too long") == 2
    assert "(8 -> 6)" in caplog.text and "(6 -> 4)" in caplog.text
    parsed = parse_reply(reply.text, prefix=req.prompt.reply_prefix)
    assert [c.instruction for c in parsed.candidates] == server.hits[-1].instructions


def test_prompt_too_long_without_a_smaller_version_fails_the_request(servers, backends):
    server = servers(max_prompt_tasks=0)
    req = make_request(0, n_examples=3)
    [(_, reply)] = run_all(backends(server), [req])
    assert reply.finish_reason == "error" and "too long" in reply.error
    assert reply.retries == 1 and len(server.hits) == 2  # 3 tasks, then 1, then nothing smaller


# ---------------------------------------------------------------------------- fatal errors and keys

def test_a_refused_key_stops_at_once_and_the_message_never_shows_it(servers, backends, monkeypatch):
    secret = "sk-test-WRONG-0123456789abcdef"
    monkeypatch.setenv("SI_TEST_KEY", secret)
    server = servers(api_key="sk-the-right-one")  # echoes the key it got in its 401 message
    backend = backends(server, require_key=True, api_key_env="SI_TEST_KEY")
    with pytest.raises(RemoteConfigError) as info:
        run_all(backend, [make_request(i) for i in range(3)])
    msg = str(info.value)
    assert "HTTP 401" in msg and "Incorrect API key provided: ***" in msg
    assert secret not in msg and secret not in repr(info.value)
    assert info.value.__cause__ is None and info.value.__suppress_context__
    assert isinstance(info.value, ConfigError) and isinstance(info.value, BackendError)
    assert secret in server.hits[0].authorization  # it was sent, only never shown


def test_an_unknown_model_stops_at_once_with_the_servers_message(servers, backends):
    server = servers(model="served-model")
    with pytest.raises(RemoteConfigError, match=r"HTTP 404 .*The model `nope` does not exist"):
        run_all(backends(server, model="nope"), [make_request(0)])


def test_a_missing_key_fails_at_start_naming_the_variable(monkeypatch):
    monkeypatch.delenv("SI_TEST_MISSING_KEY", raising=False)
    with pytest.raises(RemoteConfigError, match="environment variable SI_TEST_MISSING_KEY is not set"):
        OpenAIBackend("m", base_urls="http://127.0.0.1:9/v1", api_key_env="SI_TEST_MISSING_KEY")


def test_the_named_variables_key_is_sent(servers, backends, monkeypatch):
    monkeypatch.setenv("SI_TEST_KEY", "k-local-123")
    server = servers(api_key="k-local-123")
    [(_, reply)] = run_all(backends(server, require_key=True, api_key_env="SI_TEST_KEY"), [make_request(0)])
    assert reply.finish_reason == "stop"
    assert server.hits[0].authorization == "Bearer k-local-123"


def test_repr_names_the_server_not_the_key(servers, backends, monkeypatch):
    monkeypatch.setenv("SI_TEST_KEY", "k-very-secret-999")
    b = backends(servers(), require_key=True, api_key_env="SI_TEST_KEY")
    assert "k-very-secret-999" not in repr(b) and "127.0.0.1" in repr(b)


@pytest.mark.parametrize("kw, match", [
    ({"endpoint": "chats"}, "endpoint"),
    ({"max_concurrency": 0}, "max_concurrency"),
    ({"cost_budget": 1.0}, "cost_budget needs prices"),
    ({"base_urls": []}, "base_urls is empty"),
])
def test_bad_settings_are_refused_by_name(kw, match):
    opts = {"base_urls": ["http://127.0.0.1:9/v1"], "require_key": False, **kw}
    with pytest.raises(RemoteConfigError, match=match):
        OpenAIBackend("m", **opts)


# ---------------------------------------------------------------------------- concurrency

def test_keeps_max_concurrency_in_flight_and_pulls_only_when_a_slot_frees(servers, backends):
    server = servers(latency_s=0.15)
    backend = backends(server, max_concurrency=4)
    pulled = 0

    def requests():
        nonlocal pulled
        for i in range(12):
            pulled += 1
            yield make_request(i)

    ahead = []
    seen = []
    for req, reply in backend.imap(requests(), PARAMS):
        ahead.append(pulled - len(seen))  # requests pulled but not yet handed back, at each yield
        seen.append(req.id)
    assert sorted(seen) == list(range(12))
    assert max(ahead) == 4 and ahead[0] == 4
    assert server.max_in_flight == 4


def test_closing_the_stream_cancels_requests_in_flight(servers, backends):
    server = servers(script=[None, "slow", "slow", "slow"], slow_s=3.0)
    backend = backends(server, max_concurrency=4, timeout_s=10)
    stream = backend.imap((make_request(i) for i in range(4)), PARAMS)
    first_req, first = next(stream)
    assert first.finish_reason == "stop"
    t0 = time.monotonic()
    stream.close()
    assert time.monotonic() - t0 < 1.5  # cancelled, not waited for (they would take 3 s)
    assert backend._loop is not None and backend._loop._tasks == {}
    # The backend still works after a closed stream.
    server.script.clear()
    [(_, reply)] = run_all(backend, [make_request(20)])
    assert reply.finish_reason == "stop"


def test_requests_are_spread_round_robin_over_replicas(servers, backends):
    a, b = servers(), servers()
    run_all(backends([a.base_url, b.base_url], max_concurrency=1), [make_request(i) for i in range(6)])
    assert (len(a.hits), len(b.hits)) == (3, 3)


def test_a_retry_goes_to_the_next_replica(servers, backends):
    a, b = servers(script=["503"]), servers()
    [(_, reply)] = run_all(backends([a.base_url, b.base_url], max_concurrency=1), [make_request(0)])
    assert reply.retries == 1
    assert ([h.status for h in a.hits], [h.status for h in b.hits]) == ([503], [200])


def test_requests_per_minute_limit_spaces_the_requests(servers, backends):
    server = servers()
    backend = backends(server, requests_per_minute=120, max_concurrency=8)  # 2/s after a 1 s burst
    run_all(backend, [make_request(i) for i in range(5)])
    arrived = sorted(h.arrived for h in server.hits)
    # 3 at once, then one every 0.5 s: the 5th is booked 1.0 s after the 1st. The first
    # arrivals lag their booking by the connection set-up, hence the margin; unpaced, all five
    # arrive within a few milliseconds.
    assert arrived[-1] - arrived[0] >= 0.7


# ---------------------------------------------------------------------------- accounting

def test_budgets_and_cost(servers, backends):
    from selfinstruct.stats import RunStats

    b = backends(servers(), token_budget=1000, price_per_1m_prompt_tokens=2.0,
                 price_per_1m_completion_tokens=8.0)
    stats = RunStats(prompt_tokens=600, completion_tokens=300)
    assert b.stop_reason(stats) is None
    assert stats.extra["cost"] == pytest.approx((600 * 2 + 300 * 8) / 1e6)
    stats.completion_tokens = 400
    assert b.stop_reason(stats).startswith("token budget reached (1000 of 1000 tokens)")
    c = backends(servers(), cost_budget=0.01, price_per_1m_prompt_tokens=10.0,
                 price_per_1m_completion_tokens=10.0)
    assert c.stop_reason(RunStats(prompt_tokens=500, completion_tokens=400)) is None
    assert "cost budget reached" in c.stop_reason(RunStats(prompt_tokens=500, completion_tokens=500))


def test_retry_reasons_are_added_to_stats_once(servers, backends):
    from selfinstruct.stats import RunStats

    server = servers(script=["500", "429", "500", None])
    b = backends(server, max_concurrency=1)
    run_all(b, [make_request(0)])
    stats = RunStats(extra={"retry_reasons": {"HTTP 500": 5}})  # as loaded from a resumed run
    b.annotate_stats(stats)
    b.annotate_stats(stats)
    assert stats.extra["retry_reasons"] == {"HTTP 500": 7, "HTTP 429": 1}


def test_the_remote_pipeline_files_load_and_build(monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    for name in ("vllm", "llamacpp", "ollama"):
        cfg = load_config(ROOT / "pipelines" / f"{name}.yaml")
        assert cfg.backend.kind == "openai" and not cfg.backend.openai.require_key
        backend = OpenAIBackend.from_config(cfg.backend)
        assert backend.base_urls[0].startswith("http://127.0.0.1:")
        backend.close()
    cfg = load_config(ROOT / "pipelines" / "openai.yaml")
    with pytest.raises(RemoteConfigError, match="OPENAI_API_KEY is not set"):
        OpenAIBackend.from_config(cfg.backend)
    monkeypatch.setenv("OPENAI_API_KEY", "sk-placeholder-for-this-test")
    assert OpenAIBackend.from_config(cfg.backend).base_urls == ["https://api.openai.com/v1"]
