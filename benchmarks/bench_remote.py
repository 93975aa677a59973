"""Throughput of the remote backend in the real loop: candidates per second at concurrency 1
and 32 against a local OpenAI-compatible server with a fixed 200 ms reply latency and no
faults (tests/fake_openai_server.py, run as its own process so it does not share our GIL).

Each run is the whole bootstrapping loop (prompt sampling, HTTP, parsing, the ROUGE-L
filter, pool writes) for a fixed number of requests. `lost` counts tasks the server
delivered that never reached the loop, plus requests that failed or were never answered.

    python benchmarks/bench_remote.py [--latency 0.2] [--seconds 5]

Last line: RESULT speedup_c32=<x> lost=<n>   (target: speedup_c32 >= 25, lost = 0)
"""

from __future__ import annotations

import argparse
import json
import logging
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from selfinstruct.backends.openai_remote import OpenAIBackend  # noqa: E402
from selfinstruct.bootstrap import Bootstrapper  # noqa: E402
from selfinstruct.config import PipelineConfig, from_dict, validate  # noqa: E402
from selfinstruct.records import load_tasks  # noqa: E402
from selfinstruct.rundir import RunDir  # noqa: E402


def start_server(latency: float) -> tuple[subprocess.Popen, str]:
    proc = subprocess.Popen([sys.executable, str(ROOT / "tests" / "fake_openai_server.py"), "--latency", str(latency)],
                            stdout=subprocess.PIPE, text=True)
    line = proc.stdout.readline().strip()
    if not line.startswith("listening on "):
        proc.kill()
        raise RuntimeError(f"fake server did not start: {line!r}")
    return proc, line.removeprefix("listening on ")


def server_stats(base_url: str) -> dict:
    root = base_url.removesuffix("/v1")
    with urllib.request.urlopen(f"{root}/_fake/stats", timeout=10) as r:
        return json.loads(r.read())


class CountingBootstrapper(Bootstrapper):
    def handle_reply(self, req, reply):
        self.__dict__.setdefault("handled", []).append(req.id)
        super().handle_reply(req, reply)


def run_once(base_url: str, concurrency: int, n_requests: int, seeds, out: Path) -> dict:
    cfg = from_dict(PipelineConfig, {
        "name": f"c{concurrency}", "output_dir": str(out), "seed_tasks": [str(ROOT / "seed_tasks/seed_tasks.jsonl")],
        "generation": {"target": 10 * n_requests, "max_requests": n_requests, "num_prompt_tasks": 8,
                       "requests_per_round": max(8, concurrency)},
        "sampling": {"max_new_tokens": 256},
        "backend": {"kind": "openai", "model": "fake-model", "openai": {
            "base_urls": [base_url], "require_key": False, "max_concurrency": concurrency, "timeout_s": 30}},
    })
    validate(cfg)
    run_dir = RunDir(cfg.run_dir)
    run_dir.prepare(cfg)
    before = server_stats(base_url)
    backend = OpenAIBackend.from_config(cfg.backend)
    try:
        boot = CountingBootstrapper(cfg, backend, seeds, run_dir)
        t0, cpu0 = time.perf_counter(), time.process_time()
        stats = boot.run()
        seconds, cpu = time.perf_counter() - t0, time.process_time() - cpu0
    finally:
        backend.close()
    after = server_stats(base_url)
    delivered = after["delivered_tasks"] - before["delivered_tasks"]
    handled = getattr(boot, "handled", [])
    unanswered = len(set(range(stats.next_request_id)) - set(handled)) + (len(handled) - len(set(handled)))
    lost = (delivered - stats.candidates) + stats.failed_requests + unanswered
    return {"concurrency": concurrency, "requests": stats.requests, "candidates": stats.candidates,
            "kept": stats.kept, "seconds": seconds, "cand_per_s": stats.candidates / seconds, "lost": lost,
            "retries": stats.retries, "cpu_ms_per_request": 1000 * cpu / max(1, stats.requests)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--latency", type=float, default=0.2, help="server reply latency in seconds")
    ap.add_argument("--seconds", type=float, default=5.0, help="ideal length of each run")
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    import openai  # noqa: F401  -- imported once up front, not inside the timed runs

    seeds = load_tasks(ROOT / "seed_tasks" / "seed_tasks.jsonl")
    proc, base_url = start_server(args.latency)
    results = []
    try:
        with tempfile.TemporaryDirectory() as tmp:
            for c in (1, 32):
                n = max(c, round(args.seconds / args.latency) * c)
                r = run_once(base_url, c, n, seeds, Path(tmp))
                results.append(r)
                print(f"concurrency {c:>2}: {r['requests']} requests, {r['candidates']} candidates "
                      f"({r['kept']} kept) in {r['seconds']:.2f}s = {r['cand_per_s']:.1f} candidates/s, "
                      f"lost {r['lost']}, retries {r['retries']}, client CPU {r['cpu_ms_per_request']:.2f} ms/request",
                      flush=True)
    finally:
        proc.terminate()
        proc.wait(10)
    ideal = 1 / args.latency
    print(f"ideal at {args.latency * 1000:.0f} ms latency: {ideal:.1f} candidates/s per request slot "
          f"({32 * ideal:.0f}/s at concurrency 32)")
    # Replies of one latency wave arrive together and are handled one after another on one core
    # (GIL), so concurrency c tops out near c / (latency + c * client CPU per request).
    speedup = results[1]["cand_per_s"] / results[0]["cand_per_s"]
    lost = sum(r["lost"] for r in results)
    print(f"RESULT speedup_c32={speedup:.1f} lost={lost}")


if __name__ == "__main__":
    main()
