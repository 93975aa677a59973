"""kill -9 during a three-step run, then resume: nothing lost, nothing done twice.

A child process runs the scripted scenario of test_self_instruct_method and SIGKILLs
itself when the backend is asked for the n-th request of a given step (before that
request's reply is handled). The run is then resumed in this process, and its run
directory must equal that of an uninterrupted run: the same pool, step log and rejects,
line for line, and the same counters.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from selfinstruct.backends.scripted import ScriptedBackend

sys.path.insert(0, str(Path(__file__).resolve().parent))
from test_self_instruct_method import REPO, read, run_scenario, scenario_reply, step_of  # noqa: E402

TIMING = {"elapsed_s", "rounds", "tokens_per_s"}  # the only fields a restart may change


def killing_reply(kill_step: str, kill_at: int):
    seen = {"instructions": 0, "classification": 0, "instances": 0}

    def reply(req):
        step = step_of(req)
        seen[step] += 1
        if step == kill_step and seen[step] == kill_at:
            os.kill(os.getpid(), signal.SIGKILL)
        return scenario_reply(req)

    return reply


def child(out: str, kill_step: str, kill_at: int) -> None:
    run_scenario(Path(out), backend=ScriptedBackend(killing_reply(kill_step, kill_at)))


def snapshot(run_dir: Path) -> dict:
    stats = json.loads((run_dir / "stats.json").read_text()) if (run_dir / "stats.json").exists() else {}
    return {
        "pool": read(run_dir / "pool.jsonl"),
        "steps": read(run_dir / "instructions.jsonl"),
        "rejected": read(run_dir / "rejected.jsonl"),
        "stats": {k: v for k, v in stats.items() if k not in TIMING},
    }


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    out = tmp_path_factory.mktemp("reference")
    run_scenario(out)
    return snapshot(out / "default")


# (step, n): SIGKILL when the n-th request of that step is made. The scenario's rounds:
# 2 instruction requests, then 4 classifications, 4 instance requests; 2, 2, 2; 2, 2, 2.
KILL_POINTS = [
    pytest.param("classification", 5, id="between-step1-and-step2"),
    pytest.param("instances", 5, id="between-step2-and-step3"),
    pytest.param("instructions", 3, id="between-rounds"),
    pytest.param("instances", 2, id="mid-step3-before-a-flush"),
    pytest.param("instances", 4, id="mid-step3-after-a-flush"),
    pytest.param("classification", 2, id="mid-step2"),
    pytest.param("instructions", 2, id="mid-step1"),
]


@pytest.mark.parametrize("kill_step,kill_at", KILL_POINTS)
def test_kill_9_then_resume_loses_and_duplicates_nothing(tmp_path, reference, kill_step, kill_at):
    proc = subprocess.run([sys.executable, __file__, str(tmp_path), kill_step, str(kill_at)], cwd=REPO,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    run_dir = tmp_path / "default"
    before = snapshot(run_dir)
    assert len(before["pool"]) < len(reference["pool"])  # it really was interrupted

    _, backend = run_scenario(tmp_path)
    after = snapshot(run_dir)
    assert after == reference
    ids = [t["id"] for t in after["pool"]]
    assert len(ids) == len(set(ids))
    # Work durable before the kill was not redone: the resumed process asked only for the rest.
    done_before = {r["id"] for r in before["steps"] if r["step"] == "classification"}
    asked_again = [r for r in backend.prompts if step_of(r) == "classification"]
    assert not done_before & {f"machine_task_{r.id}" for r in asked_again}
    requests_after = sum(after["stats"]["extra"]["requests_by_step"].values())
    assert len(backend.prompts) == requests_after - before["stats"].get("requests", 0)


def test_resume_finishes_unclassified_tasks_before_generating_more(tmp_path):
    proc = subprocess.run([sys.executable, __file__, str(tmp_path), "classification", "5"], cwd=REPO,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    pending = [t["id"] for r in read(tmp_path / "default" / "instructions.jsonl") if r["step"] == "instructions"
               for t in r["tasks"]][4:]
    assert pending == ["machine_task_4", "machine_task_5"]  # round 2's instructions, not classified yet
    _, backend = run_scenario(tmp_path)
    first = [step_of(r) for r in backend.prompts[:4]]
    assert first == ["classification", "classification", "instances", "instances"]
    assert [r.id for r in backend.prompts[:2]] == [4, 5]


if __name__ == "__main__":
    child(sys.argv[1], sys.argv[2], int(sys.argv[3]))
