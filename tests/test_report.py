"""`selfinstruct stats`: report.md, non-empty PNG plots and a terminal summary, on a finished
run and on one in progress."""

from __future__ import annotations

import json
import math

import pytest
from test_export_fixtures import grow_run, make_run_dir

from selfinstruct.cli import main
from selfinstruct.report import build_report, leading_verb, write_report

PNG = b"\x89PNG\r\n\x1a\n"


def pool_records(run):
    return [json.loads(line) for line in (run / "pool.jsonl").open()]


def assert_png(path):
    data = path.read_bytes()
    assert data.startswith(PNG) and len(data) > 5_000, path


@pytest.fixture(scope="module")
def grown(tmp_path_factory):
    run, _ = grow_run(tmp_path_factory.mktemp("report"))
    return run


def test_report_tables_come_from_the_run_files(grown):
    r = build_report(grown)
    stats = json.loads((grown / "stats.json").read_text())
    funnel = dict(zip(r.funnel["step"], r.funnel["count"]))
    assert funnel["requests answered"] == stats["requests"] == 8
    assert funnel["candidates parsed"] == stats["candidates"]
    assert funnel["kept"] == stats["kept"] == 5
    assert funnel["parse failures"] == 1 and funnel["dropped by filters"] == 2
    # Stages come from rejected.jsonl, counts from stats.json.
    assert sorted(map(tuple, r.drops[["stage", "reason", "count"]].values.tolist())) == [
        ("filter", "rouge_similar", 1), ("filter", "too_short", 1), ("parse", "no_task_found", 1)]
    pool = pool_records(grown)
    expected = [max(p["meta"]["most_similar"].values()) for p in pool]
    assert r.tasks["max_rouge"].tolist() == pytest.approx(expected)
    assert dict(zip(r.verbs["verb"], r.verbs["tasks"])) == {
        "list": 1, "summarise": 1, "explain": 1, "suggest": 1, "convert": 1}
    assert r.tasks["instruction_words"].tolist() == [len(p["instruction"].split()) for p in pool]
    lengths = r.lengths().set_index("text")
    assert lengths.loc["input (non-empty)", "count"] == 1  # only the summarising task has an input
    assert not r.in_progress


def test_write_report_makes_markdown_and_non_empty_pngs(grown):
    r = build_report(grown)
    path = write_report(r)
    assert path == grown / "report.md"
    text = path.read_text()
    for name in ("rouge_similarity", "lengths", "leading_verbs"):
        assert_png(grown / "report" / f"{name}.png")
        assert f"](report/{name}.png)" in text
    assert "| filter | rouge_similar | 1 |" in text
    assert "heuristic" in text


def test_stats_cli_prints_a_summary_and_the_report_path(grown, capsys):
    assert main(["stats", str(grown)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0] == f"run {grown}: 5 machine tasks"
    assert "requests 8 (0 failed), candidates 7, kept 5 (71.4%)" in out
    assert any(line.startswith("leading verbs: ") for line in out)
    assert out[-1] == f"report: {grown / 'report.md'}"


def test_stats_works_on_a_run_in_progress(tmp_path):
    seen = []

    def during_run(stats, target):
        # What `selfinstruct stats` would see from another process at this moment.
        r = build_report(tmp_path / "live")
        write_report(r)
        seen.append((stats.kept, r.pool_size, r.in_progress, int(r.stats["kept"])))
        assert_png(tmp_path / "live" / "report" / "rouge_similarity.png")

    grow_run(tmp_path, target=5, requests_per_round=3, on_progress=during_run, name="live")
    # Called before the first request (nothing on disk yet), then after each round of 3 replies.
    assert seen == [(0, 0, True, 0), (2, 2, True, 2), (3, 3, True, 3), (5, 5, False, 5)]


def test_report_of_a_hand_written_pool_and_a_torn_line(tmp_path):
    run = make_run_dir(tmp_path)
    with (run / "pool.jsonl").open("a") as f:
        f.write('{"id": "machine_task_3", "instruction": "Wri')
    r = build_report(run)
    assert r.pool_size == 3
    assert r.tasks["max_rouge"].tolist()[:2] == [0.3, 0.5] and math.isnan(r.tasks["max_rouge"].tolist()[2])
    assert int((r.tasks["is_classification"] == True).sum()) == 1  # noqa: E712
    assert len(r.instances) == 4
    text = write_report(r, plots=False).read_text()
    assert "![" not in text and not (run / "report").exists()
    assert "1 classification tasks." in text


@pytest.mark.parametrize("instruction,verb", [
    ("Write a haiku about rain.", "write"), ("Please list three fruits.", "list"),
    ("  3. Summarise the text", "summarise"), ("What is the capital of Peru?", "what"), ("123", "")])
def test_leading_verb_heuristic(instruction, verb):
    assert leading_verb(instruction) == verb
