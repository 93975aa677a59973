"""Export formats round-trip: export -> load with json / datasets -> the same records."""

from __future__ import annotations

import json

import pytest
from test_export_fixtures import POOL, SEEDS, make_run_dir

from selfinstruct.cli import main
from selfinstruct.config import ConfigError
from selfinstruct.export import (ExportError, Outputs, export, export_file, export_run, machine_tasks,
                                 split_tasks)
from selfinstruct.records import Instance, Task, load_tasks

# The records each format must hold for POOL, written out by hand.
EXPECTED = {
    "alpaca": [
        {"instruction": "Give three synonyms for the word happy.", "input": "", "output": "joyful, glad, cheerful"},
        {"instruction": "Decide whether the sentence is a question or a statement.", "input": "Is it raining?",
         "output": "question"},
        {"instruction": "Decide whether the sentence is a question or a statement.", "input": "It is raining.",
         "output": "statement"},
        {"instruction": "Translate the sentence into French.", "input": "Good morning.", "output": "Bonjour."},
    ],
    "messages": [
        {"messages": [{"role": "user", "content": "Give three synonyms for the word happy."},
                      {"role": "assistant", "content": "joyful, glad, cheerful"}]},
        {"messages": [{"role": "user", "content": "Decide whether the sentence is a question or a statement."
                                                  "\n\nIs it raining?"},
                      {"role": "assistant", "content": "question"}]},
        {"messages": [{"role": "user", "content": "Decide whether the sentence is a question or a statement."
                                                  "\n\nIt is raining."},
                      {"role": "assistant", "content": "statement"}]},
        {"messages": [{"role": "user", "content": "Translate the sentence into French.\n\nGood morning."},
                      {"role": "assistant", "content": "Bonjour."}]},
    ],
    "prompt_completion": [
        {"prompt": "Give three synonyms for the word happy.", "completion": "joyful, glad, cheerful"},
        {"prompt": "Decide whether the sentence is a question or a statement.\n\nIs it raining?",
         "completion": "question"},
        {"prompt": "Decide whether the sentence is a question or a statement.\n\nIt is raining.",
         "completion": "statement"},
        {"prompt": "Translate the sentence into French.\n\nGood morning.", "completion": "Bonjour."},
    ],
    "self_instruct": [
        {"id": "machine_task_0", "name": "", "instruction": "Give three synonyms for the word happy.",
         "instances": [{"input": "", "output": "joyful, glad, cheerful"}], "is_classification": None},
        {"id": "machine_task_1", "name": "", "instruction": "Decide whether the sentence is a question or a "
         "statement.", "instances": [{"input": "Is it raining?", "output": "question"},
                                     {"input": "It is raining.", "output": "statement"}],
         "is_classification": True},
        {"id": "machine_task_2", "name": "", "instruction": "Translate the sentence into French.",
         "instances": [{"input": "Good morning.", "output": "Bonjour."}], "is_classification": False},
    ],
}


@pytest.fixture
def hf_cache(tmp_path, monkeypatch):
    """datasets' cache inside tmp_path, offline."""
    cache = tmp_path / "hf_cache"
    monkeypatch.setenv("HF_DATASETS_CACHE", str(cache))
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    import datasets

    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", cache)
    return cache


@pytest.mark.parametrize("fmt", list(EXPECTED))
def test_every_format_round_trips(tmp_path, hf_cache, fmt):
    import datasets

    run = make_run_dir(tmp_path)
    out = tmp_path / "out"
    res = export(run, {"format": fmt}, Outputs(jsonl=out / "data.jsonl", hf=out / "hf", parquet=out / "parquet"))
    expected = EXPECTED[fmt]

    lines = (out / "data.jsonl").read_text(encoding="utf-8").splitlines()
    assert [json.loads(line) for line in lines] == expected
    assert datasets.load_from_disk(str(out / "hf"))["train"].to_list() == expected
    from_parquet = datasets.load_dataset("parquet", data_files={"train": str(res.paths["parquet:train"])},
                                         cache_dir=str(hf_cache))
    assert from_parquet["train"].to_list() == expected
    from_json = datasets.load_dataset("json", data_files=str(out / "data.jsonl"), cache_dir=str(hf_cache))
    assert from_json["train"].to_list() == expected
    assert res.splits == {"train": {"tasks": 3, "records": len(expected)}}


@pytest.mark.parametrize("fmt", ["alpaca", "self_instruct"])
def test_json_list_output_round_trips(tmp_path, fmt):
    run = make_run_dir(tmp_path)
    export(run, {"format": fmt}, Outputs(jsonl=tmp_path / "data.json"))
    assert json.loads((tmp_path / "data.json").read_text(encoding="utf-8")) == EXPECTED[fmt]


def test_self_instruct_export_can_seed_another_run(tmp_path):
    run = make_run_dir(tmp_path)
    export(run, {"format": "self_instruct"}, Outputs(jsonl=tmp_path / "tasks.jsonl"))
    again = load_tasks(tmp_path / "tasks.jsonl")
    assert [(t.id, t.instruction, t.instances, t.is_classification) for t in again] == \
        [(t.id, t.instruction, t.instances, t.is_classification) for t in POOL]


def test_messages_user_turn_is_the_finetuning_prompt_format(tmp_path):
    from selfinstruct.sft_format import PromptFormat

    run = make_run_dir(tmp_path)
    export(run, {"format": "messages"}, Outputs(jsonl=tmp_path / "m.jsonl"))
    users = [json.loads(line)["messages"][0]["content"] for line in (tmp_path / "m.jsonl").open()]
    fmt = PromptFormat("alpaca")
    assert users == [fmt.user_text(t.instruction, i.input) for t in POOL for i in t.instances]


def test_validation_split_is_by_task_and_fixed_by_seed(tmp_path, hf_cache):
    import datasets

    tasks = [Task(f"machine_task_{i}", f"Write a short poem about the number {i} and its shape.",
                  [Instance(f"variant {j}", f"poem {i}.{j}") for j in range(1 + i % 3)], origin="machine")
             for i in range(10)]
    run = make_run_dir(tmp_path, tasks)
    settings = {"validation_fraction": 0.3, "split_seed": 7, "dedup": False}
    a = export(run, settings, Outputs(jsonl=tmp_path / "a" / "x.jsonl", hf=tmp_path / "a" / "hf"))
    b = export(run, settings, Outputs(jsonl=tmp_path / "b" / "x.jsonl"))
    assert a.splits["validation"]["tasks"] == 3 and a.splits["train"]["tasks"] == 7
    read = {p: (tmp_path / p).read_text() for p in ("a/x.jsonl", "a/x.validation.jsonl", "b/x.jsonl",
                                                     "b/x.validation.jsonl")}
    assert read["a/x.jsonl"] == read["b/x.jsonl"] and read["a/x.validation.jsonl"] == read["b/x.validation.jsonl"]
    train = [json.loads(line) for line in read["a/x.jsonl"].splitlines()]
    val = [json.loads(line) for line in read["a/x.validation.jsonl"].splitlines()]
    # Every instance exported once, and no instruction on both sides.
    assert len(train) + len(val) == sum(len(t.instances) for t in tasks)
    assert not {r["instruction"] for r in train} & {r["instruction"] for r in val}
    hf = datasets.load_from_disk(str(tmp_path / "a" / "hf"))
    assert hf["train"].to_list() == train and hf["validation"].to_list() == val
    picks = {tuple(t.id for t in split_tasks(tasks, 0.3, seed)["validation"]) for seed in range(5)}
    assert len(picks) > 1  # the seed decides which tasks are held out


def test_split_keeps_one_task_on_each_side_when_small():
    tasks = [Task(str(i), f"task number {i}", [Instance("", "x")]) for i in range(3)]
    assert [len(v) for v in split_tasks(tasks, 0.01).values()] == [2, 1]
    assert [len(v) for v in split_tasks(tasks, 0.99).values()] == [1, 2]
    assert list(split_tasks(tasks[:1], 0.5)) == ["train"]


def test_include_seeds_puts_the_seed_set_first(tmp_path):
    run = make_run_dir(tmp_path)
    res = export(run, {"format": "alpaca", "include_seeds": True, "dedup": False}, Outputs(jsonl=tmp_path / "x.jsonl"))
    recs = [json.loads(line) for line in (tmp_path / "x.jsonl").open()]
    seeds = load_tasks(SEEDS)
    seed_recs = [{"instruction": t.instruction, "input": i.input, "output": i.output} for t in seeds
                 for i in t.instances]
    assert recs == seed_recs + EXPECTED["alpaca"]
    assert res.splits["train"]["tasks"] == len(seeds) + len(POOL)


def test_export_run_writes_jsonl_hf_parquet_and_card_by_default(tmp_path):
    run = make_run_dir(tmp_path)
    paths = export_run(run, {})
    out = run / "export"
    assert paths == [out / "alpaca.jsonl", out / "hf", out / "data", out / "README.md", out / "dropped.jsonl"]
    assert (out / "hf" / "dataset_dict.json").exists()
    assert (out / "data" / "train-00000-of-00001.parquet").stat().st_size > 0
    assert [json.loads(line) for line in (out / "alpaca.jsonl").open()] == EXPECTED["alpaca"]
    # Exporting again replaces the previous export instead of failing or mixing.
    assert export_run(run, {"format": "messages", "hf": False, "parquet": False}) == [
        out / "messages.jsonl", out / "README.md", out / "dropped.jsonl"]


def test_export_settings_reject_unknown_keys_and_bad_values(tmp_path):
    run = make_run_dir(tmp_path)
    with pytest.raises(ConfigError, match="export.formats.*valid keys"):
        export_run(run, {"formats": ["alpaca"]})
    with pytest.raises(ConfigError, match="export.format"):
        export_run(run, {"format": "sharegpt"})
    with pytest.raises(ConfigError, match="validation_fraction"):
        export_run(run, {"validation_fraction": 1.0})
    with pytest.raises(ExportError, match=r"\.jsonl .* or \.json"):
        export(run, {}, Outputs(jsonl=tmp_path / "x.csv"))


def test_hf_folder_that_is_not_a_dataset_is_never_replaced(tmp_path):
    run = make_run_dir(tmp_path)
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    with pytest.raises(ExportError, match="not a dataset selfinstruct wrote"):
        export(run, {}, Outputs(hf=tmp_path / "mine"))
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep me"


def test_export_file_counts_records(tmp_path):
    run = make_run_dir(tmp_path)
    assert export_file(run, tmp_path / "p.jsonl", fmt="prompt_completion") == 4


def test_run_in_progress_torn_last_line_is_skipped_not_repaired(tmp_path):
    run = make_run_dir(tmp_path)
    pool = run / "pool.jsonl"
    with pool.open("a") as f:
        f.write('{"id": "machine_task_3", "instruc')
    size = pool.stat().st_size
    assert machine_tasks(run) == POOL
    assert pool.stat().st_size == size  # the running process owns the file
    pool.write_text(pool.read_text().replace('{"id": "machine_task_1"', '{"id": broken', 1))
    with pytest.raises(ValueError, match=r"pool\.jsonl line 2: not valid JSON \(Expecting value at column 8\); "
                                         r"each line must be one JSON object; fix or delete the line"):
        machine_tasks(run)


def test_cli_export_writes_files_card_and_counts(tmp_path, capsys):
    run = make_run_dir(tmp_path)
    out = tmp_path / "out"
    code = main(["export", str(run), "--format", "prompt_completion", "-o", str(out / "pc.jsonl"),
                 "--hf", str(out / "hf"), "--validation-fraction", "0.34", "--dropped", str(out / "dropped.jsonl")])
    printed = capsys.readouterr().out
    assert code == 0
    # Seed 42 holds out the two-instance task: its instances stay together.
    assert "format prompt_completion: train 2 records (2 tasks), validation 2 records (1 tasks)" in printed
    assert [json.loads(line) for line in (out / "pc.validation.jsonl").open()] == EXPECTED["prompt_completion"][1:3]
    for key, path in [("jsonl", out / "pc.jsonl"), ("jsonl:validation", out / "pc.validation.jsonl"),
                      ("hf", out / "hf"), ("parquet:train", out / "hf" / "data" / "train-00000-of-00001.parquet"),
                      ("card", out / "README.md")]:
        assert f"{key}: {path}\n" in printed
        assert path.exists()
    records = [json.loads(line) for p in ("pc.jsonl", "pc.validation.jsonl") for line in (out / p).open()]
    assert sorted(records, key=json.dumps) == sorted(EXPECTED["prompt_completion"], key=json.dumps)


def test_cli_export_needs_an_output_and_refuses_a_foreign_readme(tmp_path, capsys):
    run = make_run_dir(tmp_path)
    assert main(["export", str(run)]) == 2
    assert "nothing to write" in capsys.readouterr().err
    (tmp_path / "README.md").write_text("# my project\n")
    assert main(["export", str(run), "-o", str(tmp_path / "x.jsonl")]) == 2
    assert "was not written by selfinstruct" in capsys.readouterr().err
    assert (tmp_path / "README.md").read_text() == "# my project\n"
    assert main(["export", str(run), "-o", str(tmp_path / "x.jsonl"), "--no-card"]) == 0


def test_cli_export_takes_settings_from_the_runs_export_section(tmp_path, capsys):
    eval_file = tmp_path / "eval.jsonl"
    eval_file.write_text(json.dumps({"instruction": "Translate the sentence into French.", "input": "",
                                     "output": "x"}) + "\n")
    run = make_run_dir(tmp_path, overrides=[f"export.decontaminate=[{eval_file}]", "export.format=self_instruct"])
    assert main(["export", str(run), "-o", str(tmp_path / "o" / "x.jsonl")]) == 0
    assert "eval_rouge 1" in capsys.readouterr().out
    ids = [json.loads(line)["id"] for line in (tmp_path / "o" / "x.jsonl").open()]
    assert ids == ["machine_task_0", "machine_task_1"]
    # Flags override the section.
    assert main(["export", str(run), "--format", "alpaca", "--no-decontaminate",
                 "-o", str(tmp_path / "o" / "y.jsonl")]) == 0
    assert [json.loads(line) for line in (tmp_path / "o" / "y.jsonl").open()] == EXPECTED["alpaca"]


def test_push_to_hub_without_a_token_names_the_fix(tmp_path, monkeypatch):
    import huggingface_hub

    # As on a machine with neither HF_TOKEN nor a stored login (and never a real push from here).
    monkeypatch.setattr(huggingface_hub, "get_token", lambda: None)
    run = make_run_dir(tmp_path)
    with pytest.raises(ExportError, match="needs a Hugging Face token: set HF_TOKEN"):
        export(run, {}, Outputs(), hub_repo="someone/dataset")


def test_selfinstruct_run_ends_by_printing_the_export_and_report_paths(tmp_path, capsys):
    from test_export_fixtures import REPLIES

    replies = tmp_path / "replies.jsonl"
    replies.write_text("".join(json.dumps({"text": r, "finish_reason": "stop"}) + "\n" for r in REPLIES))
    pipeline = tmp_path / "demo.yaml"
    pipeline.write_text(f"""
name: demo
output_dir: {tmp_path / "outputs"}
seed_tasks: [{SEEDS}]
generation: {{target: 4, requests_per_round: 4}}
backend: {{kind: scripted, replies: {replies}}}
export: {{format: messages, validation_fraction: 0.25}}
""")
    assert main(["run", str(pipeline)]) == 0
    lines = capsys.readouterr().out.splitlines()
    run = tmp_path / "outputs" / "demo"
    assert [line for line in lines if line.startswith(("exported: ", "report: "))] == [
        f"exported: {run / 'export' / 'messages.jsonl'}",
        f"exported: {run / 'export' / 'messages.validation.jsonl'}",
        f"exported: {run / 'export' / 'hf'}",
        f"exported: {run / 'export' / 'data'}",
        f"exported: {run / 'export' / 'README.md'}",
        f"exported: {run / 'export' / 'dropped.jsonl'}",
        f"report: {run / 'report.md'}",
    ]
    import datasets

    hf = datasets.load_from_disk(str(run / "export" / "hf"))
    assert hf.num_rows == {"train": 3, "validation": 1}
    pool = [json.loads(line) for line in (run / "pool.jsonl").open()]
    users = sorted(r["messages"][0]["content"] for split in hf.values() for r in split)
    assert users == sorted(p["instruction"] + (f"\n\n{p['instances'][0]['input']}" if p["instances"][0]["input"]
                                               else "") for p in pool)
    assert (run / "report" / "lengths.png").stat().st_size > 0
