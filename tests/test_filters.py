"""Every filter's exact decisions, and the ROUGE-L novelty filter as the loop uses it:
its decisions equal rouge-score's over thousands of candidate/pool pairs, with candidates
accepted earlier in the same batch in the pool."""

from __future__ import annotations

import random
import re
import string

import pytest

from selfinstruct.backends import ScriptedBackend
from selfinstruct.backends.base import Prompt, Reply, Request
from selfinstruct.bootstrap import Bootstrapper
from selfinstruct.config import BLOCKLIST, FilterConfig, load_config
from selfinstruct.filters import (
    KEEP,
    EmptyOutputFilter,
    KeywordFilter,
    LeadingCharFilter,
    PrefixFilter,
    Verdict,
    WordCountFilter,
    build_filters,
    drop,
    run_filters,
)
from selfinstruct.filters.rouge import RougeLFilter
from selfinstruct.pool import TaskPool
from selfinstruct.records import Candidate, Instance, Task
from selfinstruct.similarity import RougeLIndex


def cand(instruction: str, output: str = "an output", input: str = "") -> Candidate:
    return Candidate(instruction, input, output)


# --------------------------------------------------------------------------- length

@pytest.mark.parametrize("words, verdict", [
    (1, drop("too_short", words=1)), (3, drop("too_short", words=3)), (4, KEEP), (5, KEEP),
    (150, KEEP), (151, drop("too_long", words=151)), (400, drop("too_long", words=400)),
])
def test_word_count_bounds_are_inclusive(words: int, verdict: Verdict) -> None:
    assert WordCountFilter(4, 150).check(cand(" ".join(["word"] * words))) == verdict


def test_word_count_splits_on_any_white_space() -> None:
    f = WordCountFilter(4, 150)
    assert f.check(cand("Sort\tthe\nlist  now")) == KEEP
    assert f.check(cand("  Sort the list  ")) == drop("too_short", words=3)
    assert WordCountFilter(1, 2).check(cand("a b c")) == drop("too_long", words=3)


# --------------------------------------------------------------------------- keywords

def reference_blocked(instruction: str, words: list[str]) -> bool:
    """Self-Instruct's own rule: any blocklist word found with \\b word boundaries, ignoring case."""
    return any(re.search(r"\b" + re.escape(w) + r"\b", instruction, flags=re.IGNORECASE) for w in words)


@pytest.mark.parametrize("word", BLOCKLIST)
def test_every_blocklist_word_is_dropped_in_any_case(word: str) -> None:
    f = KeywordFilter(list(BLOCKLIST))
    for text in [f"Describe the {word} below.", f"{word.upper()} this for me please", f"Use a {word.title()}, then stop.",
                 f"Explain it (see {word})."]:
        assert f.check(cand(text)) == drop("blocked_keyword", keyword=word), text


@pytest.mark.parametrize("text", [
    "Update the user profile with the new address.",   # "file" inside a word
    "Explain the mapping between keys and values.",    # "map" inside a word
    "Describe the plotting of a novel.",               # "plot" inside a word
    "List what is in the top drawer.",                 # "draw" inside a word
    "Explain imagery in this poem.",
    "Name the musical instrument described.",
    "Explain what goto does in C.",
    "Name a go-to snack for travel.",
    "Rename file_name to a better variable name.",     # "_" is a word character
    "Give a graphic description of the storm.",
])
def test_keywords_match_whole_words_only(text: str) -> None:
    assert KeywordFilter(list(BLOCKLIST)).check(cand(text)) == KEEP
    assert not reference_blocked(text, BLOCKLIST)


@pytest.mark.parametrize("text, keyword", [
    ("Tell me how to go to the station.", "go to"),
    ("Tell me how to go  to the station.", "go  to"),  # any run of white space
    ("Tell me how to Go\nTo the station.", "go\nto"),
    ("Summarize the files, then stop.", "files"),
    ("Re-draw the shape in words.", "draw"),
    ("Describe the image-based captcha.", "image"),
])
def test_keyword_variants_that_are_dropped(text: str, keyword: str) -> None:
    assert KeywordFilter(list(BLOCKLIST)).check(cand(text)) == drop("blocked_keyword", keyword=keyword)


def test_keyword_decisions_equal_the_reference_rule_on_random_sentences() -> None:
    rng = random.Random(7)
    vocab = ["the", "a", "profile", "maps", "mapping", "Go", "to", "goto", "image", "imagery", "draw", "drawer",
             "Plot", "plots", "audio-book", "file_name", "files.", "(video)", "music!", "diagram's", "Chart",
             "sort", "list", "numbers", "flowchart", "graph", "pictures", "go-to", "3D", "é"]
    f = KeywordFilter(list(BLOCKLIST))
    decisions = []
    for _ in range(3000):
        text = " ".join(rng.choice(vocab) for _ in range(rng.randint(1, 8)))
        blocked = not f.check(cand(text)).keep
        assert blocked == reference_blocked(text, BLOCKLIST), text
        decisions.append(blocked)
    assert 500 < sum(decisions) < 2500  # both outcomes well represented


def test_empty_blocklist_keeps_everything() -> None:
    assert KeywordFilter([]).check(cand("Draw an image of a map.")) == KEEP


def test_only_the_instruction_is_checked() -> None:
    assert KeywordFilter(list(BLOCKLIST)).check(cand("Describe a sunset.", output="an image of red sky",
                                                     input="a picture")) == KEEP


# --------------------------------------------------------------------------- prefixes

@pytest.mark.parametrize("text, kept", [
    ("Write a program that sorts a list.", False),
    ("write a PROGRAM to add numbers.", False),
    ("  Write   a\nprogram to add numbers.", False),
    ("Write a programme to add numbers.", False),  # the paper's startswith rule: a prefix, not a word
    ("Please write a program that sorts a list.", True),
    ("Write programs that sort lists.", True),
    ("Write a Python function that sorts a list.", True),
])
def test_write_a_program_prefix(text: str, kept: bool) -> None:
    verdict = PrefixFilter(["write a program"]).check(cand(text))
    assert verdict == (KEEP if kept else drop("blocked_prefix", prefix="write a program"))


# --------------------------------------------------------------------------- leading character

@pytest.mark.parametrize("char", list(string.punctuation))
def test_every_leading_punctuation_mark_is_dropped(char: str) -> None:
    assert LeadingCharFilter().check(cand(f"{char}Sort the list of numbers.")) == drop(
        "starts_with_punctuation", char=char)


@pytest.mark.parametrize("text, char", [
    ("¿Qué hora es en Tokio ahora?", "¿"), ("Écris une phrase en français.", "É"), ("日本の首都はどこですか", "日"),
    ("\u201cQuote\u201d this sentence back to me.", "\u201c"), ("\u00a0\u00a0Sort the list.", None),
    ("🙂 Describe your mood today.", "🙂"),
])
def test_leading_non_ascii_is_dropped(text: str, char: str | None) -> None:
    verdict = LeadingCharFilter().check(cand(text))
    # A no-break space is white space: stripped, then the S is checked.
    assert verdict == (KEEP if char is None else drop("starts_with_non_ascii", char=char))


@pytest.mark.parametrize("text", ["Sort the list.", "  sort the list.", "3 reasons to exercise.",
                                  "Z is the last letter.", "Translate « merci » into English."])
def test_leading_ascii_letters_and_digits_are_kept(text: str) -> None:
    assert LeadingCharFilter().check(cand(text)) == KEEP


def test_blank_instruction_is_dropped_as_empty() -> None:
    assert LeadingCharFilter().check(cand("  \n ")) == drop("empty_instruction")


# --------------------------------------------------------------------------- output

@pytest.mark.parametrize("output, kept", [("", False), ("  \n\t", False), ("0", True), (" no ", True)])
def test_empty_output(output: str, kept: bool) -> None:
    assert EmptyOutputFilter().check(cand("Sort the list please.", output=output)) == (
        KEEP if kept else drop("empty_output"))


@pytest.mark.parametrize("output, kept", [("<noinput>", False), (" <No Input> ", False), ("<nooutput>", False),
                                          ("None", True), ("N/A", True), ("<noinput> is the marker", True)])
def test_a_copied_no_input_marker_is_no_output(output: str, kept: bool) -> None:
    # A base model copies "Input: <noinput>" into the output slot; "None" can be a real answer.
    got = EmptyOutputFilter().check(cand("Name a prime below three.", output=output))
    assert got == (KEEP if kept else drop("empty_output", placeholder=output.strip()))


# --------------------------------------------------------------------------- the chain

def test_chain_order_and_first_drop_wins() -> None:
    chain = build_filters(FilterConfig(), RougeLIndex())
    assert [f.name for f in chain] == ["leading_char", "length", "keywords", "prefix", "empty_output", "rouge"]
    # Short, blocked and empty at once: the first filter in the chain names the reason.
    assert run_filters(chain, cand("Draw maps", output="")) == drop("too_short", words=2)
    assert run_filters(chain, cand("Write a program to draw maps.", output="")) == drop("blocked_keyword",
                                                                                      keyword="draw")
    assert run_filters(chain, cand("Write a program to sort lists.", output="")) == drop(
        "blocked_prefix", prefix="write a program")
    assert run_filters(chain, cand("Sort the list of numbers.", output="")) == drop("empty_output")


def test_chain_uses_the_configured_values() -> None:
    cfg = FilterConfig(min_words=2, max_words=3, blocklist=["chart"], blocked_prefixes=["explain"])
    chain = build_filters(cfg, RougeLIndex())
    assert run_filters(chain, cand("Draw maps")).keep
    assert run_filters(chain, cand("Make a chart")) == drop("blocked_keyword", keyword="chart")
    assert run_filters(chain, cand("Explain recursion")) == drop("blocked_prefix", prefix="explain")
    assert run_filters(chain, cand("Sort these four numbers")) == drop("too_long", words=4)


def test_keep_details_merge_and_carry_similarity() -> None:
    index = RougeLIndex()
    index.extend(["Sort the list of numbers.", "Name a fruit."])
    v = run_filters(build_filters(FilterConfig(), index), cand("Sort these words by length."))
    assert v.keep and v.reason is None
    # F = 2 * 1 / (5 + 5); pool items sharing no token (F = 0) are not listed.
    assert v.detail == {"most_similar": {"Sort the list of numbers.": 0.2}, "avg_similarity_score": 0.2}


# --------------------------------------------------------------------------- ROUGE-L against rouge-score

VOCAB = ["sort", "the", "list", "of", "numbers", "in", "ascending", "order", "name", "a", "fruit", "that", "is",
         "red", "write", "short", "poem", "about", "ocean", "explain", "why", "sky", "blue", "Give", "three",
         "tips", "for", "sleeping", "well", "don't", "U.S.", "e-mail", "2024", "Café", "x+y"]


def mutate(rng: random.Random, words: list[str]) -> list[str]:
    words = list(words)
    for _ in range(rng.randint(1, 4)):
        op = rng.random()
        if op < 0.4 and len(words) > 2:
            words[rng.randrange(len(words))] = rng.choice(VOCAB)
        elif op < 0.7 and len(words) > 3:
            del words[rng.randrange(len(words))]
        else:
            words.insert(rng.randrange(len(words) + 1), rng.choice(VOCAB))
    return words


def test_rouge_filter_in_the_loop_equals_rouge_score() -> None:
    from rouge_score.rouge_scorer import RougeScorer

    scorer = RougeScorer(["rougeL"], use_stemmer=False)
    rng = random.Random(2024)
    seeds = [Task(f"seed_{i}", " ".join(rng.choice(VOCAB) for _ in range(rng.randint(4, 12))),
                  [Instance("", "out")]) for i in range(40)]
    pool = TaskPool(seeds)
    filt = RougeLFilter(pool.index, threshold=0.7, top_k=10)
    pool_texts = [t.instruction for t in seeds]
    pairs = kept = dropped = 0
    for i in range(250):
        # Most candidates are edits of something already in the pool (near duplicates or
        # not), so both decisions are common; a few are fresh.
        base = rng.choice(pool_texts).split() if rng.random() < 0.85 else [rng.choice(VOCAB) for _ in range(6)]
        text = " ".join(mutate(rng, base))
        scores = [scorer.score(p, text)["rougeL"].fmeasure for p in pool_texts]
        pairs += len(scores)
        expected_drop = max(scores) > 0.7
        verdict = filt.check(cand(text))
        assert verdict.keep == (not expected_drop), (text, max(scores))
        if expected_drop:
            dropped += 1
            assert verdict.reason == "rouge_similar"
            assert verdict.detail["score"] == max(scores)
            assert verdict.detail["most_similar"] == pool_texts[scores.index(max(scores))]
        else:
            kept += 1
            ranked = sorted(((s, j) for j, s in enumerate(scores) if s > 0), key=lambda sj: (-sj[0], sj[1]))[:10]
            assert verdict.detail["most_similar"] == {pool_texts[j]: round(s, 6) for s, j in ranked}
            assert verdict.detail["avg_similarity_score"] == pytest.approx(
                sum(round(s, 6) for s, _ in ranked) / len(ranked) if ranked else 0.0)
            # Accepted: later candidates of this same batch are compared against it too.
            pool.add(Task(f"machine_{i}", text, [Instance("", "out")], origin="machine"))
            pool_texts.append(text)
    assert pairs > 20_000
    assert kept > 50 and dropped > 50, (kept, dropped)


def test_rouge_threshold_is_strictly_greater_as_rouge_score_rounds_it() -> None:
    from rouge_score.rouge_scorer import RougeScorer

    # 8 and 12 tokens with an LCS of 7: F = 0.7000000000000001 in floating point, so dropped;
    # 10 and 10 with an LCS of 7: exactly 0.7, so kept.
    item = "a b c d e f g h i j k l"
    over, at = "a b c d e f g z", "a b c d e f g x y z"
    ref = RougeScorer(["rougeL"])
    assert ref.score(item, over)["rougeL"].fmeasure > 0.7
    pool = TaskPool([Task("s", item, [Instance("", "o")]), Task("t", "a b c d e f g h i j", [Instance("", "o")])])
    filt = RougeLFilter(pool.index, 0.7, 10)
    assert filt.check(cand(over)).reason == "rouge_similar"
    assert ref.score("a b c d e f g h i j", at)["rougeL"].fmeasure == 0.7
    assert filt.check(cand(at)).keep


def test_second_near_duplicate_in_one_reply_is_dropped_against_the_first() -> None:
    seeds = [Task(f"seed_task_{i}", f"Seed instruction number {i} about topic {i}.", [Instance("", "x")])
             for i in range(10)]
    reply = ("Instruction: Explain why the sky looks blue at noon.\nOutput: Scattering.\n\n"
             "Instruction: Explain why the sky looks blue at dusk.\nOutput: Also scattering.\n\n"
             "Instruction: Explain why rivers in South America flood.\nOutput: Heavy rain.")
    cfg = load_config(None, ["generation.target=10", "generation.max_requests=1", "generation.num_prompt_tasks=3"])
    boot = Bootstrapper(cfg, ScriptedBackend([reply]), seeds)
    boot.handle_reply(Request(0, Prompt(text="p"), {"examples": []}), Reply(reply))
    assert [t.instruction for t in boot.pool.machine] == ["Explain why the sky looks blue at noon.",
                                                          "Explain why rivers in South America flood."]
    assert dict(boot.stats.dropped) == {"rouge_similar": 1}
    assert boot.pool.machine[0].meta["most_similar"] == {}  # no seed shares a word with it
    # The third task's neighbour is the first, accepted a moment earlier: F = 2 * 2 / (7 + 8).
    assert boot.pool.machine[1].meta["most_similar"] == {"Explain why the sky looks blue at noon.": 0.266667}
