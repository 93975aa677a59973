"""The reply parser: the shapes small models write, malformed replies kept with a reason,
truncated replies losing only their last task, and (property-based) it never raises."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from selfinstruct import parsing
from selfinstruct.parsing import parse_reply
from selfinstruct.prompts import format_task
from selfinstruct.records import Instance, Task, load_tasks

REPO = Path(__file__).resolve().parents[1]


def triples(text: str, finish_reason: str = "stop", prefix: str = "") -> list[tuple[str, str, str]]:
    return [(c.instruction, c.input, c.output) for c in parse_reply(text, finish_reason, prefix).candidates]


def reasons(text: str, finish_reason: str = "stop", prefix: str = "") -> list[tuple[str, str]]:
    return [(r.reason, r.raw) for r in parse_reply(text, finish_reason, prefix).rejections]


# --------------------------------------------------------------------------- accepted shapes

def test_our_own_format_with_several_tasks() -> None:
    reply = ("Task 9\nInstruction: Name three primes.\nInput: <noinput>\nOutput: 2, 3 and 5.\n\n"
             "Task 10\nInstruction: Add the numbers.\nInput: 2 and 3\nOutput: 5\n")
    result = parse_reply(reply)
    assert [(c.instruction, c.input, c.output) for c in result.candidates] == [
        ("Name three primes.", "", "2, 3 and 5."), ("Add the numbers.", "2 and 3", "5")]
    assert [c.raw for c in result.candidates] == [
        "Task 9\nInstruction: Name three primes.\nInput: <noinput>\nOutput: 2, 3 and 5.",
        "Task 10\nInstruction: Add the numbers.\nInput: 2 and 3\nOutput: 5"]
    assert result.rejections == []


@pytest.mark.parametrize("reply", [
    "**Instruction:** Sort the list.\n**Input:** 3, 1, 2\n**Output:** 1, 2, 3",
    "__Instruction:__ Sort the list.\n__Input:__ 3, 1, 2\n__Output:__ 1, 2, 3",
    "### Instruction:\nSort the list.\n### Input:\n3, 1, 2\n### Output:\n1, 2, 3",
    "1. Instruction: Sort the list.\n1. Input: 3, 1, 2\n1. Output: 1, 2, 3",
    "**Task 4**\ninstruction: Sort the list.\nINPUT: 3, 1, 2\nOutput : 1, 2, 3",
    "Task 4: Sort the list.\nInput: 3, 1, 2\nOutput: 1, 2, 3",
    "Task #4 - Sort the list.\nInput: 3, 1, 2\nOutput: 1, 2, 3",
    "Instructions: Sort the list.\nInput: 3, 1, 2\nOutput：1, 2, 3",
    "Instruction: \"Sort the list.\"\nInput: `3, 1, 2`\nOutput: **1, 2, 3**",
    "Sure! Here is a new task.\n\nInstruction: Sort the list.\nInput: 3, 1, 2\nOutput: 1, 2, 3\n\nHope it helps!",
])
def test_lenient_shapes(reply: str) -> None:
    # (Trailing chatter after the output belongs to the output: no label ends it.)
    got = triples(reply)
    assert len(got) == 1
    assert got[0][:2] == ("Sort the list.", "3, 1, 2")
    assert got[0][2].startswith("1, 2, 3")


@pytest.mark.parametrize("no_input", ["<noinput>", "<no input>", "N/A", "None", "(none)", "-", "", "NULL", "Empty"])
def test_no_input_markers_mean_empty_input(no_input: str) -> None:
    assert triples(f"Instruction: Name a fruit.\nInput: {no_input}\nOutput: Apple.") == [
        ("Name a fruit.", "", "Apple.")]


def test_missing_input_line_means_empty_input() -> None:
    assert triples("Instruction: Name a fruit.\nOutput: Apple.") == [("Name a fruit.", "", "Apple.")]


def test_multi_line_values_run_until_the_next_label() -> None:
    reply = ("Instruction: Rewrite the poem\nin plain prose.\nInput: Roses are red,\nviolets are blue.\n"
             "Output: Line one\nline two\n\nline four\n")
    assert triples(reply) == [("Rewrite the poem\nin plain prose.", "Roses are red,\nviolets are blue.",
                               "Line one\nline two\n\nline four")]


def test_tasks_without_headers_split_on_the_next_instruction() -> None:
    reply = "Instruction: A one.\nOutput: a\nInstruction: B two.\nInput: b\nOutput: bb"
    assert triples(reply) == [("A one.", "", "a"), ("B two.", "b", "bb")]


def test_plain_prompt_prefix_completes_the_first_block() -> None:
    # A plain prompt ends with "Task 4\nInstruction:"; the model continues from there and the
    # backend cut the reply at the stop string (the next task's header).
    prefix = "Task 4\nInstruction:"
    result = parse_reply(" Name a fruit.\nInput: <noinput>\nOutput: Apple.\n\n", "stop", prefix)
    assert [(c.instruction, c.input, c.output, c.raw) for c in result.candidates] == [
        ("Name a fruit.", "", "Apple.", "Task 4\nInstruction: Name a fruit.\nInput: <noinput>\nOutput: Apple.")]
    # A header left at the end (a stop string the server kept) is not a task and not a rejection.
    assert parse_reply(" Name a fruit.\nOutput: Apple.\nTask 5", "stop", prefix).rejections == []


# --------------------------------------------------------------------------- malformed replies

def test_each_unparseable_piece_is_kept_with_raw_text_and_reason() -> None:
    reply = ("Task 1\nInstruction: Good one.\nOutput: fine\n\n"
             "Task 2\nInstruction: No output here.\nInput: something\n\n"
             "Task 3\nInstruction:\nOutput: orphan output\n\n"
             "Task 4\nInput: only an input\nOutput: and an output\n\n"
             "Task 5\nInstruction: Another good one.\nInput: <noinput>\nOutput: also fine")
    result = parse_reply(reply)
    assert [c.instruction for c in result.candidates] == ["Good one.", "Another good one."]
    assert [(r.reason, r.stage, r.raw, r.candidate) for r in result.rejections] == [
        ("missing_output", "parse", "Task 2\nInstruction: No output here.\nInput: something",
         {"instruction": "No output here."}),
        ("empty_instruction", "parse", "Task 3\nInstruction:\nOutput: orphan output", None),
        ("missing_instruction", "parse", "Task 4\nInput: only an input\nOutput: and an output", None),
    ]


@pytest.mark.parametrize("reply", ["", "   \n\n", "Sure, I can help with that.", "I cannot do this task."])
def test_reply_without_any_task(reply: str) -> None:
    result = parse_reply(reply)
    assert result.candidates == []
    assert [(r.reason, r.raw) for r in result.rejections] == [("no_task_found", reply.strip() or reply)]


def test_polite_preamble_is_not_a_rejection_when_tasks_follow() -> None:
    assert reasons("Here you go:\n\nInstruction: Name a fruit.\nOutput: Apple.") == []


def test_label_in_another_language_is_not_mistaken_for_one() -> None:
    assert reasons("Instrucción: Nombra una fruta.\nOutput: Manzana.") == [
        ("missing_instruction", "Instrucción: Nombra una fruta.\nOutput: Manzana.")]


# --------------------------------------------------------------------------- truncation

def test_truncated_reply_loses_only_its_last_task() -> None:
    reply = ("Task 9\nInstruction: Name a fruit.\nOutput: Apple.\n\n"
             "Task 10\nInstruction: Name a car maker.\nOutput: Volvo.\n\n"
             "Task 11\nInstruction: Name a river in Eur")
    assert triples(reply, "length") == [("Name a fruit.", "", "Apple."), ("Name a car maker.", "", "Volvo.")]
    assert reasons(reply, "length") == [("truncated", "Task 11\nInstruction: Name a river in Eur")]
    # The same text that ended on its own keeps all three (the third lacks an output).
    assert [r for r, _ in reasons(reply, "stop")] == ["missing_output"]


def test_truncated_reply_with_one_complete_looking_task_keeps_nothing() -> None:
    # Cut off by the token limit: the output may be cut mid-sentence, so the task goes.
    reply = "Task 1\nInstruction: Name a fruit.\nOutput: Apple and"
    assert triples(reply, "length") == []
    assert reasons(reply, "length") == [("truncated", reply)]


# --------------------------------------------------------------------------- the prompt format round-trips

def _round_trippable(value: str) -> bool:
    # Values whose own lines look like a label, that a whole-value quote or emphasis wraps,
    # or that start with markdown emphasis are ambiguous in any line format; the rest must
    # come back exactly.
    looks_like_label = any(parsing._FIELD.match(line) or parsing._HEADER.match(line) or
                           parsing._HEADER_INLINE.match(line) for line in value.splitlines())
    wrapped = len(value) >= 2 and value[0] == value[-1] and value[0] in "\"'`*"
    return not looks_like_label and not wrapped and not value.startswith(("__", "**"))


def test_seed_tasks_round_trip_through_the_prompt_format() -> None:
    checked = 0
    for task in load_tasks(REPO / "seed_tasks" / "seed_tasks.jsonl"):
        for inst in task.instances:
            values = (task.instruction.strip(), inst.input.strip(), inst.output.strip())
            if not all(_round_trippable(v) for v in values):
                continue
            block = format_task(Task(task.id, task.instruction, [inst]), 7)
            assert triples(block) == [values], task.id
            checked += 1
    assert checked >= 225, checked  # of 235 instances


# --------------------------------------------------------------------------- properties

WORDS = st.sampled_from(["the", "list", "Sort", "numbers", "a", "poem", "42", "x+y", "why?", "(b)", "ok.", "é",
                         "日本", "tab\tbed", "Task", "input", "output", "instruction", "no", "Yes"])
LINE = st.lists(WORDS, min_size=1, max_size=8).map(" ".join)
VALUE = st.lists(LINE, min_size=1, max_size=3).map("\n".join).filter(_round_trippable)
INPUT = st.one_of(st.just(""), VALUE.filter(lambda v: v.strip().lower() not in parsing._NO_INPUT))
TASKS = st.lists(st.tuples(VALUE, INPUT, VALUE), min_size=1, max_size=5)


def render(tasks: list[tuple[str, str, str]], start: int = 3) -> str:
    return "\n\n".join(format_task(Task("t", i, [Instance(inp, out)]), n)
                       for n, (i, inp, out) in enumerate(tasks, start))


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(TASKS)
def test_property_well_formed_replies_parse_back_exactly(tasks: list[tuple[str, str, str]]) -> None:
    expected = [(i.strip(), inp.strip(), out.strip()) for i, inp, out in tasks]
    text = render(tasks)
    assert triples(text) == expected
    assert parse_reply(text).rejections == []
    # Cut off by the token limit: every task but the last survives.
    assert triples(text, "length") == expected[:-1]
    assert [r for r, _ in reasons(text, "length")] == ["truncated"]


FRAGMENTS = st.sampled_from([
    "Task 3", "Task 4:", "**Task 5**", "###", "### Instruction:", "Instruction:", "Instructions:", "Input:",
    "Output:", "**Instruction:**", "__Output:__", "1. Instruction:", "<noinput>", "N/A", "\n", "\n\n", " ", ":",
    "**", "__", '"', "'", "`", "#", "Task", "Name three primes.", "2, 3, 5", "Output：", "\r\n", "\x00", "é",
])
REPLIES = st.one_of(st.text(max_size=400), st.lists(FRAGMENTS, max_size=60).map("".join),
                    st.lists(st.one_of(FRAGMENTS, st.text(max_size=10)), max_size=40).map("".join))


@settings(max_examples=1500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(REPLIES, st.sampled_from(["stop", "length", "error", "", "weird"]), st.sampled_from(["", "Task 4\nInstruction:"]))
def test_property_parser_never_raises_and_accounts_for_the_reply(text: str, finish_reason: str, prefix: str) -> None:
    result = parse_reply(text, finish_reason, prefix)
    assert result.candidates or result.rejections, "a reply must yield a task or a reason"
    assert not any(r.reason == "parser_error" for r in result.rejections)
    for c in result.candidates:
        assert c.instruction.strip(), "a candidate always has an instruction"
        assert c.instruction == c.instruction.strip() and c.output == c.output.strip()
        assert c.input.strip().lower() not in parsing._NO_INPUT or c.input == ""
        assert c.raw and c.raw in "\n".join((prefix + text).splitlines()), "raw is an excerpt of the reply"
    for r in result.rejections:
        assert r.stage == "parse" and r.reason and isinstance(r.raw, str)
    if finish_reason == "length":
        assert [r.reason for r in result.rejections].count("truncated") <= 1


def test_unexpected_failure_inside_becomes_a_rejection(monkeypatch: pytest.MonkeyPatch) -> None:
    def boom(text: str) -> list:
        raise RecursionError("deep")

    monkeypatch.setattr(parsing, "_split_blocks", boom)
    result = parse_reply("Instruction: x\nOutput: y")
    assert result.candidates == []
    assert [(r.reason, r.raw, r.detail) for r in result.rejections] == [
        ("parser_error", "Instruction: x\nOutput: y", {"error": "RecursionError('deep')"})]


def test_none_text_is_handled() -> None:
    assert reasons(None) == [("no_task_found", "")]  # type: ignore[arg-type]


def test_raw_excerpt_is_the_block_text_not_the_whole_reply() -> None:
    reply = "Task 1\nInstruction: Keep me.\nOutput: ok\n\nTask 2\nInstruction: Drop me."
    rej = parse_reply(reply).rejections
    assert len(rej) == 1 and rej[0].raw == "Task 2\nInstruction: Drop me."
    assert re.fullmatch(r"Task 2\n.*", rej[0].raw)


def test_instructions_heading_inside_an_output_stays_in_the_output() -> None:
    # A recipe's "Instructions:" heading (seed tasks 23 and 71 of the original set) is part
    # of the output when the task itself was labelled "Instruction:".
    recipe = ("Ingredients: 1 cup rice, 2 eggs.\nInstructions:\n1. Cook the rice.\n2. Fry the eggs.\n"
              "Instructions: serve hot.")
    reply = f"Instruction: Give me a recipe for fried rice.\nInput: <noinput>\nOutput: {recipe}\n\n" \
            "Instruction: Name a fruit.\nOutput: Apple."
    assert triples(reply) == [("Give me a recipe for fried rice.", "", recipe), ("Name a fruit.", "", "Apple.")]


def test_a_model_that_labels_tasks_instructions_still_splits_them() -> None:
    reply = "Instructions: Name a fruit.\nOutput: Apple.\n\nInstructions: Name a colour.\nOutput: Red."
    assert triples(reply) == [("Name a fruit.", "", "Apple."), ("Name a colour.", "", "Red.")]


@pytest.mark.parametrize("text, marks, min_inner, unwrapped", [
    ('**"Name a prime."**', ("**",), 0, "Name a prime."),
    ("** Bold, spaced **", ("**",), 0, "Bold, spaced"),
    ("__Underscored.__", ("**",), 0, "__Underscored.__"),  # only the marks asked for
    ("**__Both.__**", ("**", "__"), 0, "Both."),
    ("`code`", ("**",), 0, "code"),
    ('"a" and "b"', ("**",), 0, '"a" and "b"'),  # quotes inside the value, not around it
    ("**bold** and **bold**", ("**",), 0, "**bold** and **bold**"),  # two emphases, not one wrapping
    ("****", ("**",), 0, ""),  # with min_inner=0 a bare pair wraps nothing
    ("****", ("**",), 1, "****"),  # both parsers use 1: a masked value is kept
])
def test_unwrap_value_is_shared_by_both_parsers(text: str, marks: tuple[str, ...], min_inner: int,
                                                unwrapped: str) -> None:
    assert parsing.unwrap_value(text, marks, min_inner) == unwrapped


def test_a_masked_output_is_kept() -> None:
    assert triples("**Instruction:** Mask the password hunter2.\n**Output:** ****") == [
        ("Mask the password hunter2.", "", "****")]
