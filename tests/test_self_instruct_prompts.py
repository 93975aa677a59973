"""Self-Instruct's three prompt families (both styles) and the parsers of steps 1 and 2."""

from __future__ import annotations

import random
from collections import Counter

import pytest

from selfinstruct.records import Instance, Task, load_tasks
from selfinstruct.si_parsing import parse_instruction_list, parse_yes_no
from selfinstruct.si_prompts import (ClassificationExamples, ClassificationPromptBuilder, InstancePromptBuilder,
                                     InstructionPromptBuilder, pick_classification_examples, pick_instance_examples)

MOOD = Task("s0", "Classify the mood as happy or sad.", [Instance("I won!", "happy"), Instance("I lost.", "sad")],
            is_classification=True)
HAIKU = Task("s1", "Write a  haiku\nabout rain.", [Instance("", "Soft rain on the roof")], is_classification=False)


# --------------------------------------------------------------------------- step 1

def test_plain_instruction_prompt_is_a_numbered_list_ending_at_the_next_number():
    p = InstructionPromptBuilder("plain", num_new=2).build([MOOD, HAIKU])
    assert p.messages is None
    assert p.text.endswith("\n\nTask 1: Classify the mood as happy or sad.\nTask 2: Write a haiku about rain.\nTask 3:")
    assert p.text.startswith("Below is a numbered list of varied tasks")
    assert p.reply_prefix == "Task 3:"
    assert InstructionPromptBuilder("plain", num_new=2).stop(2) == ["Task 5:"]


def test_classification_only_instruction_prompt_variant():
    plain = InstructionPromptBuilder("plain").build([MOOD], classification_only=True)
    assert plain.text.startswith("Below is a numbered list of classification tasks")
    chat = InstructionPromptBuilder("chat", num_new=3).build([MOOD], classification_only=True)
    assert "3 new classification tasks" in chat.messages[1]["content"]


def test_chat_instruction_prompt_with_and_without_prefill():
    with_prefill = InstructionPromptBuilder("chat", num_new=1, prefill=True).build([MOOD, HAIKU])
    assert [m["role"] for m in with_prefill.messages] == ["system", "user"]
    user = with_prefill.messages[1]["content"]
    assert "Task 1: Classify the mood as happy or sad.\nTask 2: Write a haiku about rain." in user
    assert "Continue the list with 1 new task unlike" in user and "starting at Task 3" in user
    assert (with_prefill.prefill, with_prefill.reply_prefix) == ("Task 3:", "Task 3:")
    # A backend that cannot prefill (a remote chat endpoint): the reply is parsed as it comes.
    no_prefill = InstructionPromptBuilder("chat", num_new=1, prefill=False).build([MOOD, HAIKU])
    assert (no_prefill.prefill, no_prefill.reply_prefix) == ("", "")
    assert no_prefill.messages == with_prefill.messages


def test_parse_instruction_list_with_prefix_and_variants():
    reply = (" Name three primes.\nTask 10: Summarise the\nparagraph in one sentence.\n\nSome chatter here.\n"
             "11. **Translate the word into French.**\n12) Instruction: Rank the planets by size.\n"
             "Input: <noinput>\nOutput: Jupiter, Saturn\n**Task 13:** \"Spell the word backwards.\"")
    r = parse_instruction_list(reply, "stop", prefix="Task 9:")
    assert [c.instruction for c in r.candidates] == [
        "Name three primes.", "Summarise the paragraph in one sentence.", "Translate the word into French.",
        "Rank the planets by size.", "Spell the word backwards."]
    assert r.rejections == []


def test_parse_instruction_list_truncation_empty_and_nothing():
    r = parse_instruction_list(" Name three primes.\nTask 10: Explain why the sky", "length", prefix="Task 9:")
    assert [c.instruction for c in r.candidates] == ["Name three primes."]
    assert [(x.reason, x.raw) for x in r.rejections] == [("truncated", "Explain why the sky")]
    # The cut fell in chatter after a finished item: the item stays.
    r = parse_instruction_list(" Name three primes.\n\nThis list of tasks is a list of", "length", prefix="Task 9:")
    assert [c.instruction for c in r.candidates] == ["Name three primes."] and r.rejections == []
    r = parse_instruction_list(" Name three primes.\nInput: 7, 11 and", "length", prefix="Task 9:")
    assert [c.instruction for c in r.candidates] == ["Name three primes."] and r.rejections == []
    r = parse_instruction_list(" \nTask 10: Add two numbers together.", "stop", prefix="Task 9:")
    assert [x.reason for x in r.rejections] == ["empty_instruction"]
    assert [c.instruction for c in r.candidates] == ["Add two numbers together."]
    r = parse_instruction_list("I'd be glad to help, but I need more context.", "stop")
    assert r.candidates == [] and [x.reason for x in r.rejections] == ["no_task_found"]


# --------------------------------------------------------------------------- step 2

def test_classification_examples_are_balanced_labelled_seeds():
    seeds = load_tasks("seed_tasks/seed_tasks.jsonl")
    picked = pick_classification_examples(seeds, 12, random.Random("42:classify"))
    assert len(picked) == 12 and len({t.id for t in picked}) == 12
    assert Counter(t.is_classification for t in picked) == {True: 6, False: 6}
    assert picked == pick_classification_examples(seeds, 12, random.Random("42:classify"))
    # Few of one label: the rest come from the other.
    few = [MOOD, HAIKU, Task("s2", "Write a limerick.", [Instance("", "x")], is_classification=False)]
    assert Counter(t.is_classification for t in pick_classification_examples(few, 4, random.Random(0))) == {
        True: 1, False: 2}


def test_classification_examples_by_similarity_put_the_nearest_seed_last():
    seeds = load_tasks("seed_tasks/seed_tasks.jsonl")
    ex = ClassificationExamples(seeds, 6, "similarity", random.Random(1))
    picked = ex.for_instruction("Classify the sentiment of this tweet as positive or negative.")
    assert len(picked) == 6 and len({t.id for t in picked}) == 6
    assert picked[-1].instruction == "Classify the sentiment of this product review as positive, negative, or neutral."
    assert picked[-1].is_classification is True
    # A made-up word shares nothing with any seed: all six are the balanced padding.
    assert ex.for_instruction("Zyxwv qwerty.") == ex.balanced
    assert Counter(t.is_classification for t in ex.balanced) == {True: 3, False: 3}
    # fixed: the same balanced set whatever the instruction.
    fixed = ClassificationExamples(seeds, 6, "fixed", random.Random(1))
    assert fixed.for_instruction("Classify the tweet.") == fixed.for_instruction("Write a poem.") == fixed.balanced


def test_similarity_examples_are_padded_when_few_seeds_share_a_word():
    ex = ClassificationExamples([MOOD, HAIKU, Task("s2", "Tell a joke.", [Instance("", "x")], is_classification=False)],
                                3, "similarity", random.Random(0))
    picked = ex.for_instruction("Classify the weather as sunny or rainy.")
    assert picked[-1] is MOOD and sorted(t.id for t in picked) == ["s0", "s1", "s2"]


def test_plain_classification_prompt_shows_labelled_examples_then_asks():
    p = ClassificationPromptBuilder("plain").build("Is the  message spam?", [MOOD, HAIKU])
    assert p.text.endswith("Task: Classify the mood as happy or sad.\nClassification: Yes\n\n"
                           "Task: Write a haiku about rain.\nClassification: No\n\n"
                           "Task: Is the message spam?\nClassification:")
    assert p.reply_prefix == "" and p.prefill == ""


def test_chat_classification_prompt_gives_examples_as_turns():
    p = ClassificationPromptBuilder("chat").build("Is the message spam?", [MOOD, HAIKU])
    assert [(m["role"], m["content"]) for m in p.messages[1:]] == [
        ("user", "Task: Classify the mood as happy or sad.\nIs this a classification task?"),
        ("assistant", "Yes"),
        ("user", "Task: Write a haiku about rain.\nIs this a classification task?"),
        ("assistant", "No"),
        ("user", "Task: Is the message spam?\nIs this a classification task?"),
    ]
    assert p.messages[0]["role"] == "system" and "Answer only Yes or No." in p.messages[0]["content"]


@pytest.mark.parametrize("text,verdict", [
    (" Yes", True), ("No.", False), ("yes, it is", True), ("\nNO", False), ("Classification: Yes", True),
    ("True", True), ("false", False), ("Maybe", None), ("", None), ("It depends\nYes", None),
    ("Not sure", None), ("Nobody knows", None),
])
def test_parse_yes_no_is_lenient_but_not_reckless(text, verdict):
    assert parse_yes_no(text) is verdict


# --------------------------------------------------------------------------- step 3

def test_output_first_plain_prompt_for_classification_tasks():
    p = InstancePromptBuilder("plain", max_examples=5).build("Label the fruit.", True, [MOOD])
    assert p.text.endswith("Task: Classify the mood as happy or sad.\nExample 1\nClass label: happy\nInput: I won!\n\n"
                           "Example 2\nClass label: sad\nInput: I lost.\n\nTask: Label the fruit.\nExample 1\n"
                           "Class label:")
    assert p.text.startswith("Each task below is a classification task")
    assert p.reply_prefix == "Example 1\nClass label:"


def test_input_first_plain_prompt_for_other_tasks_shows_noinput():
    p = InstancePromptBuilder("plain", max_examples=5).build("Add the numbers.", False, [HAIKU])
    assert p.text.endswith("Task: Write a haiku about rain.\nExample 1\nInput: <noinput>\n"
                           "Output: Soft rain on the roof\n\nTask: Add the numbers.\nExample 1\nInput:")
    assert p.reply_prefix == "Example 1\nInput:"
    assert InstancePromptBuilder().stop() == ["\nTask:"]


def test_instance_examples_shown_are_capped_at_the_instance_limit():
    many = Task("s9", "Name a colour.", [Instance("", f"colour {i}") for i in range(8)], is_classification=False)
    p = InstancePromptBuilder("plain", max_examples=3).build("Name a fruit.", False, [many])
    assert "Example 3\nInput: <noinput>\nOutput: colour 2" in p.text and "colour 3" not in p.text


def test_chat_instance_prompts_with_and_without_prefill():
    p = InstancePromptBuilder("chat", max_examples=4, prefill=True).build("Label the fruit.", True, [MOOD])
    assert [m["role"] for m in p.messages] == ["system", "user", "assistant", "user"]
    assert p.messages[2]["content"] == "Example 1\nClass label: happy\nInput: I won!\n\n" \
                                       "Example 2\nClass label: sad\nInput: I lost."
    assert p.messages[3]["content"].startswith("Task: Label the fruit.\n\nThis is a classification task. "
                                               "Write up to 4 examples")
    assert (p.prefill, p.reply_prefix) == ("Example 1\nClass label:", "Example 1\nClass label:")
    q = InstancePromptBuilder("chat", max_examples=4, prefill=False).build("Add the numbers.", False, [HAIKU])
    assert (q.prefill, q.reply_prefix) == ("", "")
    assert "\"Input:\" (write <noinput> if the task needs no input) and \"Output:\"" in q.messages[-1]["content"]


def test_instance_examples_are_seed_tasks_of_the_same_kind_mostly_with_several_instances():
    seeds = load_tasks("seed_tasks/seed_tasks.jsonl")
    for clf in (True, False):
        for i in range(20):
            picked = pick_instance_examples(seeds, clf, 3, random.Random(i))
            assert len(picked) == 3 and all(t.is_classification is clf for t in picked)
            assert sum(len(t.instances) > 1 for t in picked) == 2
