"""Task records and the seed loaders: Self-Instruct JSONL (the original release's file and
ours), Alpaca JSON and JSONL, chat JSONL, and errors that name the file and line."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest

from selfinstruct.records import Instance, Rejection, Task, TaskFormatError, iter_tasks, load_tasks, write_jsonl

REPO = Path(__file__).resolve().parents[1]
ORIGINAL_SEEDS = REPO.parent / "shared" / "data" / "self_instruct_seed_tasks.jsonl"


def write_lines(path: Path, lines: list[str]) -> Path:
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return path


# --------------------------------------------------------------------------- Self-Instruct JSONL

@pytest.fixture(scope="module")
def original_seeds() -> list[Task]:
    if not ORIGINAL_SEEDS.exists():
        pytest.skip(f"{ORIGINAL_SEEDS} is not present (the original Self-Instruct seed file)")
    return load_tasks(ORIGINAL_SEEDS)


def test_original_release_counts(original_seeds: list[Task]) -> None:
    assert len(original_seeds) == 175
    assert sum(t.is_classification is True for t in original_seeds) == 26
    assert sum(t.is_classification is False for t in original_seeds) == 149
    assert sum(t.instances[0].input == "" for t in original_seeds) == 50
    assert [t.id for t in original_seeds] == [f"seed_task_{i}" for i in range(175)]
    assert all(t.origin == "seed" and t.meta == {} for t in original_seeds)


def test_original_release_keeps_both_tasks_with_a_repeated_name(original_seeds: list[Task]) -> None:
    names = Counter(t.name for t in original_seeds)
    assert [n for n, c in names.items() if c > 1] == ["fact_verification"]
    twins = [t for t in original_seeds if t.name == "fact_verification"]
    assert len(twins) == 2 and twins[0].id != twins[1].id and twins[0].instruction != twins[1].instruction


def test_original_release_first_record_exactly(original_seeds: list[Task]) -> None:
    first = json.loads(ORIGINAL_SEEDS.read_text(encoding="utf-8").splitlines()[0])
    t = original_seeds[0]
    assert t.to_dict() == {
        "id": first["id"], "name": first["name"], "instruction": first["instruction"],
        "instances": [{"input": i["input"], "output": i["output"]} for i in first["instances"]],
        "is_classification": first["is_classification"],
    }


def test_bundled_seed_file_matches_its_readme() -> None:
    tasks = load_tasks(REPO / "seed_tasks" / "seed_tasks.jsonl")
    assert len(tasks) == 210
    assert sum(t.is_classification is True for t in tasks) == 37
    assert sum(len(t.instances) for t in tasks) == 235
    assert len({t.name for t in tasks}) == 210


def test_self_instruct_record_fields(tmp_path: Path) -> None:
    path = write_lines(tmp_path / "s.jsonl", [
        json.dumps({"id": "a", "name": "n", "instruction": "Add the numbers.",
                    "instances": [{"input": "1 2", "output": "3"}, {"output": "0"}], "is_classification": False}),
        "",  # blank lines are skipped, not errors
        json.dumps({"instruction": "Is it spam?", "instances": [{"input": None, "output": "no"}]}),
    ])
    a, b = load_tasks(path)
    assert a == Task("a", "Add the numbers.", [Instance("1 2", "3"), Instance("", "0")], name="n",
                     is_classification=False)
    # No id: the record's position in the file (0-based line number) names it.
    assert b == Task("task_2", "Is it spam?", [Instance("", "no")])


# --------------------------------------------------------------------------- Alpaca and chat

ALPACA = [
    {"instruction": "Give three tips for staying healthy.", "input": "", "output": "Eat, sleep, move."},
    {"instruction": "Translate to French.", "input": "Good morning", "output": "Bonjour"},
    {"instruction": "Name a prime.", "output": "7"},  # input may be left out
]


def expected_alpaca() -> list[Task]:
    return [Task("task_0", "Give three tips for staying healthy.", [Instance("", "Eat, sleep, move.")]),
            Task("task_1", "Translate to French.", [Instance("Good morning", "Bonjour")]),
            Task("task_2", "Name a prime.", [Instance("", "7")])]


def test_alpaca_json_list(tmp_path: Path) -> None:
    path = tmp_path / "alpaca_data.json"
    path.write_text(json.dumps(ALPACA, indent=2), encoding="utf-8")
    assert load_tasks(path) == expected_alpaca()


def test_alpaca_jsonl(tmp_path: Path) -> None:
    path = write_lines(tmp_path / "alpaca.jsonl", [json.dumps(r) for r in ALPACA])
    assert load_tasks(path) == expected_alpaca()


def test_chat_jsonl_uses_first_user_and_assistant_turns(tmp_path: Path) -> None:
    path = write_lines(tmp_path / "chat.jsonl", [json.dumps({"messages": [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "What is the capital of Peru?"},
        {"role": "assistant", "content": "Lima."},
        {"role": "user", "content": "And of Chile?"},
    ]})])
    assert load_tasks(path) == [Task("task_0", "What is the capital of Peru?", [Instance("", "Lima.")])]


def test_directory_loads_every_task_file_in_name_order(tmp_path: Path) -> None:
    write_lines(tmp_path / "b.jsonl", [json.dumps({"instruction": "Second file.", "output": "x"})])
    (tmp_path / "a.json").write_text(json.dumps([{"instruction": "First file.", "output": "y"}]), encoding="utf-8")
    (tmp_path / "notes.txt").write_text("not a task file", encoding="utf-8")
    assert [t.instruction for t in load_tasks(tmp_path)] == ["First file.", "Second file."]
    assert [t.instruction for t in load_tasks([tmp_path / "b.jsonl", tmp_path / "a.json"])] == [
        "Second file.", "First file."]


# --------------------------------------------------------------------------- malformed input

GOOD = json.dumps({"instruction": "Name a color.", "output": "red"})


@pytest.mark.parametrize("bad, message", [
    ('{"instruction": "Name a color.", "output": ', r"not valid JSON \(Expecting value at column 44\); "
                                                    r"each line must be one JSON object$"),
    ('["a", "list"]', r"expected a JSON object, got list; each line must be one JSON object$"),
    ('{"prompt": "x", "completion": "y"}', r"unknown record shape with keys \['completion', 'prompt'\]"),
    ('{"instruction": "x", "instances": []}', r"'instances' must be a non-empty list"),
    ('{"instruction": "x", "instances": [{"input": "only input"}]}', r"every instance needs an 'output'"),
    ('{"instruction": "   ", "output": "y"}', r"empty 'instruction'"),
    ('{"messages": [{"role": "user", "content": "hi"}]}', r"needs a user and an assistant turn"),
    ('{"messages": [{"role": "user"}, {"role": "assistant", "content": "x"}]}', r"malformed record"),
])
def test_malformed_line_names_file_and_line(tmp_path: Path, bad: str, message: str) -> None:
    path = write_lines(tmp_path / "seeds.jsonl", [GOOD, GOOD, bad, GOOD])
    with pytest.raises(TaskFormatError, match=rf"^{path} line 3: .*{message}"):
        load_tasks(path)


def test_iteration_yields_good_records_before_the_bad_line(tmp_path: Path) -> None:
    path = write_lines(tmp_path / "seeds.jsonl", [GOOD, "{oops"])
    it = iter_tasks(path)
    assert next(it).instruction == "Name a color."
    with pytest.raises(TaskFormatError, match=rf"^{path} line 2: not valid JSON \(Expecting property name"):
        next(it)


def test_malformed_json_file_names_line_and_record(tmp_path: Path) -> None:
    broken = tmp_path / "data.json"
    broken.write_text('[\n  {"instruction": "a", "output": "b"},\n  {"instruction": \n]\n', encoding="utf-8")
    with pytest.raises(TaskFormatError, match=rf"^{broken} line 4: not valid JSON \(Expecting value at column 1\); "
                                              r"a \.json task file must hold one JSON list of records$"):
        load_tasks(broken)
    bad_record = tmp_path / "records.json"
    bad_record.write_text(json.dumps([ALPACA[0], {"instruction": "x"}]), encoding="utf-8")
    with pytest.raises(TaskFormatError, match=rf"^{bad_record}: record 1: unknown record shape"):
        load_tasks(bad_record)
    not_a_list = tmp_path / "object.json"
    not_a_list.write_text(json.dumps(ALPACA[0]), encoding="utf-8")
    with pytest.raises(TaskFormatError, match="must hold a list of records"):
        load_tasks(not_a_list)


def test_missing_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="task file not found: .*nope.jsonl"):
        load_tasks(tmp_path / "nope.jsonl")


# --------------------------------------------------------------------------- round trips

def test_machine_task_round_trips_through_jsonl(tmp_path: Path) -> None:
    task = Task("machine_task_3", "Sort the list.", [Instance("3 1 2", "1 2 3")], origin="machine",
                meta={"request_id": 9, "most_similar": {"Sort words.": 0.5}})
    seed = Task("seed_task_0", "Say hi.", [Instance("", "hi")], name="greet", is_classification=False)
    assert "origin" not in seed.to_dict() and "meta" not in seed.to_dict()
    path = tmp_path / "out.jsonl"
    assert write_jsonl(path, [task.to_dict(), seed.to_dict()]) == 2
    assert [Task.from_dict(json.loads(line)) for line in path.read_text(encoding="utf-8").splitlines()] == [task, seed]
    assert load_tasks(path) == [task, seed]


def test_write_jsonl_keeps_unicode_readable(tmp_path: Path) -> None:
    path = tmp_path / "u.jsonl"
    write_jsonl(path, [{"instruction": "Traduis « bonjour » en 日本語."}])
    assert path.read_text(encoding="utf-8") == '{"instruction": "Traduis « bonjour » en 日本語."}\n'


def test_rejection_record_layout() -> None:
    r = Rejection("rouge_similar", "filter", raw="Task 9\nInstruction: x", candidate={"instruction": "x"},
                  detail={"score": 0.8})
    assert r.to_dict() == {"stage": "filter", "reason": "rouge_similar", "candidate": {"instruction": "x"},
                           "detail": {"score": 0.8}, "raw": "Task 9\nInstruction: x"}
    assert Rejection("truncated", "parse", raw="Output: cut").to_dict() == {
        "stage": "parse", "reason": "truncated", "raw": "Output: cut"}
