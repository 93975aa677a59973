"""Export hygiene: decontamination removes the planted contaminated tasks and nothing else;
de-duplication removes exact and near-duplicate instances across tasks, with counts."""

from __future__ import annotations

import json

import pytest
from rouge_score import rouge_scorer
from test_export_fixtures import HELDOUT, SEEDS, make_run_dir

from selfinstruct.decontaminate import Decontaminator, clean
from selfinstruct.export import Outputs, export
from selfinstruct.records import Instance, Task, load_tasks

ROUGE = rouge_scorer.RougeScorer(["rougeL"])

EVAL = [
    "Read the customer complaint below and write a polite reply that apologises, explains the delay and offers "
    "a discount code.",
    "Name the capital city of the given country.",
]
# Contaminated: shares 13 words "read the customer ... apologises, explains" with EVAL[0], but
# its ROUGE-L is low, so only the n-gram test catches it.
NGRAM_PLANT = ("For a training course on handling angry shoppers in busy retail stores, read the customer complaint "
               "below and write a polite reply that apologises, explains the delay and stays under fifty words.")
# Contaminated: a reordering of EVAL[1]; too short for any 13-gram, caught by ROUGE-L.
ROUGE_PLANT = "Name the capital city of the country given."
CLEAN = [
    "Give three synonyms for the word happy.",
    # Shares a run of 12 words with EVAL[0], one short of the n-gram length.
    "Our manager wants us to read the customer complaint below and write a polite reply that apologises, but only "
    "in French, in a formal tone, signed by the team lead today.",
    "Name a famous river in the given country.",  # ROUGE-L 0.5 with EVAL[1]
]


def task(i: int, instruction: str, *instances: tuple[str, str]) -> Task:
    return Task(f"t{i}", instruction, [Instance(a, b) for a, b in instances or [("", "out")]], origin="machine")


def rouge(a: str, b: str) -> float:
    return ROUGE.score(a, b)["rougeL"].fmeasure


def test_fixture_premises_hold_by_rouge_score():
    assert rouge(EVAL[0], NGRAM_PLANT) < 0.7
    assert rouge(EVAL[1], ROUGE_PLANT) > 0.7
    assert all(rouge(e, c) <= 0.7 for e in EVAL for c in CLEAN)


def test_planted_tasks_are_removed_and_nothing_else(tmp_path):
    tasks = [task(0, CLEAN[0]), task(1, NGRAM_PLANT), task(2, CLEAN[1]), task(3, ROUGE_PLANT), task(4, CLEAN[2])]
    eval_file = tmp_path / "eval.json"  # Alpaca's JSON list format
    eval_file.write_text(json.dumps([{"instruction": e, "input": "", "output": "x"} for e in EVAL]))
    decon = Decontaminator.from_files([eval_file])
    kept, rep = clean(tasks, decon)
    assert [t.id for t in kept] == ["t0", "t2", "t4"]
    assert rep.to_dict()["dropped"] == {"eval_ngram": 1, "eval_rouge": 1, "exact_duplicate": 0,
                                        "near_duplicate": 0, "no_instances_left": 0}
    assert [(d["task_id"], d["reason"], d["eval_instruction"]) for d in rep.dropped] == [
        ("t1", "eval_ngram", EVAL[0]), ("t3", "eval_rouge", EVAL[1])]
    assert rep.dropped[0]["ngram"] == ("read the customer complaint below and write a polite reply that apologises "
                                       "explains")
    assert rep.dropped[1]["score"] == pytest.approx(rouge(EVAL[1], ROUGE_PLANT))


def test_ngram_length_is_the_boundary():
    words = "alpha bravo charlie delta echo foxtrot golf hotel india juliet kilo lima mike november".split()
    eval_instruction = " ".join(words)  # 14 words
    filler = "zulu yankee xray whiskey victor uniform tango sierra romeo quebec papa oscar"
    shares_13 = f"{filler} {' '.join(words[:13])} {filler}"
    shares_12 = f"{filler} {' '.join(words[:12])} {filler}"
    # ROUGE-L is switched off (threshold 1.0 cannot be exceeded) to test the n-gram alone.
    d = Decontaminator([eval_instruction], ngram=13, rouge_threshold=1.0)
    assert d.check(shares_13)["reason"] == "eval_ngram"
    assert d.check(shares_12) is None
    assert Decontaminator([eval_instruction], ngram=12, rouge_threshold=1.0).check(shares_12)["reason"] == "eval_ngram"


def test_the_seed_set_is_clean_against_the_heldout_set_until_heldout_tasks_are_planted():
    seeds = load_tasks(SEEDS)
    heldout = load_tasks(HELDOUT)  # Self-Instruct JSONL format
    decon = Decontaminator.from_files([HELDOUT])
    kept, rep = clean(seeds, decon, dedup=False)
    assert len(kept) == len(seeds) and not rep.dropped

    planted = [
        Task("plant_verbatim", heldout[0].instruction, heldout[0].instances),
        Task("plant_recased", heldout[5].instruction.upper().rstrip(".") + "!", heldout[5].instances),
        Task("plant_prefixed", "Quick one: " + heldout[9].instruction, heldout[9].instances),
    ]
    mixed = seeds[:100] + planted[:2] + seeds[100:] + planted[2:]
    kept, rep = clean(mixed, decon, dedup=False)
    assert [t.id for t in kept] == [t.id for t in seeds]
    assert sorted(d["task_id"] for d in rep.dropped) == sorted(t.id for t in planted)


SENTIMENT = "Classify the sentiment of the review."


def test_exact_and_near_duplicate_instances_across_tasks():
    tasks = [
        task(0, SENTIMENT, ("I love it", "positive"), ("I hate it", "negative"), ("I  love it", "positive")),
        task(1, "classify the  sentiment of the REVIEW.", ("i love it", "pos")),  # same text, other case/spaces
        task(2, "Classify the sentiment of the short review.", ("I love it", "positive")),
        task(3, "Classify the sentiment of the following product review.", ("Terrible battery.", "negative")),
    ]
    # What rouge-score says about instruction + input, the near-duplicate test's text:
    assert rouge(f"{SENTIMENT}\nI love it", "Classify the sentiment of the short review.\nI love it") > 0.9
    assert rouge(f"{SENTIMENT}\nI love it", "Classify the sentiment of the following product review.\n"
                                           "Terrible battery.") < 0.9
    kept, rep = clean(tasks, near_duplicate_threshold=0.9)
    # Task 0's two different inputs stay (one task's instances are not near duplicates of each
    # other); its repeated input goes; tasks 1 and 2 lose their only instance.
    assert [(t.id, [i.input for i in t.instances]) for t in kept] == [
        ("t0", ["I love it", "I hate it"]), ("t3", ["Terrible battery."])]
    assert rep.to_dict() == {"tasks_in": 4, "instances_in": 6, "tasks_out": 2, "instances_out": 3,
                             "dropped": {"eval_ngram": 0, "eval_rouge": 0, "exact_duplicate": 2,
                                         "near_duplicate": 1, "no_instances_left": 2}}
    near = [d for d in rep.dropped if d["reason"] == "near_duplicate"]
    assert near[0]["task_id"] == "t2" and near[0]["duplicate_of"] == "t0"
    assert near[0]["score"] == pytest.approx(rouge(f"{SENTIMENT}\nI love it",
                                                   "Classify the sentiment of the short review.\nI love it"))
    assert tasks[0].instances[2].input == "I  love it"  # the caller's tasks are not modified

    kept, rep = clean(tasks, near_duplicate_threshold=1.0)  # exact duplicates only
    assert [t.id for t in kept] == ["t0", "t2", "t3"] and rep.count("near_duplicate") == 0
    kept, rep = clean(tasks, dedup=False)
    assert kept == tasks and not rep.dropped


def test_export_reports_hygiene_counts_and_writes_each_drop(tmp_path):
    pool = [task(0, CLEAN[0]), task(1, NGRAM_PLANT), task(2, ROUGE_PLANT), task(3, CLEAN[0].lower())]
    run = make_run_dir(tmp_path, pool)
    eval_file = tmp_path / "eval.jsonl"
    eval_file.write_text("".join(json.dumps({"instruction": e, "instances": [{"input": "", "output": "x"}]}) + "\n"
                                 for e in EVAL))
    res = export(run, {"decontaminate": [str(eval_file)]},
                 Outputs(jsonl=tmp_path / "x.jsonl", dropped=tmp_path / "dropped.jsonl"))
    assert res.hygiene.to_dict()["dropped"] == {"eval_ngram": 1, "eval_rouge": 1, "exact_duplicate": 1,
                                                "near_duplicate": 0, "no_instances_left": 1}
    assert [json.loads(line)["instruction"] for line in (tmp_path / "x.jsonl").open()] == [CLEAN[0]]
    drops = [json.loads(line) for line in (tmp_path / "dropped.jsonl").open()]
    assert [(d["task_id"], d["reason"]) for d in drops] == [
        ("t1", "eval_ngram"), ("t2", "eval_rouge"), ("t3", "exact_duplicate"), ("t3", "no_instances_left")]


def test_bad_settings_and_empty_eval_files_are_refused(tmp_path):
    with pytest.raises(ValueError, match="n-gram length"):
        Decontaminator(EVAL, ngram=0)
    with pytest.raises(ValueError, match="threshold"):
        clean([], near_duplicate_threshold=0)
    (tmp_path / "empty.jsonl").write_text("")
    with pytest.raises(ValueError, match="hold no tasks"):
        Decontaminator.from_files([tmp_path / "empty.jsonl"])
    with pytest.raises(FileNotFoundError):
        Decontaminator.from_files([tmp_path / "missing.jsonl"])
