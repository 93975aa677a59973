"""A short real run on the bundled SmolLM2-135M-Instruct through the CLI: the loop, the
local backend and the filters together on real model output (~1 minute on 2 CPU cores; the
first ever load also de-quantises the model into the shared cache, ~20 s more)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from selfinstruct.config import FilterConfig
from selfinstruct.filters import build_filters, run_filters
from selfinstruct.records import Candidate, load_tasks
from selfinstruct.similarity import RougeLIndex

REPO = Path(__file__).resolve().parents[1]
SEEDS = REPO / "seed_tasks" / "seed_tasks.jsonl"
CLI = [sys.executable, "-c", "import sys; from selfinstruct.cli import main; sys.exit(main())"]

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]


@pytest.fixture(scope="module")
def bundled_model_present() -> None:
    from selfinstruct.models import ModelError, bundled_gguf

    try:
        bundled_gguf()
    except ModelError as e:
        pytest.skip(f"bundled model not installed: {e}")


def test_short_real_run_on_the_bundled_model(tmp_path: Path, bundled_model_present: None) -> None:
    target = 2
    pipeline = tmp_path / "tiny-real.yaml"
    pipeline.write_text(yaml.safe_dump({
        "output_dir": str(tmp_path / "outputs"),
        "seed_tasks": [str(SEEDS)],
        "generation": {"target": target, "num_prompt_tasks": 3, "num_machine_tasks": 1, "prompt_style": "plain",
                       "requests_per_round": 4, "max_requests": 12, "seed": 42},
        "sampling": {"temperature": 0.7, "top_p": 0.9, "max_new_tokens": 64},
        "backend": {"kind": "transformers", "model": "smollm2", "batch_size": 4, "threads": 1},
    }), encoding="utf-8")
    proc = subprocess.run([*CLI, "run", str(pipeline)], capture_output=True, text=True, timeout=540)
    assert proc.returncode == 0, proc.stderr[-4000:]
    run = tmp_path / "outputs" / "tiny-real"

    for name in ["config.yaml", "pool.jsonl", "rejected.jsonl", "stats.json", "run.log"]:
        assert (run / name).is_file(), name
    assert "loaded SmolLM2-135M-Instruct" in (run / "run.log").read_text(encoding="utf-8")
    stats = json.loads((run / "stats.json").read_text(encoding="utf-8"))
    rows = [json.loads(line) for line in (run / "pool.jsonl").read_text(encoding="utf-8").splitlines()]

    # Real output, so the count is the model's; at this seed it reaches the target in the
    # first batch, and the request cap bounds the run if a change makes it worse.
    assert 1 <= len(rows) <= target
    assert stats["kept"] == len(rows) and stats["requests"] % 4 == 0 and 4 <= stats["requests"] <= 12
    assert stats["completion_tokens"] > 0 and stats["prompt_tokens"] > stats["completion_tokens"]
    if len(rows) == target:
        assert (run / "export" / "alpaca.jsonl").is_file()
    else:
        assert "stopped early: max_requests" in proc.stdout

    # Every task in the pool is a valid task: it passes the whole filter chain again, against
    # the seeds and the tasks accepted before it.
    index = RougeLIndex()
    index.extend(t.instruction for t in load_tasks(SEEDS))
    chain = build_filters(FilterConfig(), index)
    for i, row in enumerate(rows):
        assert row["id"] == f"machine_task_{i}" and row["origin"] == "machine"
        (inst,) = row["instances"]
        verdict = run_filters(chain, Candidate(row["instruction"], inst["input"], inst["output"]))
        assert verdict.keep, (row["instruction"], verdict)
        assert row["meta"]["most_similar"] == verdict.detail["most_similar"]
        index.add(row["instruction"])
        assert row["meta"]["generator"] == "SmolLM2-135M-Instruct.Q4_1.gguf"
        assert len(row["meta"]["in_context"]) == 3 and row["meta"]["request_id"] < stats["requests"]
    for rec in (json.loads(x) for x in (run / "rejected.jsonl").read_text(encoding="utf-8").splitlines()):
        assert rec["reason"] and rec["stage"] in {"parse", "filter", "generate"} and "raw" in rec
