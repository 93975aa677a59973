"""Instance parsing and the paper's instance filters: exact instances, exact decisions."""

from __future__ import annotations

from selfinstruct.instances import REASONS, ParsedInstance, filter_instances, parse_instances
from selfinstruct.records import Instance


def pairs(parsed):
    return [(p.input, p.output) for p in parsed]


# --------------------------------------------------------------------------- parsing

def test_input_first_reply_continues_the_prompts_header():
    reply = " 12 + 30\nOutput: 42\n\nExample 2\nInput: 7 * 6\nOutput: 42\n"
    assert pairs(parse_instances(reply, prefix="Example 1\nInput:")) == [("12 + 30", "42"), ("7 * 6", "42")]


def test_output_first_reply_reads_class_label_as_the_output():
    reply = (" positive\nInput: Great battery, fast shipping.\n\nExample 2\nClass label: negative\n"
             "Input: It broke after a day.")
    assert pairs(parse_instances(reply, prefix="Example 1\nClass label:")) == [
        ("Great battery, fast shipping.", "positive"), ("It broke after a day.", "negative")]


def test_instances_without_example_headers_split_on_a_repeated_field():
    reply = "Class label: spam\nInput: WIN A PRIZE\nClass label: ham\nInput: See you at 5"
    assert pairs(parse_instances(reply)) == [("WIN A PRIZE", "spam"), ("See you at 5", "ham")]


def test_multi_line_values_and_no_input_markers():
    reply = ("Example 1\nInput: <noinput>\nOutput: Roses are red,\nviolets are blue.\n\n"
             "Example 2\nInput: N/A\nOutput: def f():\n    return 1\n")
    assert pairs(parse_instances(reply)) == [("", "Roses are red,\nviolets are blue."),
                                             ("", "def f():\n    return 1")]


def test_a_next_task_line_ends_the_reply_and_chatter_is_skipped():
    reply = ("Sure, here are examples.\nExample 1\nInput: a\nOutput: b\n\nTask: Translate the word.\n"
             "Example 1\nInput: dog\nOutput: perro")
    parsed = parse_instances(reply)
    assert pairs(parsed) == [("a", "b")]
    assert parsed[0].raw == "Example 1\nInput: a\nOutput: b"


def test_markdown_labels_and_inline_example_numbers():
    reply = "**Example 1:** Input: the cat\n**Output:** le chat\n2. Example 2: Input: the dog\nOutput: le chien"
    assert pairs(parse_instances(reply)) == [("the cat", "le chat"), ("the dog", "le chien")]


def test_a_field_without_its_partner_is_kept_for_the_filters_to_judge():
    assert pairs(parse_instances("Example 1\nInput: only an input")) == [("only an input", "")]
    assert pairs(parse_instances("Example 1\nOutput: only an output")) == [("", "only an output")]


def test_nothing_parseable_gives_no_instances():
    assert parse_instances("I cannot help with that.") == []
    assert parse_instances("") == []


# --------------------------------------------------------------------------- filters

def P(inp, out):
    return ParsedInstance(inp, out, f"{inp}->{out}")


def decisions(d):
    return [(reason, p.input, p.output) for reason, p in d.dropped]


def test_clean_instances_are_kept_stripped_in_order():
    d = filter_instances([P(" a ", " 1 "), P("b", "2"), P("", "3")])
    assert d.kept == [Instance("a", "1"), Instance("b", "2"), Instance("", "3")]
    assert d.dropped == [] and d.task_reason is None


def test_each_invalid_instance_rule_with_its_reason():
    d = filter_instances([
        P("x", ""),             # empty_output
        P("", "   "),           # empty_output (white space only), even though input == output
        P("same", " same "),    # input_equals_output
        P("Sentence:", "ok"),   # ends_with_colon (input)
        P("fine", "Answer:"),   # ends_with_colon (output)
        P("keep", "me"),
    ])
    assert decisions(d) == [("empty_output", "x", ""), ("empty_output", "", "   "),
                            ("input_equals_output", "same", " same "), ("ends_with_colon", "Sentence:", "ok"),
                            ("ends_with_colon", "fine", "Answer:")]
    assert d.kept == [Instance("keep", "me")]


def test_truncated_reply_drops_only_its_last_instance_first():
    d = filter_instances([P("a", "1"), P("b", "2"), P("c", "3 and then the reply was cut")], truncated=True)
    assert decisions(d) == [("truncated", "c", "3 and then the reply was cut")]
    assert d.kept == [Instance("a", "1"), Instance("b", "2")]
    # Not truncated: the same last instance stays.
    assert len(filter_instances([P("a", "1"), P("c", "3")], truncated=False).kept) == 2


def test_same_input_with_different_outputs_drops_the_whole_task():
    d = filter_instances([P("2+2", "4"), P("3+3", "6"), P(" 2+2", "5"), P("x", "")])
    assert d.task_reason == "conflicting_outputs"
    assert d.kept == []
    # The invalid one is reported with its own reason; every valid one as conflicting.
    assert decisions(d) == [("empty_output", "x", ""), ("conflicting_outputs", "2+2", "4"),
                            ("conflicting_outputs", "3+3", "6"), ("conflicting_outputs", " 2+2", "5")]


def test_empty_inputs_with_different_outputs_do_not_conflict():
    d = filter_instances([P("", "A haiku one"), P("", "A haiku two")])
    assert d.task_reason is None and len(d.kept) == 2


def test_invalid_instances_cannot_cause_a_conflict():
    # The second has the same input but an empty output: it is dropped before the check.
    d = filter_instances([P("q", "a"), P("q", "")])
    assert d.task_reason is None and d.kept == [Instance("q", "a")]


def test_exact_duplicates_are_removed_keeping_the_first():
    d = filter_instances([P("a", "1"), P(" a", "1 "), P("b", "2"), P("a", "1")])
    assert d.kept == [Instance("a", "1"), Instance("b", "2")]
    assert decisions(d) == [("duplicate", " a", "1 "), ("duplicate", "a", "1")]


def test_at_most_max_instances_first_ones_kept_repeats_still_count_as_duplicates():
    parsed = [P(str(i), f"out {i}") for i in range(7)] + [P("6", "out 6")]
    d = filter_instances(parsed, max_instances=5)
    assert d.kept == [Instance(str(i), f"out {i}") for i in range(5)]
    assert decisions(d) == [("over_limit", "5", "out 5"), ("over_limit", "6", "out 6"),
                            ("duplicate", "6", "out 6")]


def test_counts_and_reason_names():
    d = filter_instances([P("a", ""), P("b", ""), P("c", "c"), P("d", "1")], truncated=True)
    assert d.counts() == {"truncated": 1, "empty_output": 2, "input_equals_output": 1}
    assert set(d.counts()) <= set(REASONS)
    assert filter_instances([]).kept == [] and filter_instances([], truncated=True).dropped == []
