"""The dataset card: its figures are stats.json's and the export's, its header is the Hub's."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml
from test_export_fixtures import HELDOUT, grow_run, make_run_dir

from selfinstruct.card import MARKER, CardExistsError, size_category
from selfinstruct.export import Outputs, export, export_run

ROW = re.compile(r"^\| `([^`]+)` \| ([^|]+) \|", re.MULTILINE)


def split_card(text: str) -> tuple[dict, str]:
    assert text.startswith("---\n")
    header, body = text[4:].split("\n---\n", 1)
    return yaml.safe_load(header), body


def section(body: str, title: str) -> str:
    return body.split(f"## {title}\n", 1)[1].split("\n## ", 1)[0]


def lookup(d: dict, dotted: str):
    for part in dotted.split("."):
        d = d[part]
    return d


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    root = tmp_path_factory.mktemp("card")
    run, cfg = grow_run(root)
    paths = export_run(run, {"validation_fraction": 0.4, "decontaminate": [str(HELDOUT)], "license": "apache-2.0"})
    card = run / "export" / "README.md"
    assert card in paths
    return run, cfg, card.read_text(encoding="utf-8")


def test_card_generation_counts_equal_stats_json(exported):
    run, _, text = exported
    stats = json.loads((run / "stats.json").read_text())
    counts = section(split_card(text)[1], "Counts").split("Export hygiene")[0]
    shown = dict(ROW.findall(counts))
    for key, value in shown.items():
        assert float(value) == pytest.approx(float(lookup(stats, key)), abs=0), key
    # It shows the funnel and every drop reason stats.json has.
    must = {"requests", "failed_requests", "candidates", "kept", "total_dropped", "keep_rate",
            "prompt_tokens", "completion_tokens", *(f"dropped.{r}" for r in stats["dropped"])}
    assert must <= set(shown)
    assert stats["dropped"] == {"rouge_similar": 1, "too_short": 1, "no_task_found": 1}


def test_card_hygiene_and_split_counts_equal_the_files(exported):
    run, _, text = exported
    _, body = split_card(text)
    hygiene = dict(ROW.findall(section(body, "Counts").split("Export hygiene")[1]))
    dropped = [json.loads(line)["reason"] for line in (run / "export" / "dropped.jsonl").open()]
    assert {k: int(v) for k, v in hygiene.items()} == {
        r: dropped.count(r) for r in ("eval_ngram", "eval_rouge", "exact_duplicate", "near_duplicate",
                                      "no_instances_left")}
    splits = re.findall(r"^\| (train|validation) \| (\d+) \| (\d+) \|$", section(body, "Dataset structure"),
                        re.MULTILINE)
    files = {"train": "alpaca.jsonl", "validation": "alpaca.validation.jsonl"}
    for split, tasks, records in splits:
        lines = (run / "export" / files[split]).read_text().splitlines()
        assert int(records) == len(lines) and int(tasks) == len({json.loads(x)["instruction"] for x in lines})
    assert sorted(s for s, _, _ in splits) == ["train", "validation"]


def test_card_records_generator_decoding_filters_and_licence(exported):
    _, cfg, text = exported
    meta, body = split_card(text)
    how = dict(re.findall(r"^\| ([^|`]+?) \| (.+?) \|$", section(body, "How it was made"), re.MULTILINE))
    assert how["temperature"] == str(cfg.sampling.temperature)
    assert how["top_p"] == str(cfg.sampling.top_p)
    assert how["max_new_tokens"] == str(cfg.sampling.max_new_tokens)
    assert how["generator model"].startswith(f"`{cfg.backend.model}` (backend `scripted`")
    assert how["generator as recorded per task"] == "`scripted`"
    assert f"> {cfg.filters.rouge_threshold}" in how["novelty filter"]
    assert how["seed tasks"].endswith("(210 tasks)")
    assert str(HELDOUT) in how["evaluation sets decontaminated against"]
    assert meta["license"] == "apache-2.0" and "`apache-2.0`" in section(body, "Licence")
    assert meta["size_categories"] == ["n<1K"] and "self-instruct" in meta["tags"]
    assert MARKER in body


def test_card_config_points_at_the_parquet_files_and_load_snippets_work(exported, tmp_path, monkeypatch):
    import datasets

    run, _, text = exported
    meta, body = split_card(text)
    files = {f["split"]: f["path"] for f in meta["configs"][0]["data_files"]}
    assert files == {s: f"data/{s}-00000-of-00001.parquet" for s in ("train", "validation")}
    monkeypatch.chdir(run / "export")  # the snippets' paths are relative to the card
    assert 'load_from_disk("hf")' in body
    ds = datasets.load_from_disk("hf")
    pq = datasets.load_dataset("parquet", data_files=files, cache_dir=str(tmp_path / "cache"))
    assert ds["validation"].to_list() == pq["validation"].to_list()


def test_card_with_seeds_and_without_decontamination(tmp_path):
    run = make_run_dir(tmp_path)
    res = export(run, {"include_seeds": True, "format": "self_instruct"}, Outputs(card=tmp_path / "c" / "README.md"))
    _, body = split_card((tmp_path / "c" / "README.md").read_text())
    assert body.count("the seed tasks followed by the machine-generated tasks") == 1
    assert "none given (not decontaminated)" in body
    assert "one record per task" in body
    assert "The data files were written elsewhere" in body  # no data files were asked for
    assert res.splits["train"]["tasks"] == 213


def test_card_never_overwrites_a_readme_it_did_not_write(tmp_path):
    run = make_run_dir(tmp_path)
    (tmp_path / "README.md").write_text("# hand written\n")
    with pytest.raises(CardExistsError, match="--no-card"):
        export(run, {}, Outputs(card=tmp_path / "README.md"))
    assert Path(tmp_path / "README.md").read_text() == "# hand written\n"


@pytest.mark.parametrize("n,label", [(0, "n<1K"), (999, "n<1K"), (1000, "1K<n<10K"), (52_002, "10K<n<100K"),
                                     (10**9, "n>100M")])
def test_size_category(n, label):
    assert size_category(n) == label
