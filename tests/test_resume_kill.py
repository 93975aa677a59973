"""`selfinstruct run` killed with SIGKILL part way (twice), then re-run with the same command:
the pool ends exactly as an uninterrupted run's, nothing lost, nothing duplicated. The
script is the one test_loop.py designs (unique tasks per request id, plus blocked,
near-duplicate and truncated replies), replayed from a file keyed on request id."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from test_loop import reply_text, script  # the scripted replies and their designed outcomes

REPO = Path(__file__).resolve().parents[1]
TARGET = 30
CLI = [sys.executable, "-c", "import sys; from selfinstruct.cli import main; sys.exit(main())"]


@pytest.fixture
def pipeline(tmp_path: Path) -> Path:
    replies = tmp_path / "replies.jsonl"
    with replies.open("w", encoding="utf-8") as f:
        for rid in range(200):
            f.write(json.dumps({"request_id": rid, "text": reply_text(rid), "finish_reason": script(rid)[1]}) + "\n")
    path = tmp_path / "pipe.yaml"
    path.write_text(yaml.safe_dump({
        "output_dir": str(tmp_path / "outputs"),
        "seed_tasks": [str(REPO / "seed_tasks" / "seed_tasks.jsonl")],
        "generation": {"target": TARGET, "num_prompt_tasks": 5, "requests_per_round": 3, "seed": 5},
        # Slow enough to be killed mid-run: ~0.05 s a reply, a round flushed every 3 replies.
        "backend": {"kind": "scripted", "replies": str(replies), "delay_s": 0.05},
    }), encoding="utf-8")
    return path


def start(pipeline: Path, name: str) -> subprocess.Popen:
    return subprocess.Popen([*CLI, "run", str(pipeline), "--set", f"name={name}"], cwd=pipeline.parent,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def finish(proc: subprocess.Popen, timeout: float = 240) -> str:
    out, _ = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, out
    return out


def whole_lines(path: Path) -> list[str]:
    """The complete lines of a JSONL file (a torn last line, if any, left out)."""
    if not path.exists():
        return []
    lines = path.read_text(encoding="utf-8").splitlines(keepends=True)
    return lines if not lines or lines[-1].endswith("\n") else lines[:-1]


def kill_when(proc: subprocess.Popen, pool: Path, lines: int, rng: random.Random, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while len(whole_lines(pool)) < lines:
        assert proc.poll() is None, f"the run ended before it was killed:\n{proc.communicate()[0]}"
        assert time.monotonic() < deadline, "the run made no progress"
        time.sleep(0.01)
    time.sleep(rng.uniform(0, 0.15))  # land anywhere in a round
    os.kill(proc.pid, signal.SIGKILL)
    proc.communicate(timeout=30)
    assert proc.returncode == -signal.SIGKILL


def test_kill_9_twice_then_resume_equals_an_uninterrupted_run(pipeline: Path) -> None:
    rng = random.Random(os.getpid())
    whole = start(pipeline, "whole")  # the reference, generated alongside
    run = pipeline.parent / "outputs" / "killed"
    pool = run / "pool.jsonl"

    kill_when(start(pipeline, "killed"), pool, 8, rng)
    first = whole_lines(pool)
    assert len(first) >= 8

    kill_when(start(pipeline, "killed"), pool, 18, rng)  # the same command resumes
    second = whole_lines(pool)
    assert second[:len(first)] == first, "a resumed run never rewrites what was accepted"

    finish(whole)
    reference = (pipeline.parent / "outputs" / "whole" / "pool.jsonl").read_text(encoding="utf-8")
    assert reference.startswith("".join(second))

    out = finish(start(pipeline, "killed"))
    assert "resuming" in out
    final = pool.read_text(encoding="utf-8")
    assert final == reference
    rows = [json.loads(line) for line in final.splitlines()]
    assert len(rows) == TARGET
    assert [r["id"] for r in rows] == [f"machine_task_{i}" for i in range(TARGET)]
    assert len({r["instruction"] for r in rows}) == TARGET
    stats = json.loads((run / "stats.json").read_text(encoding="utf-8"))
    assert stats["kept"] == TARGET
    assert (run / "export" / "alpaca.jsonl").exists()
    assert all(json.loads(line) for line in (run / "rejected.jsonl").read_text(encoding="utf-8").splitlines())


def test_kill_9_inside_a_write_leaves_a_torn_line_that_resume_repairs(pipeline: Path) -> None:
    rng = random.Random(os.getpid() + 1)
    whole = start(pipeline, "whole")
    run = pipeline.parent / "outputs" / "torn"
    pool = run / "pool.jsonl"
    kill_when(start(pipeline, "torn"), pool, 10, rng)
    finish(whole)
    reference = (pipeline.parent / "outputs" / "whole" / "pool.jsonl").read_text(encoding="utf-8").splitlines(
        keepends=True)
    # A kill in the middle of the next round's write: that round's first line whole, its
    # second cut half way, and stats.json (written after the pool) still at the round before.
    have = whole_lines(pool)
    assert reference[:len(have)] == have
    with pool.open("w", encoding="utf-8") as f:
        f.write("".join(have) + reference[len(have)] + reference[len(have) + 1][:150])
    out = finish(start(pipeline, "torn"))
    assert "removed a torn last line" in out
    assert pool.read_text(encoding="utf-8") == "".join(reference)
