"""Self-Instruct's three-step method on a scripted backend: the prompts each step sends,
what each reply becomes, every instance filter's decision in the pool, the rejects file
and stats.json, and the export of the result.

The script below answers by prompt: an instruction request by its request id, a
classification or instance request by the instruction it names. Its table says what
each instruction is meant to exercise.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest

from selfinstruct.backends.base import Reply, Request
from selfinstruct.backends.scripted import ScriptedBackend
from selfinstruct.bootstrap import Bootstrapper, make_bootstrapper
from selfinstruct.config import ConfigError, load_config
from selfinstruct.export import Outputs, alpaca_records, export
from selfinstruct.records import Instance, Task, load_tasks
from selfinstruct.rundir import RunDir
from selfinstruct.self_instruct_method import SelfInstructBootstrapper

REPO = Path(__file__).resolve().parents[1]
SEEDS = str(REPO / "seed_tasks" / "seed_tasks.jsonl")

CLF_ANIMAL = "Classify the animal as a mammal or a reptile."
POEM = "Compose a short poem about the harbor at dawn."
LABEL_Q = "Label the sentence as a question or a statement."
SPANISH = "Translate the phrase into Spanish."
SORT = "Sort the numbers from smallest to largest."
SUMMARY = "Summarize the meeting notes in two sentences."
CAPITAL = "Name the capital city of the given country."
VOWELS = "Count the vowels in the given word."
BACKWARDS = "Spell the given word backwards, letter by letter."

# Instruction requests, by request id: the instructions each reply lists.
INSTRUCTION_REPLIES = {
    0: [CLF_ANIMAL, POEM],
    1: [LABEL_Q, SPANISH],
    2: ["Do it now.", SORT],                                   # too_short
    3: [SUMMARY, "Describe the image in detail, please."],     # blocked_keyword
    4: ["Classify the animal as a mammal or a reptile, please.", CAPITAL],   # rouge_similar to a pool task
    5: ["Label the sentence as a question or a statement, please.",         # rouge_similar to a REJECTED task
        VOWELS, BACKWARDS],                                    # the third one is over the target
}

# Per instruction: (classification answer, instance reply, finish_reason). Output-first
# replies continue "Example 1\nClass label:", input-first ones "Example 1\nInput:".
INSTANCE_SCRIPT = {
    CLF_ANIMAL: ("Yes", " mammal\nInput: dog\n\nExample 2\nClass label: reptile\nInput: snake\n\n"
                        "Example 3\nClass label: mammal\nInput: dog", "stop"),          # duplicate
    POEM: ("No", " <noinput>\nOutput: Gulls wake the harbor.\n\nExample 2\nInput: <noinput>\n"
                 "Output: Boats hum at first light.\n\nExample 3\nInput: <noinput>\nOutput: Mist on the",
           "length"),                                                                 # truncated
    LABEL_Q: ("Maybe", " Is it raining?\nOutput: question\n\nExample 2\nInput: Is it raining?\n"
                       "Output: statement", "stop"),                                   # unparseable; conflict
    SPANISH: ("No.", " good morning\nOutput: buenos días\n\nExample 2\nInput: thank you\nOutput: thank you\n\n"
                     "Example 3\nInput: Phrase:\nOutput: frase\n\nExample 4\nInput: cat\nOutput:", "stop"),
    SORT: ("No", " 3, 1, 2\nOutput: 1, 2, 3\n" + "".join(
        f"\nExample {i}\nInput: {i}, {i - 1}\nOutput: {i - 1}, {i}\n" for i in range(2, 8)), "stop"),  # over_limit
    SUMMARY: ("No", " I am not sure what to write here.", "stop"),                    # nothing parsed
    CAPITAL: ("no", " France\nOutput: Paris\n\nExample 2\nInput: Japan\nOutput: Tokyo", "stop"),
    VOWELS: ("No", " banana\nOutput: 3", "stop"),
    BACKWARDS: ("No", " cat\nOutput: t-a-c", "stop"),
}


def step_of(req: Request) -> str:
    text = req.prompt.as_text()
    if text.rstrip().endswith("Classification:") or text.rstrip().endswith("Is this a classification task?"):
        return "classification"
    if req.prompt.reply_prefix.startswith("Example 1") or "Write up to" in text.rsplit("Task:", 1)[-1]:
        return "instances"
    return "instructions"


def asked_instruction(req: Request) -> str:
    """The instruction a classification or instance prompt is about: the last "Task:" line."""
    return req.prompt.as_text().rsplit("Task: ", 1)[1].split("\n", 1)[0].strip()


def scenario_reply(req: Request) -> Reply:
    step = step_of(req)
    if step == "instructions":
        n = len(req.meta["examples"]) + 1
        items = INSTRUCTION_REPLIES[req.id]
        text = "\n".join(f"Task {n + i}: {ins}" for i, ins in enumerate(items))
        # A prompt that ends with "Task N:" (plain, or a prefilled chat reply) gets the rest.
        prefix = req.prompt.reply_prefix
        return Reply(text[len(prefix):] if prefix and text.startswith(prefix) else text)
    answer, reply, finish = INSTANCE_SCRIPT[asked_instruction(req)]
    if step == "classification":
        return Reply(answer)
    if not req.prompt.reply_prefix:  # no prefill: the model writes the header itself
        head = "Example 1\nClass label:" if "classification task." in req.prompt.as_text().rsplit("Task:", 1)[1] \
            else "Example 1\nInput:"
        reply = head + reply
    return Reply(reply, finish)


def make_cfg(tmp_path: Path, *overrides: str):
    return load_config(None, [f"output_dir={tmp_path}", f"seed_tasks=[{SEEDS}]", "generation.method=self_instruct",
                              "generation.target=6", "generation.num_prompt_tasks=5",
                              "generation.num_machine_tasks=2", "generation.num_tasks_to_generate=2",
                              "generation.requests_per_round=2", "generation.prompt_style=plain", *overrides])


def run_scenario(tmp_path: Path, *overrides: str, backend=None) -> tuple[SelfInstructBootstrapper, ScriptedBackend]:
    cfg = make_cfg(tmp_path, *overrides)
    rd = RunDir(cfg.run_dir)
    rd.prepare(cfg)
    backend = backend or ScriptedBackend(scenario_reply)
    boot = make_bootstrapper(cfg, backend, load_tasks(cfg.seed_tasks), rd)
    boot.run()
    return boot, backend


def read(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


@pytest.fixture(scope="module")
def scenario(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("si")
    boot, backend = run_scenario(tmp)
    return boot, backend, RunDir(tmp / "default")


# --------------------------------------------------------------------------- the run

def test_factory_picks_the_class_by_method(tmp_path):
    backend = ScriptedBackend(["x"])
    seeds = load_tasks(SEEDS)
    assert type(make_bootstrapper(make_cfg(tmp_path), backend, seeds)) is SelfInstructBootstrapper
    alpaca = make_cfg(tmp_path, "generation.method=alpaca")
    assert type(make_bootstrapper(alpaca, backend, seeds)) is Bootstrapper


def test_steps_run_in_rounds_and_unfinished_tasks_first(scenario):
    _, backend, _ = scenario
    steps = [step_of(r) for r in backend.prompts]
    # Round 1: 2 instruction requests -> 4 instructions, each classified, then given instances.
    # Round 2: 2 requests -> 2 accepted (2 dropped by filters). Round 3: 2 requests -> 2 accepted.
    assert steps == (["instructions"] * 2 + ["classification"] * 4 + ["instances"] * 4
                     + ["instructions"] * 2 + ["classification"] * 2 + ["instances"] * 2
                     + ["instructions"] * 2 + ["classification"] * 2 + ["instances"] * 2)
    assert [r.id for r in backend.prompts if step_of(r) == "instructions"] == [0, 1, 2, 3, 4, 5]
    assert [asked_instruction(r) for r in backend.prompts if step_of(r) == "classification"] == [
        CLF_ANIMAL, POEM, LABEL_Q, SPANISH, SORT, SUMMARY, CAPITAL, VOWELS]


def test_instruction_prompts_sample_seeds_and_pool_tasks(scenario):
    _, backend, rd = scenario
    ins = [r for r in backend.prompts if step_of(r) == "instructions"]
    assert all(r.prompt.text.endswith("Task 6:") for r in ins)
    assert all(not any(e.startswith("machine_") for e in r.meta["examples"]) for r in ins[:2])
    pool_ids = {t["id"]: t["instruction"] for t in read(rd.pool)}
    # Once the pool has tasks, 2 of the 5 in-context tasks are machine-made, shown by instruction.
    for r in ins[2:]:
        machine = [e for e in r.meta["examples"] if e.startswith("machine_")]
        assert len(machine) == 2 and all(pool_ids[e] in r.prompt.text for e in machine)


def test_instance_prompts_are_output_first_only_for_classification_tasks(scenario):
    _, backend, _ = scenario
    inst = {asked_instruction(r): r for r in backend.prompts if step_of(r) == "instances"}
    assert inst[CLF_ANIMAL].prompt.reply_prefix == "Example 1\nClass label:"
    for ins in (POEM, LABEL_Q, SPANISH, SORT, SUMMARY, CAPITAL, VOWELS):  # LABEL_Q: "Maybe" counts as no
        assert inst[ins].prompt.reply_prefix == "Example 1\nInput:", ins
    seeds = {t.id: t for t in load_tasks(SEEDS)}
    for ins, r in inst.items():
        shown = [seeds[i] for i in r.meta["examples"]]
        assert len(shown) == 3 and all(bool(t.is_classification) == (ins == CLF_ANIMAL) for t in shown)
        assert all(t.instruction in r.prompt.text for t in shown)


def test_classification_prompts_are_greedy_short_and_over_labelled_seeds(scenario):
    boot, backend, _ = scenario
    assert (boot.classify_params.temperature, boot.classify_params.max_new_tokens) == (0.0, 3)
    seeds = {t.id: t for t in load_tasks(SEEDS)}
    for r in (r for r in backend.prompts if step_of(r) == "classification"):
        shown = [seeds[i] for i in r.meta["examples"]]
        assert len(shown) == 12 and r.prompt.text.count("\nClassification: ") == 12
        # Each example is shown with its own seed label, in order.
        labels = [line.split(": ")[1] for line in r.prompt.text.splitlines() if line.startswith("Classification: ")]
        assert labels == ["Yes" if t.is_classification else "No" for t in shown]
    # By similarity: the classification task's nearest seeds are classification tasks.
    animal = next(r for r in backend.prompts if step_of(r) == "classification" and asked_instruction(r) == CLF_ANIMAL)
    assert seeds[animal.meta["examples"][-1]].is_classification is True


def test_fixed_classification_examples_are_one_balanced_set(tmp_path):
    _, backend = run_scenario(tmp_path, "generation.classify_examples_by=fixed", "generation.max_requests=1")
    clf = [r for r in backend.prompts if step_of(r) == "classification"]
    assert len({tuple(r.meta["examples"]) for r in clf}) == 1
    assert clf[0].prompt.text.count("Classification: Yes") == 6


def test_pool_holds_tasks_with_their_filtered_instances(scenario):
    _, _, rd = scenario
    pool = {t["id"]: Task.from_dict(t) for t in read(rd.pool)}
    got = {t.instruction: (t.is_classification, [(i.input, i.output) for i in t.instances]) for t in pool.values()}
    assert got == {
        CLF_ANIMAL: (True, [("dog", "mammal"), ("snake", "reptile")]),
        POEM: (False, [("", "Gulls wake the harbor."), ("", "Boats hum at first light.")]),
        SPANISH: (False, [("good morning", "buenos días")]),
        SORT: (False, [("3, 1, 2", "1, 2, 3")] + [(f"{i}, {i - 1}", f"{i - 1}, {i}") for i in range(2, 6)]),
        CAPITAL: (False, [("France", "Paris"), ("Japan", "Tokyo")]),
        VOWELS: (False, [("banana", "3")]),
    }
    assert all(t.origin == "machine" for t in pool.values())
    # Ids are given at step 1, so the two rejected tasks leave gaps.
    assert sorted(pool, key=lambda i: int(i.rsplit("_", 1)[1])) == [
        "machine_task_0", "machine_task_1", "machine_task_3", "machine_task_4", "machine_task_6", "machine_task_7"]
    animal = pool["machine_task_0"]
    assert animal.meta["classification_answer"] == "Yes" and animal.meta["instances_parsed"] == 3
    assert animal.meta["instances_dropped"] == {"duplicate": 1} and animal.meta["request_id"] == 0
    assert "most_similar" in animal.meta and len(animal.meta["in_context"]) == 5


def test_rejects_file_names_every_decision(scenario):
    _, _, rd = scenario
    rej = read(rd.rejected)
    by_reason = Counter(r["reason"] for r in rej)
    assert by_reason == {
        "too_short": 1, "blocked_keyword": 1, "rouge_similar": 2,
        "instance:duplicate": 1, "instance:truncated": 1, "instance:conflicting_outputs": 2,
        "instance:input_equals_output": 1, "instance:ends_with_colon": 1, "instance:empty_output": 2,
        "instance:over_limit": 2, "task:conflicting_outputs": 1, "task:no_valid_instances": 1,
    }
    similar = [r for r in rej if r["reason"] == "rouge_similar"]
    # The rejected LABEL_Q task's instruction stayed in the index, so its near-copy is refused.
    assert [r["detail"]["most_similar"] for r in similar] == [CLF_ANIMAL, LABEL_Q]
    colon = next(r for r in rej if r["reason"] == "instance:ends_with_colon")
    assert colon["candidate"] == {"task_id": "machine_task_3", "instruction": SPANISH, "input": "Phrase:",
                                  "output": "frase"}
    assert colon["stage"] == "instances" and colon["raw"] == "Example 3\nInput: Phrase:\nOutput: frase"
    # Chatter after "Input:" reads as an input without output: dropped, and the task with it.
    summary = next(r for r in rej if r["reason"] == "task:no_valid_instances")
    assert summary["raw"] == " I am not sure what to write here."
    assert summary["detail"] == {"parsed": 1, "dropped": {"empty_output": 1}}


def test_stats_count_each_step_classification_share_and_each_instance_filter(scenario):
    _, _, rd = scenario
    s = json.loads(rd.stats.read_text())
    assert s["kept"] == 6 and s["candidates"] == 13 and s["requests"] == 6 + 8 + 8
    assert s["extra"]["requests_by_step"] == {"instructions": 6, "classification": 8, "instances": 8}
    assert s["extra"]["classification"] == {"yes": 1, "no": 7, "unparseable": 1, "unparseable_counted_as": "no",
                                            "share": 0.125, "share_in_pool": round(1 / 6, 4)}
    assert s["extra"]["instance_filters"] == {
        "duplicate": 1, "truncated": 1, "conflicting_outputs": 2, "input_equals_output": 1, "ends_with_colon": 1,
        "empty_output": 2, "over_limit": 2}
    assert s["extra"]["tasks_rejected"] == {"conflicting_outputs": 1, "no_valid_instances": 1}
    assert s["extra"]["instances"] == {"parsed": 23, "kept": 13, "per_pool_task": round(13 / 6, 3)}
    assert s["extra"]["over_target"] == 1 and s["extra"]["pending"] == 0
    # Instance and task reasons are in the general counter too, prefixed, so totals add up.
    assert s["dropped"]["instance:over_limit"] == 2 and s["dropped"]["task:conflicting_outputs"] == 1
    assert s["total_dropped"] == sum(Counter(r["reason"] for r in read(rd.rejected)).values())


def test_step_log_records_each_instruction_once_per_step(scenario):
    _, _, rd = scenario
    recs = read(rd.path / "instructions.jsonl")
    ins = [t for r in recs if r["step"] == "instructions" for t in r["tasks"]]
    assert [r["request_id"] for r in recs if r["step"] == "instructions"] == [0, 1, 2, 3, 4, 5]
    assert [t["id"] for t in ins] == [f"machine_task_{i}" for i in range(8)]
    clf = [r["id"] for r in recs if r["step"] == "classification"]
    assert clf == [t["id"] for t in ins]
    assert [(r["id"], r["reason"]) for r in recs if r["step"] == "rejected"] == [
        ("machine_task_2", "conflicting_outputs"), ("machine_task_5", "no_valid_instances")]


def test_export_one_record_per_instance_or_per_task(scenario, tmp_path):
    _, _, rd = scenario
    tasks = [Task.from_dict(d) for d in read(rd.pool)]
    def export_as(fmt: str) -> list[dict]:
        # Export hygiene (near-duplicate instances across tasks) is the export stage's own
        # business and tested there; here the records must mirror the pool exactly.
        export(rd.path, {"format": fmt, "dedup": False}, Outputs(jsonl=tmp_path / f"{fmt}.jsonl"))
        return read(tmp_path / f"{fmt}.jsonl")

    alpaca = export_as("alpaca")
    assert len(alpaca) == 13
    assert alpaca == list(alpaca_records(tasks))
    assert alpaca[:2] == [{"instruction": CLF_ANIMAL, "input": "dog", "output": "mammal"},
                          {"instruction": CLF_ANIMAL, "input": "snake", "output": "reptile"}]
    per_task = export_as("self_instruct")
    assert [(r["instruction"], r["is_classification"], len(r["instances"])) for r in per_task] == [
        (CLF_ANIMAL, True, 2), (POEM, False, 2), (SPANISH, False, 1), (SORT, False, 5), (CAPITAL, False, 2),
        (VOWELS, False, 1)]
    assert per_task[0]["instances"] == [{"input": "dog", "output": "mammal"}, {"input": "snake", "output": "reptile"}]
    # The per-task file is in the seed schema: it can seed another run.
    assert [t.instruction for t in load_tasks(tmp_path / "self_instruct.jsonl")] == [t.instruction for t in tasks]


# --------------------------------------------------------------------------- styles, backends, errors

class PrefillingBackend(ScriptedBackend):
    supports_prefill = True


@pytest.mark.parametrize("backend_cls", [ScriptedBackend, PrefillingBackend])
def test_chat_style_with_and_without_prefill_gives_the_same_pool(tmp_path, scenario, backend_cls):
    _, _, plain_rd = scenario
    boot, backend = run_scenario(tmp_path, "generation.prompt_style=chat", backend=backend_cls(scenario_reply))
    prefill = backend_cls is PrefillingBackend
    assert all(r.prompt.messages is not None for r in backend.prompts)
    assert all(bool(r.prompt.prefill) == (prefill and step_of(r) != "classification") for r in backend.prompts)
    chat_pool = [(t.instruction, t.is_classification, t.instances) for t in boot.pool.machine]
    plain_pool = [(d["instruction"], d["is_classification"], [Instance(**i) for i in d["instances"]])
                  for d in read(plain_rd.pool)]
    assert chat_pool == plain_pool


def test_instance_step_may_use_its_own_prompt_style(tmp_path, scenario):
    _, _, plain_rd = scenario
    boot, backend = run_scenario(tmp_path, "generation.instance_prompt_style=chat",
                                 backend=PrefillingBackend(scenario_reply))
    styles = {step_of(r): ("chat" if r.prompt.messages is not None else "plain") for r in backend.prompts}
    assert styles == {"instructions": "plain", "classification": "plain", "instances": "chat"}
    assert [t.to_dict()["instances"] for t in boot.pool.machine] == [d["instances"] for d in read(plain_rd.pool)]

    class PlainOnly(ScriptedBackend):
        supports_chat = False

    with pytest.raises(ConfigError, match="instance_prompt_style=chat.*does not take chat prompts"):
        SelfInstructBootstrapper(make_cfg(tmp_path, "generation.instance_prompt_style=chat"),
                                 PlainOnly(["x"]), load_tasks(SEEDS))


def test_failed_requests_reject_the_task_and_are_counted(tmp_path):
    def reply(req):
        if step_of(req) == "instances" and asked_instruction(req) == POEM:
            return Reply("", "error", error="HTTP 500")
        if step_of(req) == "classification" and asked_instruction(req) == SPANISH:
            return Reply("", "error", error="timeout")
        return scenario_reply(req)

    boot, backend = run_scenario(tmp_path, "generation.target=4", "generation.max_requests=3",
                                 backend=ScriptedBackend(reply))
    s = boot.stats
    assert s.failed_requests == 2 and s.extra["tasks_rejected"]["request_failed"] == 2
    assert [t.instruction for t in boot.pool.machine] == [CLF_ANIMAL, SORT]
    # SPANISH was never sent for instances: its classification failed.
    assert SPANISH not in [asked_instruction(r) for r in backend.prompts if step_of(r) == "instances"]
    assert boot.stop.reason == "max_requests"


def test_max_requests_stops_after_finishing_what_was_started(tmp_path):
    boot, backend = run_scenario(tmp_path, "generation.max_requests=1")
    assert [step_of(r) for r in backend.prompts] == ["instructions"] + ["classification"] * 2 + ["instances"] * 2
    assert boot.stop.reason == "max_requests" and boot.pool.machine_count == 2


def test_seeds_without_classification_labels_are_refused_with_the_fix(tmp_path):
    seeds = [Task("a", "Write a poem about tea.", [Instance("", "Tea.")]),
             Task("b", "Name a colour.", [Instance("", "red")], is_classification=False)]
    with pytest.raises(ConfigError, match="is_classification.*1 false and 1 unlabelled.*method: alpaca"):
        SelfInstructBootstrapper(make_cfg(tmp_path), ScriptedBackend(["x"]), seeds)


def test_bad_method_settings_are_refused(tmp_path):
    with pytest.raises(ConfigError, match="classification_prompt_share"):
        SelfInstructBootstrapper(make_cfg(tmp_path, "generation.classification_prompt_share=1.5"),
                                 ScriptedBackend(["x"]), load_tasks(SEEDS))


def test_classification_only_prompts_show_classification_seeds(tmp_path):
    boot, backend = run_scenario(tmp_path, "generation.classification_prompt_share=1.0", "generation.target=2",
                                 "generation.max_requests=1")
    seeds = {t.id: t for t in load_tasks(SEEDS)}
    (req,) = [r for r in backend.prompts if step_of(r) == "instructions"]
    assert req.meta["classification_prompt"] is True
    assert req.prompt.text.startswith("Below is a numbered list of classification tasks")
    assert all(seeds[e].is_classification for e in req.meta["examples"])
    assert all(t.meta["classification_prompt"] is True for t in boot.pool.machine)
