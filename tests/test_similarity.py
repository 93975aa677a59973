"""The ROUGE-L index must decide exactly as rouge-score does.

Every reference here is rouge-score itself: its tokenizer, its `_score_lcs` (LCS table and
float F-measure) or `RougeScorer.score`. The one shortcut (in `_RougeReference`) skips
scoring pairs whose token-multiset overlap cannot reach the best score already found,
which is sound because an LCS never exceeds the overlap.
"""

from __future__ import annotations

import math
import random
import re
import subprocess
import sys
from collections import Counter

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from rouge_score import rouge_scorer, tokenize, tokenizers

from selfinstruct.similarity import (
    BruteForceRougeL,
    RougeLIndex,
    RougeTokenizer,
    Screening,
    UnicodeTokenizer,
    rouge_l_f,
)
from selfinstruct.similarity import kernels
from selfinstruct.similarity.synthetic import InstructionGenerator


_SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
_WORDS = ["write", "a", "poem", "about", "the", "sea", "list", "three", "ways", "to", "save", "money",
          "explain", "why", "sky", "is", "blue", "42", "7", "and", "of", "in"]


def _rouge_f(target: str, prediction: str, use_stemmer: bool = False) -> float:
    return rouge_scorer.RougeScorer(["rougeL"], use_stemmer=use_stemmer).score(target, prediction)["rougeL"].fmeasure


# --------------------------------------------------------------------------- tokenizer

_TEXT = st.text(alphabet=st.characters(codec="utf-8", categories=["L", "N", "P", "S", "Z", "M", "Cc"]),
                max_size=80)


@_SETTINGS
@given(_TEXT)
def test_tokenizer_equals_rouge_score(text: str) -> None:
    ours = RougeTokenizer().tokenize(text)
    assert ours == tokenize.tokenize(text, None)
    assert ours == tokenizers.DefaultTokenizer(use_stemmer=False).tokenize(text)
    assert ours == re.findall("[a-z0-9]+", text.lower())
    assert "" not in ours


@_SETTINGS
@given(st.lists(st.sampled_from(["running", "runs", "flies", "happily", "cats", "abilities", "is", "was",
                                 "generously", "sky", "skies", "dying", "ox", "caresses", "Argued", "42nd",
                                 "!!", "¿qué?", "", "x-ray's"]), max_size=12))
def test_stemming_tokenizer_equals_rouge_score(words: list[str]) -> None:
    text = " ".join(words)
    assert RougeTokenizer(use_stemmer=True).tokenize(text) == tokenizers.DefaultTokenizer(use_stemmer=True).tokenize(text)


def test_unicode_tokenizer_splits_cjk_per_character() -> None:
    tok = UnicodeTokenizer()
    assert tok.tokenize("我喜欢Python编程!") == ["我", "喜", "欢", "python", "编", "程"]
    assert tok.tokenize("Café au LAIT, s'il vous plaît") == ["café", "au", "lait", "s", "il", "vous", "plaît"]
    assert tok.tokenize("हिन्दी भाषा") == ["हिन्दी", "भाषा"]  # combining vowel signs stay in the word
    assert tok.tokenize("カタカナとひらがな") == list("カタカナとひらがな")
    assert tok.tokenize("snake_case 3.14") == ["snake", "case", "3", "14"]
    # rouge-score cannot see Chinese at all: every pair scores 0, so the filter never fires.
    assert RougeTokenizer().tokenize("写一首关于大海的诗") == []
    assert _rouge_f("写一首关于大海的诗", "写一首关于大海的诗") == 0


def test_unicode_tokenizer_index_matches_rouge_score_with_same_tokenizer() -> None:
    tok = UnicodeTokenizer()
    texts = ["写一首关于大海的诗", "写一首关于大海的歌", "请解释为什么天空是蓝色的", "写一首诗", "Écris un poème sur la mer",
             "écris un poème sur la montagne", "列出三种省钱的方法", "列出三种省时间的方法"]
    idx, ref = RougeLIndex(tokenizer=tok), BruteForceRougeL(tokenizer=tok)
    for text in texts:
        assert idx.screen(text, k=5) == ref.screen(text, k=5)
        idx.add(text)
        ref.add(text)
    assert idx.exceeds("写一首关于大海的诗歌")  # a near-duplicate, caught


# --------------------------------------------------------------------------- scoring and LCS


def test_f_measure_equals_rouge_score_on_all_small_cases() -> None:
    for la in range(1, 25):
        for lb in range(1, 25):
            for lcs in range(0, min(la, lb) + 1):
                a = [f"c{i}" for i in range(lcs)] + [f"a{i}" for i in range(la - lcs)]
                b = [f"c{i}" for i in range(lcs)] + [f"b{i}" for i in range(lb - lcs)]
                expected = rouge_scorer._score_lcs(a, b).fmeasure
                assert rouge_l_f(lcs, la, lb) == expected
                assert rouge_l_f(lcs, lb, la) == expected  # symmetric, bit for bit
    assert rouge_l_f(0, 0, 5) == rouge_l_f(3, 5, 0) == 0.0


def test_threshold_ties_are_decided_as_rouge_score_decides() -> None:
    # True score exactly 0.7 in both, but the floats differ.
    assert rouge_l_f(7, 8, 12) == 0.7000000000000001 > 0.7  # rejected by rouge-score
    assert rouge_l_f(7, 10, 10) == 0.7  # kept by rouge-score
    for la, lb, lcs, exceeded in [(8, 12, 7, True), (10, 10, 7, False)]:
        common = [f"w{i}" for i in range(lcs)]
        a = " ".join(common + [f"x{i}" for i in range(la - lcs)])
        b = " ".join(common + [f"y{i}" for i in range(lb - lcs)])
        for pool_text, cand in [(a, b), (b, a)]:
            idx = RougeLIndex()
            idx.add(pool_text)
            assert (_rouge_f(pool_text, cand) > 0.7) is exceeded
            assert idx.exceeds(cand) is exceeded
            assert idx.screen(cand, k=3).exceeded is exceeded
            assert idx.max_score(cand) == (0, _rouge_f(pool_text, cand))


@st.composite
def _boundary_pairs(draw: st.DrawFn) -> tuple[str, str]:
    """Two texts whose ROUGE-L F is exactly 0.7 in exact arithmetic (20*lcs == 7*(la+lb)),
    with the shared words interleaved with private ones at random positions."""
    m = draw(st.integers(1, 5))  # la + lb = 20m, lcs = 7m <= min(la, lb)
    la = draw(st.integers(7 * m, 13 * m))
    lb = 20 * m - la
    lcs = 7 * m
    common = [f"w{i}" for i in range(lcs)]
    rnd = random.Random(draw(st.integers(0, 2**32)))

    def interleave(extra: list[str]) -> str:
        out = list(common)
        for word in extra:
            out.insert(rnd.randint(0, len(out)), word)
        return " ".join(out)

    return interleave([f"x{i}" for i in range(la - lcs)]), interleave([f"y{i}" for i in range(lb - lcs)])


@_SETTINGS
@given(_boundary_pairs())
def test_exact_boundary_pairs(pair: tuple[str, str]) -> None:
    a, b = pair
    for pool_text, cand in [(a, b), (b, a)]:
        expected = _rouge_f(pool_text, cand)
        idx = RougeLIndex()
        idx.extend(["an unrelated instruction", pool_text])
        assert idx.exceeds(cand) == (expected > 0.7)
        assert idx.max_score(cand) == (1, expected)


@_SETTINGS
@given(st.lists(st.integers(0, 6), max_size=200), st.lists(st.integers(0, 6), max_size=200))
def test_bit_parallel_lcs_equals_rouge_score_table(a: list[int], b: list[int]) -> None:
    # Queries past 64 and 128 tokens take the multi-word path, with carries across words.
    table = rouge_scorer._lcs_table(a, b)
    qslot = np.zeros(8, dtype=np.int32)
    got = kernels.lcs_length(np.array(a, dtype=np.int32), np.array(b, dtype=np.int32), qslot)
    assert got == table[-1][-1]
    assert not qslot.any()  # scratch handed back zeroed


def test_bit_parallel_lcs_on_long_repetitive_sequences() -> None:
    rng = random.Random(5)
    for m in (63, 64, 65, 127, 128, 129, 300):
        a = [rng.randrange(3) for _ in range(m)]
        b = [rng.randrange(3) for _ in range(rng.randrange(1, 400))]
        qslot = np.zeros(3, dtype=np.int32)
        assert kernels.lcs_length(np.array(a, np.int32), np.array(b, np.int32), qslot) == rouge_scorer._lcs_table(a, b)[-1][-1]


# --------------------------------------------------------------------------- index vs rouge-score

_word = st.sampled_from(_WORDS + ["!", "?!", "...", "#", "é", "ß", "日本", "Write", "SEA", "12", "3.5"])


@st.composite
def _pool_and_queries(draw: st.DrawFn) -> tuple[list[str], list[str]]:
    def text() -> str:
        kind = draw(st.sampled_from(["words"] * 6 + ["empty", "punct", "long", "repeat", "unicode"]))
        if kind == "empty":
            return ""
        if kind == "punct":
            return draw(st.text(alphabet="!?.,;:-()[]' ", max_size=10))
        if kind == "long":
            return " ".join(draw(st.lists(_word, min_size=300, max_size=340)))
        if kind == "repeat":
            return " ".join([draw(_word)] * draw(st.integers(1, 30)) + draw(st.lists(_word, max_size=5)))
        if kind == "unicode":
            return draw(st.text(max_size=30))
        return " ".join(draw(st.lists(_word, max_size=draw(st.sampled_from([3, 8, 20])))))

    pool = [text() for _ in range(draw(st.integers(0, 25)))]
    queries = [text() for _ in range(4)]
    # Near-copies of pool items make high scores (and thresholds) likely.
    for base in draw(st.lists(st.sampled_from(pool), max_size=3)) if pool else []:
        words = base.split()
        if words:
            words.pop(draw(st.integers(0, len(words) - 1)))
        queries.append(" ".join(words + draw(st.lists(_word, max_size=2))))
    return pool, queries


@_SETTINGS
@given(_pool_and_queries(), st.sampled_from([0.0, 0.3, 0.5, 0.7, 0.9, 1.0]))
def test_edge_cases_match_brute_force(case: tuple[list[str], list[str]], threshold: float) -> None:
    pool, queries = case
    idx = RougeLIndex(threshold=threshold)
    ref = BruteForceRougeL(threshold=threshold)
    half = len(pool) // 2
    for text in pool[:half]:
        assert idx.add(text) == ref.add(text)
    idx.extend(pool[half:])
    ref.extend(pool[half:])
    assert len(idx) == len(pool)
    for query in queries:
        expected = ref.screen(query, k=3)
        assert idx.screen(query, k=3) == expected
        assert idx.exceeds(query) == expected.exceeded
        assert idx.screen(query, k=0) == Screening(expected.exceeded, [])
        assert idx.max_score(query) == (expected.top[0] if expected.top else (None, 0.0))


def test_top_k_equals_brute_force() -> None:
    gen = InstructionGenerator(seed=7, rare_words=200)
    pool = gen.corpus(300, near_duplicate_rate=0.3)
    queries = gen.candidates(pool, 40, near_duplicate_rate=0.4)
    idx, ref = RougeLIndex(), BruteForceRougeL()
    idx.extend(pool[:200])
    for text in pool[200:]:
        idx.add(text)
    ref.extend(pool)
    for i, query in enumerate(queries):
        scores = ref.scores(query)
        ranked = sorted(((j, f) for j, f in enumerate(scores) if f > 0), key=lambda p: (-p[1], p[0]))
        k = [1, 3, 10, 50][i % 4]
        assert idx.top_k(query, k) == ranked[:k]
        assert idx.screen(query, k=k, threshold=0.5) == Screening(max(scores) > 0.5, ranked[:k])


def test_top_ten_on_a_larger_pool_equals_brute_force() -> None:
    # Enough items that common words have long lists: the search stops probing before
    # them, verifies a head to get its bar, and weighs probing against verifying.
    gen = InstructionGenerator(seed=21, rare_words=400, long_rate=0.03)
    pool = gen.corpus(1500, near_duplicate_rate=0.15)
    queries = gen.candidates(pool, 40, near_duplicate_rate=0.3)
    idx, ref = RougeLIndex(), BruteForceRougeL()
    idx.extend(pool)
    ref.extend(pool)
    for query in queries:
        expected = ref.screen(query, k=10)
        assert idx.screen(query, k=10) == expected
        assert idx.exceeds(query) == expected.exceeded
    assert idx._stats[3] > 0 and idx._stats[1] < idx._stats[0]  # probed lists; verified fewer than seen


def test_stemming_index_equals_rouge_score_with_stemmer() -> None:
    gen = InstructionGenerator(seed=3, rare_words=100)
    pool = [t.replace("Write", "Writing").replace("poem", "poems") for t in gen.corpus(80, 0.3)]
    queries = gen.candidates(pool, 25, near_duplicate_rate=0.5) + ["Writes poems about oceans", "running dogs"]
    idx = RougeLIndex(tokenizer=RougeTokenizer(use_stemmer=True))
    ref = BruteForceRougeL(use_stemmer=True)
    idx.extend(pool)
    ref.extend(pool)
    for query in queries:
        assert idx.screen(query, k=5) == ref.screen(query, k=5)
    # Stemming changes the decision for inflected near-duplicates.
    assert _rouge_f("writing poems", "writes poem", use_stemmer=True) > _rouge_f("writing poems", "writes poem")


# --------------------------------------------------------------------------- many screenings


class _RougeReference:
    """Best rouge-score F of a candidate against a growing pool, computed with rouge-score's
    tokenizer and `_score_lcs`. A pair is scored unless its multiset-overlap bound is below
    the best score found so far (sound: LCS <= overlap); ties on the best score are all
    scored, so the lowest id among them is exact too."""

    def __init__(self) -> None:
        self.tokens: list[list[str]] = []
        self.vocab: dict[str, int] = {}
        self.counts = np.zeros((64, 64), dtype=np.int32)  # item x token counts

    def _col(self, token: str) -> int:
        col = self.vocab.setdefault(token, len(self.vocab))
        if col >= self.counts.shape[1]:
            self.counts = np.pad(self.counts, ((0, 0), (0, self.counts.shape[1])))
        return col

    def add(self, text: str) -> None:
        toks = tokenize.tokenize(text, None)
        row = len(self.tokens)
        if row >= self.counts.shape[0]:
            self.counts = np.pad(self.counts, ((0, self.counts.shape[0]), (0, 0)))
        for token, count in Counter(toks).items():
            col = self._col(token)
            self.counts[row, col] = count
        self.tokens.append(toks)

    def best(self, text: str) -> tuple[int | None, float]:
        cand = tokenize.tokenize(text, None)
        n = len(self.tokens)
        if not cand or not n:
            return None, 0.0
        qc = Counter(t for t in cand if t in self.vocab)
        if not qc:
            return None, 0.0
        cols = [self.vocab[t] for t in qc]
        overlap = np.minimum(self.counts[:n, cols], np.array(list(qc.values()))).sum(axis=1)
        lens = np.array([len(t) for t in self.tokens])
        with np.errstate(invalid="ignore", divide="ignore"):
            ub = np.where(overlap > 0, 2 * overlap / (lens + len(cand)), 0.0)
        best_id, best = None, 0.0
        for i in np.lexsort((np.arange(n), -ub)).tolist():
            if ub[i] < best - 1e-9 or ub[i] == 0:
                break
            f = rouge_scorer._score_lcs(self.tokens[i], cand).fmeasure
            if f > best or (f == best and f > 0 and (best_id is None or i < best_id)):
                best_id, best = i, f
        return best_id, float(best)


def test_twenty_thousand_screenings_match_rouge_score() -> None:
    """>= 20,000 candidates drawn from instruction-like text with many near-duplicates,
    each screened against a pool grown by insertion, as the bootstrapping loop does."""
    screenings = mismatches = exceeded = 0
    for stream in range(40):
        gen = InstructionGenerator(seed=1000 + stream, rare_words=150 + 20 * stream,
                                   long_rate=0.01, template_rate=0.6)
        idx, ref = RougeLIndex(), _RougeReference()
        seeds = gen.corpus(30, near_duplicate_rate=0.2)
        idx.extend(seeds)
        for text in seeds:
            ref.add(text)
        pool_texts = list(seeds)
        for _ in range(500):
            rng = gen.rng
            cand = gen.perturb(rng.choice(pool_texts)) if rng.random() < 0.35 else gen.fresh()
            expected_id, expected = ref.best(cand)
            s = idx.screen(cand, k=1)
            got = s.top[0] if s.top else (None, 0.0)
            screenings += 1
            exceeded += expected > 0.7
            mismatches += got != (expected_id, expected) or s.exceeded != (expected > 0.7)
            if screenings % 2:  # the exceed-only search, on every other candidate
                mismatches += idx.exceeds(cand) != (expected > 0.7)
            # Grow the pool: every accepted candidate, and some rejected ones too, so that
            # later candidates meet near-duplicates in the pool.
            if expected <= 0.7 or rng.random() < 0.3:
                idx.add(cand)
                ref.add(cand)
                pool_texts.append(cand)
    assert screenings >= 20_000
    assert mismatches == 0
    assert 0.15 < exceeded / screenings < 0.85  # both decisions well exercised


# --------------------------------------------------------------------------- API


def test_api_basics() -> None:
    idx = RougeLIndex()
    assert len(idx) == 0
    assert idx.max_score("anything") == (None, 0.0)
    assert idx.screen("anything") == Screening(False, [])
    assert idx.add("Write a poem about the sea.") == 0
    idx.extend(["List three ways to save money.", "", "!!!"])
    assert idx.add("Write a poem about the ocean.") == 4
    assert len(idx) == 5 and idx.text(1) == "List three ways to save money." and idx.text(2) == ""
    assert idx.exceeds("write a poem about the sea")
    assert not idx.exceeds("write a poem about the sea", threshold=1.0)
    assert idx.exceeds("completely different", threshold=-0.5)  # 0.0 > -0.5, as rouge-score
    assert not idx.exceeds("write a poem", threshold=math.nan)
    assert idx.top_k("write a poem about the sea", k=2) == [(0, 1.0), (4, _rouge_f("Write a poem about the ocean.", "write a poem about the sea"))]
    assert idx.screen("???", k=5) == Screening(False, [])  # no tokens: every score is 0
    assert idx.max_score("zebra") == (None, 0.0)
    with pytest.raises(ValueError):
        idx.screen("x", k=-1)


def test_a_very_long_item_takes_room_for_its_postings_only() -> None:
    # Room is reserved per chunk actually opened: 20,000 new tokens open 20,000 two-slot
    # chunks, not 20,000 of the largest size (that would be 330 MB).
    idx = RougeLIndex()
    long_text = " ".join(f"w{i}" for i in range(20_000))
    idx.add("w1 w2 w3")
    idx.add(long_text)
    assert idx.nbytes() < 10 * 2**20
    assert idx.top_k("w1 w2 w3", k=2) == [(0, 1.0), (1, _rouge_f(long_text, "w1 w2 w3"))]


def test_import_does_not_pull_heavy_dependencies() -> None:
    code = ("import sys, selfinstruct.similarity as s; s.RougeLIndex().add('x'); "
            "print('torch' in sys.modules, 'rouge_score' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False"]
