"""The bootstrapping loop on the remote backend against the fault-injecting server on
127.0.0.1: a run with 20% faults loses and duplicates nothing, the key never leaks into the
run directory or the log, budgets stop at a round boundary and resume, and a prompt the
server finds too long is re-sent with fewer in-context tasks."""

from __future__ import annotations

import json
import logging
from collections import Counter
from pathlib import Path

import pytest
import yaml

from fake_openai_server import RETRYABLE, FakeOpenAIServer
from selfinstruct.backends.openai_remote import OpenAIBackend
from selfinstruct.bootstrap import Bootstrapper
from selfinstruct.config import from_dict, PipelineConfig, validate
from selfinstruct.records import load_tasks
from selfinstruct.rundir import RunDir

ROOT = Path(__file__).resolve().parents[1]
SEED_FILE = ROOT / "seed_tasks" / "seed_tasks.jsonl"
LOGGER = "selfinstruct.backends.openai_remote"
# The server's fault names, as the backend reports them in its log and in stats.json.
REASON = {"429": "HTTP 429", "500": "HTTP 500", "503": "HTTP 503", "slow": "timeout", "drop": "connection",
          "partial": "connection", "invalid_json": "invalid_reply"}


def pipeline(tmp_path: Path, base_url: str, *, generation: dict | None = None, remote: dict | None = None,
             **top) -> dict:
    return {
        "name": "remote", "output_dir": str(tmp_path / "outputs"), "seed_tasks": [str(SEED_FILE)],
        "generation": {"target": 40, "num_prompt_tasks": 5, "requests_per_round": 8, **(generation or {})},
        "sampling": {"max_new_tokens": 256},
        "backend": {"kind": "openai", "model": "fake-model", "openai": {
            "base_urls": [base_url], "require_key": False, "max_concurrency": 8, "timeout_s": 0.5,
            "backoff_s": 0.005, "backoff_max_s": 0.05, **(remote or {})}},
        **top,
    }


def build(data: dict) -> PipelineConfig:
    cfg = from_dict(PipelineConfig, data)
    validate(cfg)
    return cfg


class RecordingBootstrapper(Bootstrapper):
    """Remembers the id of every reply the loop handled, to check none is lost or doubled."""

    handled: list[int]

    def handle_reply(self, req, reply):
        self.__dict__.setdefault("handled", []).append(req.id)
        super().handle_reply(req, reply)


def run_loop(cfg: PipelineConfig, seeds) -> tuple[RecordingBootstrapper, OpenAIBackend]:
    run_dir = RunDir(cfg.run_dir)
    run_dir.prepare(cfg)
    backend = OpenAIBackend.from_config(cfg.backend)
    try:
        boot = RecordingBootstrapper(cfg, backend, seeds, run_dir)
        boot.run()
    finally:
        backend.close()
    return boot, backend


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


@pytest.fixture(scope="module")
def seeds():
    return load_tasks(SEED_FILE)


def test_a_run_with_20_percent_faults_reaches_its_target_with_nothing_lost_or_doubled(tmp_path, seeds, caplog):
    kinds = sorted(RETRYABLE) + ["length"]
    with FakeOpenAIServer(fault_rate=0.2, fault_kinds=kinds, seed=7, slow_s=1.0) as server, \
            caplog.at_level(logging.WARNING, LOGGER):
        cfg = build(pipeline(tmp_path, server.base_url, generation={"target": 60},
                             remote={"max_attempts": 8}))
        boot, _ = run_loop(cfg, seeds)
    stats = json.loads((cfg.run_dir / "stats.json").read_text())
    pool = read_jsonl(cfg.run_dir / "pool.jsonl")
    faults = server.fault_counts()
    assert sum(faults.values()) >= 10 and set(faults) - {"length"}  # the run did meet faults

    # The target, exactly, from distinct tasks the server really sent.
    assert len(pool) == 60 == stats["kept"]
    assert len({t["id"] for t in pool}) == 60
    instructions = [t["instruction"] for t in pool]
    assert len(set(instructions)) == 60
    delivered = server.delivered_instructions()
    assert set(instructions) <= set(delivered)
    # Every request was answered once; every task the server delivered reached the loop once.
    assert sorted(boot.handled) == list(range(stats["requests"]))
    assert stats["failed_requests"] == 0
    assert stats["candidates"] == len(delivered)
    filtered = [r for r in read_jsonl(cfg.run_dir / "rejected.jsonl") if r["stage"] == "filter"]
    assert stats["kept"] + len(filtered) + stats["extra"].get("over_target", 0) == stats["candidates"]
    # A reply cut off by the token limit lost only its unfinished last task.
    assert stats["truncated_replies"] == stats["dropped"].get("truncated", 0) == faults.get("length", 0)
    # Each transient fault cost exactly one retry, and each retry shows in the log and stats.
    retryable = server.retryable_faults()
    assert stats["retries"] == retryable
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert sum("retrying in" in m for m in warnings) == retryable
    expected = Counter()
    for fault, n in faults.items():
        if fault in REASON:
            expected[REASON[fault]] += n
    assert stats["extra"]["retry_reasons"] == dict(expected)
    # Token usage is what the server reported for the replies it delivered.
    assert stats["prompt_tokens"] == sum(h.usage.get("prompt_tokens", 0) for h in server.hits)
    assert stats["completion_tokens"] == sum(h.usage.get("completion_tokens", 0) for h in server.hits)


def test_the_key_never_reaches_the_run_directory_or_the_log(tmp_path, monkeypatch, capsys):
    from selfinstruct.cli import main

    secret = "sk-selfinstruct-test-7f3a9c2e51d04b8e"
    monkeypatch.setenv("SELFINSTRUCT_TEST_KEY", secret)
    log_file = tmp_path / "everything.log"
    handler = logging.FileHandler(log_file, encoding="utf-8")
    handler.setLevel(logging.DEBUG)
    root = logging.getLogger()
    old_level = root.level
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)  # every library's debug lines too (openai, httpx2)
    noisy = {name: logging.getLogger(name).level for name in ("httpx", "httpx2", "httpcore", "openai")}
    try:
        # The server checks the key, and quotes the request's Authorization header in every
        # error it sends (a careless server), so the client has the key in hand at every fault.
        with FakeOpenAIServer(api_key=secret, echo_auth_in_errors=True, fault_rate=0.25,
                              fault_kinds=["429", "500", "503", "400"], seed=3) as server:
            data = pipeline(tmp_path, server.base_url, generation={"target": 12},
                            remote={"require_key": True, "api_key_env": "SELFINSTRUCT_TEST_KEY",
                                    "max_attempts": 8})
            path = tmp_path / "remote.yaml"
            path.write_text(yaml.safe_dump(data), encoding="utf-8")
            for name in noisy:
                logging.getLogger(name).setLevel(logging.DEBUG)
            assert main(["-v", "run", str(path), "--no-finetune"]) == 0
    finally:
        root.removeHandler(handler)
        handler.close()
        root.setLevel(old_level)
        for name, level in noisy.items():
            logging.getLogger(name).setLevel(level)
    out = capsys.readouterr()

    assert all(h.authorization == f"Bearer {secret}" for h in server.hits)  # the key was used...
    faults = server.fault_counts()
    assert faults["400"] >= 1 and sum(faults.values()) >= 3
    run_dir = tmp_path / "outputs" / "remote"
    files = [p for p in run_dir.rglob("*") if p.is_file()]
    assert {"config.yaml", "pool.jsonl", "stats.json", "run.log", "rejected.jsonl"} <= {p.name for p in files}
    for p in files + [log_file]:
        assert secret.encode() not in p.read_bytes(), f"the key leaked into {p}"
    assert secret not in out.out and secret not in out.err
    # ...and where a server message quoted it, the message was kept with the key masked.
    assert "Bearer ***" in log_file.read_text()
    rejected = (run_dir / "rejected.jsonl").read_text()
    assert "request_failed" in rejected and "Bearer ***" in rejected
    assert "api_key_env: SELFINSTRUCT_TEST_KEY" in (run_dir / "config.yaml").read_text()
    assert len(read_jsonl(run_dir / "pool.jsonl")) == 12


def test_a_token_budget_stops_at_a_round_boundary_and_the_run_resumes(tmp_path, seeds):
    with FakeOpenAIServer(seed=1) as server:
        data = pipeline(tmp_path, server.base_url, generation={"target": 30, "requests_per_round": 4},
                        remote={"max_concurrency": 4, "token_budget": 3000, "price_per_1m_prompt_tokens": 1.0,
                                "price_per_1m_completion_tokens": 4.0})
        cfg = build(data)
        first, _ = run_loop(cfg, seeds)
        stats = json.loads((cfg.run_dir / "stats.json").read_text())
        assert first.stop.reason.startswith("token budget reached")
        assert "backend.openai.token_budget" in first.stop.reason
        used = stats["prompt_tokens"] + stats["completion_tokens"]
        assert used >= 3000
        # It stopped at the first round boundary past the budget: whole rounds only.
        assert stats["requests"] == 4 * stats["rounds"]
        assert stats["kept"] < 30
        assert stats["extra"]["cost"] == pytest.approx((stats["prompt_tokens"] + 4 * stats["completion_tokens"]) / 1e6)
        kept_before = stats["kept"]

        # Raise the budget (a resume-safe field) and run the same pipeline again.
        data["backend"]["openai"]["token_budget"] = 0
        cfg2 = build(data)
        second, _ = run_loop(cfg2, seeds)
    assert second.stop.reason is None
    pool = read_jsonl(cfg.run_dir / "pool.jsonl")
    assert len(pool) == 30 and len({t["instruction"] for t in pool}) == 30
    numbers = [int(t["id"].rsplit("_", 1)[1]) for t in pool]
    assert numbers == list(range(numbers[0], numbers[0] + 30))  # one sequence across both runs
    assert min(second.handled) >= stats["next_request_id"]  # no request id was reused
    assert len([t for t in pool if t["meta"]["request_id"] < stats["next_request_id"]]) == kept_before
    final = json.loads((cfg.run_dir / "stats.json").read_text())
    assert final["extra"]["cost"] == pytest.approx((final["prompt_tokens"] + 4 * final["completion_tokens"]) / 1e6)


def test_prompts_the_server_finds_too_long_are_resent_with_fewer_tasks(tmp_path, seeds):
    with FakeOpenAIServer(max_prompt_tasks=6) as server:
        cfg = build(pipeline(tmp_path, server.base_url, generation={"target": 10, "num_prompt_tasks": 8}))
        boot, _ = run_loop(cfg, seeds)
    stats = json.loads((cfg.run_dir / "stats.json").read_text())
    pool = read_jsonl(cfg.run_dir / "pool.jsonl")
    assert len(pool) == 10 and stats["failed_requests"] == 0
    assert all(len(t["meta"]["in_context"]) == 6 for t in pool)  # 8 shown was too many; 6 fit
    assert stats["retries"] == stats["requests"] == stats["extra"]["retry_reasons"]["prompt_too_long"]
    assert Counter(h.fault for h in server.hits) == {"too_long": stats["requests"], None: stats["requests"]}


def test_completions_endpoint_with_plain_prompts_grows_the_pool(tmp_path, seeds):
    with FakeOpenAIServer() as server:
        cfg = build(pipeline(tmp_path, server.base_url, generation={"target": 10, "prompt_style": "auto"},
                             remote={"endpoint": "completions"}))
        boot, _ = run_loop(cfg, seeds)
    assert boot.style == "plain"  # auto: the completions endpoint takes text
    pool = read_jsonl(cfg.run_dir / "pool.jsonl")
    assert len(pool) == 10
    assert {t["instruction"] for t in pool} <= set(server.delivered_instructions())
    assert all(h.path == "/v1/completions" for h in server.hits)
