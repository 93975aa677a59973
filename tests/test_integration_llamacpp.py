"""The remote backend against a real llama.cpp server: llama-cpp-python's OpenAI-compatible
server with the bundled SmolLM2-135M-Instruct GGUF, on 127.0.0.1. It grows a small pool
through the chat endpoint (the server applies the GGUF's chat template) and through the
completions endpoint (plain prompts), and a prompt larger than the server's context window
is re-sent with fewer in-context tasks.

Run with `make test-integration` (installs llama-cpp-python[server], which compiles llama.cpp).
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from selfinstruct.backends.openai_remote import OpenAIBackend
from selfinstruct.bootstrap import Bootstrapper
from selfinstruct.config import PipelineConfig, from_dict, validate
from selfinstruct.records import load_tasks
from selfinstruct.rundir import RunDir

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[1]
SEED_FILE = ROOT / "seed_tasks" / "seed_tasks.jsonl"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_llama_server(tmp: Path, n_ctx: int) -> tuple[subprocess.Popen, str]:
    try:
        import llama_cpp.server  # noqa: F401
    except ImportError:
        pytest.fail("llama-cpp-python[server] is not installed: pip install 'llama-cpp-python[server]' "
                    "(`make test-integration` does it)")
    from selfinstruct.models import bundled_gguf

    port = free_port()
    log = (tmp / f"llama_server_{n_ctx}.log").open("w")
    proc = subprocess.Popen(
        [sys.executable, "-m", "llama_cpp.server", "--model", str(bundled_gguf()), "--model_alias", "smollm2",
         "--host", "127.0.0.1", "--port", str(port), "--n_ctx", str(n_ctx), "--n_threads", "2"],
        stdout=log, stderr=subprocess.STDOUT)
    base_url = f"http://127.0.0.1:{port}/v1"
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"llama.cpp server exited with {proc.returncode}; see {log.name}")
        try:
            with urllib.request.urlopen(f"{base_url}/models", timeout=2) as r:
                if r.status == 200:
                    return proc, base_url
        except OSError:
            time.sleep(0.5)
    proc.kill()
    pytest.fail(f"llama.cpp server did not answer within 180 s; see {log.name}")


@pytest.fixture(scope="module")
def llama_server(tmp_path_factory):
    proc, url = start_llama_server(tmp_path_factory.mktemp("llama"), n_ctx=2048)
    yield url
    proc.terminate()
    proc.wait(30)


def grow(tmp_path: Path, base_url: str, endpoint: str, style: str, *, target: int = 3, num_prompt_tasks: int = 5,
         max_requests: int = 30) -> tuple[Bootstrapper, list[dict]]:
    cfg = from_dict(PipelineConfig, {
        "name": f"llamacpp_{endpoint}", "output_dir": str(tmp_path), "seed_tasks": [str(SEED_FILE)],
        "generation": {"target": target, "num_prompt_tasks": num_prompt_tasks, "prompt_style": style,
                       "requests_per_round": 4, "max_requests": max_requests},
        "sampling": {"temperature": 0.7, "top_p": 0.9, "max_new_tokens": 160},
        "backend": {"kind": "openai", "model": "smollm2", "openai": {
            "base_urls": [base_url], "endpoint": endpoint, "require_key": False, "max_concurrency": 2,
            # llama-cpp-python serves one request at a time: the second in flight waits its turn.
            "timeout_s": 300, "backoff_s": 0.2}},
    })
    validate(cfg)
    run_dir = RunDir(cfg.run_dir)
    run_dir.prepare(cfg)
    backend = OpenAIBackend.from_config(cfg.backend)
    try:
        boot = Bootstrapper(cfg, backend, load_tasks(SEED_FILE), run_dir)
        boot.run()
    finally:
        backend.close()
    pool = [json.loads(line) for line in (cfg.run_dir / "pool.jsonl").read_text().splitlines() if line.strip()]
    return boot, pool


# A 135M model keeps the task format far less often in chat than as a completion (measured
# here, seed 42: 2 tasks kept from 7 chat replies, 3 from 4 completions), hence the smaller chat
# target. Requests carry seeds, so a given llama.cpp build replays the same replies; 128 tokens
# instead of 160 cut off the chat replies that carried the tasks (0 kept from 30).
@pytest.mark.parametrize("endpoint, style, target", [("chat", "chat", 2), ("completions", "plain", 3)])
def test_grows_a_pool_through_a_real_llama_cpp_server(tmp_path, llama_server, endpoint, style, target):
    boot, pool = grow(tmp_path, llama_server, endpoint, style, target=target)
    stats = boot.stats
    assert boot.style == style
    assert len(pool) == target, f"only {len(pool)} tasks after {stats.requests} requests: {stats.to_dict()}"
    assert all(t["meta"]["generator"] == "smollm2" and t["instruction"].strip() for t in pool)
    assert stats.failed_requests == 0
    # The server reports real token usage, and the loop summed it.
    assert stats.prompt_tokens > 100 * stats.requests and stats.completion_tokens > 0


def test_a_prompt_beyond_the_context_window_is_resent_with_fewer_tasks(tmp_path_factory, tmp_path):
    proc, url = start_llama_server(tmp_path_factory.mktemp("llama_small"), n_ctx=1024)
    try:
        boot, pool = grow(tmp_path, url, "completions", "plain", target=1, num_prompt_tasks=12, max_requests=2)
    finally:
        proc.terminate()
        proc.wait(30)
    stats = boot.stats
    assert stats.failed_requests == 0 and stats.requests >= 1
    assert stats.extra["retry_reasons"]["prompt_too_long"] >= 1
    assert stats.retries >= stats.extra["retry_reasons"]["prompt_too_long"]
    # Whatever was kept came from a prompt that fitted: fewer than the 12 tasks asked for.
    assert all(len(t["meta"]["in_context"]) < 12 for t in pool)
