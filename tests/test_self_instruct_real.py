"""The three-step method on the bundled SmolLM2-135M-Instruct through the CLI, briefly:
real replies through every step's parser and filters (about a minute on 2 idle CPU cores)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from selfinstruct.instances import ParsedInstance, filter_instances

REPO = Path(__file__).resolve().parents[1]
CLI = [sys.executable, "-c", "import sys; from selfinstruct.cli import main; sys.exit(main())"]

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]


@pytest.fixture(scope="module")
def bundled_model_present() -> None:
    from selfinstruct.models import ModelError, bundled_gguf

    try:
        bundled_gguf()
    except ModelError as e:
        pytest.skip(f"bundled model not installed: {e}")


def test_pipeline_file_runs_three_steps_on_the_bundled_model(tmp_path: Path, bundled_model_present: None) -> None:
    # The shipped pipeline, made small: 4 instruction requests at most, short replies.
    cfg = yaml.safe_load((REPO / "pipelines" / "self_instruct.yaml").read_text(encoding="utf-8"))
    assert cfg["generation"]["method"] == "self_instruct"
    cfg["name"] = "si-real"
    cfg["output_dir"] = str(tmp_path / "outputs")
    cfg["seed_tasks"] = [str(REPO / "seed_tasks" / "seed_tasks.jsonl")]
    cfg["generation"].update(target=2, requests_per_round=4, max_requests=4, instance_max_new_tokens=96)
    cfg["backend"].update(batch_size=4, threads=1)
    cfg["export"] = {"format": "self_instruct", "hf": False, "parquet": False, "card": False, "dedup": False}
    pipeline = tmp_path / "si-real.yaml"
    pipeline.write_text(yaml.safe_dump(cfg), encoding="utf-8")
    proc = subprocess.run([*CLI, "run", str(pipeline)], capture_output=True, text=True, timeout=540, cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-4000:]
    run = tmp_path / "outputs" / "si-real"

    stats = json.loads((run / "stats.json").read_text(encoding="utf-8"))
    rows = [json.loads(line) for line in (run / "pool.jsonl").read_text(encoding="utf-8").splitlines()]
    steps = [json.loads(line) for line in (run / "instructions.jsonl").read_text(encoding="utf-8").splitlines()]
    x = stats["extra"]
    by_step = x["requests_by_step"]
    accepted = [t["id"] for r in steps if r["step"] == "instructions" for t in r["tasks"]]
    # Real output, so the counts are the model's; the structure is not.
    assert 1 <= by_step["instructions"] <= 4 and stats["requests"] == sum(by_step.values())
    assert by_step["classification"] == len(accepted) == x["classification"]["yes"] + x["classification"]["no"]
    assert by_step["instances"] == len(accepted) and x["pending"] == 0
    assert stats["kept"] == len(rows) <= 2
    assert x["instances"]["kept"] == sum(len(r["instances"]) for r in rows)
    assert sum(x["instance_filters"].values()) == x["instances"]["parsed"] - x["instances"]["kept"]
    for row in rows:
        assert row["origin"] == "machine" and isinstance(row["is_classification"], bool)
        assert 1 <= len(row["instances"]) <= 5 and row["id"] in accepted
        # Kept instances pass the filters again unchanged.
        again = filter_instances([ParsedInstance(i["input"], i["output"]) for i in row["instances"]])
        assert [i.to_dict() for i in again.kept] == row["instances"]
    if len(rows) == 2:
        exported = [json.loads(line) for line in (run / "export" / "self_instruct.jsonl").read_text().splitlines()]
        assert [r["instances"] for r in exported] == [r["instances"] for r in rows]
    else:
        assert "stopped early: max_requests" in proc.stdout
