"""Run directories for the export, card, report and hygiene tests, built from code: a
hand-written pool (exact records known in advance), or a real loop over ScriptedBackend
(real stats.json and rejected.jsonl). The tests here check the fixtures' own premises."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

from selfinstruct.backends import ScriptedBackend
from selfinstruct.bootstrap import Bootstrapper
from selfinstruct.config import PipelineConfig, load_config
from selfinstruct.records import Instance, Rejection, Task, load_tasks, write_jsonl
from selfinstruct.rundir import RunDir
from selfinstruct.stats import RunStats

REPO = Path(__file__).resolve().parents[1]
SEEDS = REPO / "seed_tasks" / "seed_tasks.jsonl"
HELDOUT = REPO / "seed_tasks" / "heldout_tasks.jsonl"

# A pool in the shape both generation methods write: one task with two instances and
# is_classification set (the three-step method), the others with one.
POOL = [
    Task("machine_task_0", "Give three synonyms for the word happy.", [Instance("", "joyful, glad, cheerful")],
         origin="machine", meta={"request_id": 0, "generator": "scripted", "in_context": ["seed_task_1"],
                                 "most_similar": {"Name three colours of the rainbow.": 0.3, "Say hello.": 0.125},
                                 "avg_similarity_score": 0.2125}),
    Task("machine_task_1", "Decide whether the sentence is a question or a statement.",
         [Instance("Is it raining?", "question"), Instance("It is raining.", "statement")],
         is_classification=True, origin="machine",
         meta={"request_id": 1, "generator": "scripted", "most_similar": {"Is this a question?": 0.5}}),
    Task("machine_task_2", "Translate the sentence into French.", [Instance("Good morning.", "Bonjour.")],
         is_classification=False, origin="machine",
         meta={"request_id": 2, "generator": "scripted", "most_similar": {}}),
]


def make_run_dir(root: Path, tasks: list[Task] = POOL, name: str = "run", overrides: list[str] = ()) -> Path:
    """A finished-looking run directory with exactly `tasks` in its pool."""
    cfg = load_config(None, [f"output_dir={root}", f"name={name}", f"seed_tasks=[{SEEDS}]",
                             "generation.target=3", *overrides])
    rd = RunDir(cfg.run_dir)
    rd.prepare(cfg)
    write_jsonl(rd.pool, [t.to_dict() for t in tasks])
    RunStats(requests=7, failed_requests=1, retries=2, truncated_replies=1, candidates=6, kept=len(tasks),
             dropped=Counter(rouge_similar=2, too_short=1, no_task_found=1), prompt_tokens=900,
             completion_tokens=300, elapsed_s=12.5, rounds=1, next_request_id=7).save(rd.stats)
    write_jsonl(rd.rejected, [
        {**Rejection("rouge_similar", "filter", raw="x").to_dict(), "request_id": 3},
        {**Rejection("rouge_similar", "filter", raw="y").to_dict(), "request_id": 4},
        {**Rejection("too_short", "filter", raw="z").to_dict(), "request_id": 5},
        {**Rejection("no_task_found", "parse", raw="w").to_dict(), "request_id": 6},
    ])
    return rd.path


def reply(instruction: str, output: str, input: str = "") -> str:
    return f"Instruction: {instruction}\nInput: {input or '<noinput>'}\nOutput: {output}"


# Replies for a real loop: novel tasks, a repeat (rouge_similar), a too-short instruction
# and chatter without a task (a parse failure).
REPLIES = [
    reply("List four vegetables that grow well in cold climates.", "Kale, cabbage, carrots and leeks."),
    reply("List four vegetables that grow well in cold climates.", "Kale, cabbage, carrots and leeks."),
    reply("Summarise this paragraph in one sentence.", "The council approved the new bike lanes.",
          "The city council voted on Monday to approve new bike lanes on Main Street after months of debate."),
    reply("Sort numbers.", "1, 2, 3"),
    "Sure, I would be glad to help with that.",
    reply("Explain why the sky looks blue during the day.", "Air scatters blue light more than red light."),
    reply("Suggest a name for a bakery that sells only bread.", "The Daily Loaf"),
    reply("Convert 5 kilometres to miles, rounding to two decimals.", "3.11 miles"),
]


def grow_run(root: Path, target: int = 5, requests_per_round: int = 3, on_progress=None,
             name: str = "grown") -> tuple[Path, PipelineConfig]:
    """Run the real loop over scripted replies until `target` tasks are in the pool."""
    cfg = load_config(None, [f"output_dir={root}", f"name={name}", f"seed_tasks=[{SEEDS}]",
                             f"generation.target={target}", f"generation.requests_per_round={requests_per_round}",
                             "backend.kind=scripted", "backend.replies=unused.jsonl"])
    rd = RunDir(cfg.run_dir)
    rd.prepare(cfg)
    boot = Bootstrapper(cfg, ScriptedBackend(REPLIES), load_tasks(SEEDS), rd, on_progress=on_progress)
    boot.run()
    return rd.path, cfg


def test_grown_run_has_kept_and_dropped_tasks(tmp_path):
    run, _ = grow_run(tmp_path)
    stats = RunStats.load(run / "stats.json")
    assert stats.kept == 5
    # The repeat is a near-duplicate, "Sort numbers." is too short, the chatter holds no task.
    assert stats.dropped == Counter(rouge_similar=1, too_short=1, no_task_found=1)


def test_hand_written_run_dir_reads_back(tmp_path):
    run = make_run_dir(tmp_path)
    from selfinstruct.export import machine_tasks

    assert machine_tasks(run) == POOL
