"""An exact ROUGE-L similarity index: the same keep/reject decisions as rouge-score,
thousands of times faster than scoring every pool instruction.

This module is the Python side: tokenising, interning tokens as integer codes, and the
numpy arrays the compiled kernels (`kernels`) read and grow. How a query avoids touching
most of the pool, and why its float comparisons are exact, is told in `kernels`.

Scores are rouge-score's ``RougeScorer(["rougeL"]).score(pool_item, candidate)`` F-measure
(the expression is symmetric, so the argument order does not change the float), so ties
at the threshold (lengths 8 and 12 with LCS 7 score 0.7000000000000001 > 0.7) are decided
as rouge-score decides them.

Not thread-safe: a query uses per-index scratch arrays. Use one index per thread or a lock.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Callable, Iterable

import numpy as np

from .tokenize import Tokenizer, as_tokenize_fn

__all__ = ["RougeLIndex", "Screening"]

log = logging.getLogger(__name__)

# Texts tokenised and appended per kernel call in `extend`: bounds the temporary arrays.
_EXTEND_BATCH = 1 << 14


@dataclass(frozen=True, slots=True)
class Screening:
    """The result of screening one candidate against the pool.

    Attributes:
        exceeded: whether some pool item's rouge-score ROUGE-L F is ``> threshold``.
        top: up to k ``(item_id, F)`` pairs with F > 0, sorted by F descending then id
            ascending, with exact rouge-score scores. Empty when k == 0.
    """

    exceeded: bool
    top: list[tuple[int, float]] = field(default_factory=list)


def _kernels():
    # numba compiles (or loads from its cache) on first use; importing the package
    # should not pay for that.
    try:
        from . import kernels
    except ImportError as e:  # pragma: no cover - numba is a declared dependency
        raise ImportError(f"the ROUGE-L index needs numba ({e}); run: pip install numba") from e
    return kernels


def _grown(buf: np.ndarray, needed: int, fill: int | None = None) -> np.ndarray:
    """``buf``, or a copy with room for at least ``needed`` values (doubling)."""
    if len(buf) >= needed:
        return buf
    new = np.empty(max(needed, 2 * len(buf), 16), dtype=buf.dtype)
    new[: len(buf)] = buf
    if fill is not None:
        new[len(buf):] = fill
    return new


class RougeLIndex:
    """Exact ROUGE-L (rouge-score F-measure) nearest-neighbour and threshold index.

    Args:
        tokenizer: an object with ``tokenize(text) -> list[str]`` or a callable; defaults
            to rouge-score's tokenizer without stemming (Self-Instruct's setting). Use
            ``RougeTokenizer(use_stemmer=True)`` to match ``RougeScorer(use_stemmer=True)``.
        threshold: the default threshold for `exceeds` / `screen` (Self-Instruct: 0.7).
    """

    def __init__(self, tokenizer: Tokenizer | Callable[[str], list[str]] | None = None,
                 threshold: float = 0.7) -> None:
        self.tokenizer = tokenizer
        self.threshold = float(threshold)
        self._tokenize = as_tokenize_fn(tokenizer)
        self._k = _kernels()
        self._vocab: dict[str, int] = {}
        self._texts: list[str] = []
        # [items, codes used, chunks used, arena used, chunks and arena the next item
        # needs], updated by the kernels.
        self._meta = np.zeros(6, dtype=np.int64)
        # Per item: where its codes start in `_codes`, its token count; query scratch.
        self._starts = np.empty(0, dtype=np.int64)
        self._lens = np.empty(0, dtype=np.int32)
        self._hits = np.zeros(0, dtype=np.int32)
        self._seen = np.empty(0, dtype=np.int32)
        self._codes = np.empty(0, dtype=np.int32)  # every item's token codes, concatenated
        # Per token code: its posting list (first and last chunk), length, and scratch.
        self._heads = np.empty(0, dtype=np.int32)
        self._tails = np.empty(0, dtype=np.int32)
        self._df = np.empty(0, dtype=np.int32)
        self._mark = np.empty(0, dtype=np.int32)
        self._qslot = np.empty(0, dtype=np.int32)
        # Posting-list chunks and the arena holding their ids (see `kernels`).
        self._chunk_start = np.empty(0, dtype=np.int64)
        self._chunk_size = np.empty(0, dtype=np.int32)
        self._chunk_len = np.empty(0, dtype=np.int32)
        self._chunk_next = np.empty(0, dtype=np.int32)
        self._arena = np.empty(0, dtype=np.int32)
        # Search counters, summed over queries: items seen, verified, postings read, lists probed.
        self._stats = np.zeros(4, dtype=np.int64)

    # ------------------------------------------------------------------ building

    def __len__(self) -> int:
        return len(self._texts)

    def text(self, item_id: int) -> str:
        """The text of item ``item_id`` as it was added."""
        return self._texts[item_id]

    def add(self, text: str) -> int:
        """Add one instruction; returns its id (0, 1, 2, ... in insertion order)."""
        codes = self._encode(self._tokenize(text))
        self._append(np.array(codes, dtype=np.int32), np.array([0, len(codes)], dtype=np.int64), [text])
        return len(self._texts) - 1

    def extend(self, texts: Iterable[str]) -> None:
        """Add many instructions (ids continue in order); faster than `add` one by one."""
        start, t0 = len(self._texts), time.perf_counter()
        batch: list[str] = []
        for text in texts:
            batch.append(text)
            if len(batch) == _EXTEND_BATCH:
                self._extend_batch(batch)
                batch = []
        if batch:
            self._extend_batch(batch)
        log.debug("indexed %d instructions in %.2fs (pool %d, vocabulary %d)",
                  len(self._texts) - start, time.perf_counter() - t0, len(self._texts), len(self._vocab))

    def _extend_batch(self, texts: list[str]) -> None:
        tokenize, encode = self._tokenize, self._encode
        seqs = [encode(tokenize(t)) for t in texts]
        lens = np.fromiter(map(len, seqs), dtype=np.int64, count=len(seqs))
        offsets = np.zeros(len(seqs) + 1, dtype=np.int64)
        np.cumsum(lens, out=offsets[1:])
        codes = np.fromiter((c for s in seqs for c in s), dtype=np.int32, count=int(offsets[-1]))
        self._append(codes, offsets, texts)

    def _encode(self, tokens: list[str]) -> list[int]:
        """Token codes, interning new tokens."""
        vocab = self._vocab
        try:
            return [vocab[t] for t in tokens]
        except KeyError:
            for t in tokens:
                if t not in vocab:
                    vocab[t] = len(vocab)
            return [vocab[t] for t in tokens]

    def _append(self, codes: np.ndarray, offsets: np.ndarray, texts: list[str]) -> None:
        """Append items (``codes[offsets[b]:offsets[b+1]]`` is item b), growing the
        arrays whenever the kernel stops for room."""
        self._fit_vocab()
        done, total = 0, len(texts)
        while True:
            rest = offsets[done:]
            n = self._k.append_items(codes, rest, self._codes, self._starts, self._lens, self._meta,
                                     self._heads, self._tails, self._df, self._chunk_start, self._chunk_size,
                                     self._chunk_len, self._chunk_next, self._arena, self._mark)
            done += n
            if done == total:
                break
            self._make_room(total - done, int(offsets[-1] - offsets[done]))
        self._texts.extend(texts)
        if len(self._hits) < len(self._lens):
            self._hits = np.zeros(len(self._lens), dtype=np.int32)
            self._seen = np.empty(len(self._lens), dtype=np.int32)

    def _make_room(self, items_left: int, codes_left: int) -> None:
        """Grow what `append_items` found short (all by doubling: amortised O(1))."""
        items, used_codes, chunks, arena, chunks_needed, arena_needed = (int(x) for x in self._meta)
        self._starts = _grown(self._starts, items + items_left)
        self._lens = _grown(self._lens, items + items_left)
        self._codes = _grown(self._codes, used_codes + codes_left)
        self._chunk_start = _grown(self._chunk_start, chunks + chunks_needed)
        self._chunk_size = _grown(self._chunk_size, len(self._chunk_start))
        self._chunk_len = _grown(self._chunk_len, len(self._chunk_start))
        self._chunk_next = _grown(self._chunk_next, len(self._chunk_start))
        self._arena = _grown(self._arena, arena + arena_needed)

    def _fit_vocab(self) -> None:
        n = len(self._vocab)
        if len(self._heads) < n:
            self._heads = _grown(self._heads, n, fill=-1)
            self._tails = _grown(self._tails, n, fill=-1)
            self._df = _grown(self._df, n, fill=0)
            self._mark = _grown(self._mark, n, fill=0)
            self._qslot = _grown(self._qslot, n, fill=0)

    # ------------------------------------------------------------------ queries

    def max_score(self, text: str) -> tuple[int | None, float]:
        """The most similar item and its exact rouge-score F (lowest id among ties);
        ``(None, 0.0)`` when the pool is empty or no item shares a token with ``text``."""
        top = self.screen(text, k=1).top
        return top[0] if top else (None, 0.0)

    def exceeds(self, text: str, threshold: float | None = None) -> bool:
        """Whether any item's rouge-score F with ``text`` is ``> threshold`` (strictly),
        exactly as rouge-score decides it, float rounding included."""
        return self.screen(text, k=0, threshold=threshold).exceeded

    def top_k(self, text: str, k: int = 10) -> list[tuple[int, float]]:
        """The k most similar items as ``(id, F)``, F descending then id ascending, exact
        rouge-score scores. Items with F == 0 (no shared token) are never listed, so fewer
        than k pairs come back when fewer than k items share a token with ``text``."""
        return self.screen(text, k=k).top

    def screen(self, text: str, k: int = 10, threshold: float | None = None) -> Screening:
        """One call per candidate: the exceed decision plus the top-k list.

        ``exceeded`` equals ``max over the pool of rouge-score F > threshold``. With
        k == 0 the search stops at the first item over the threshold; with k > 0 it finds
        the exact top k (whose first entry settles the decision).
        """
        if k < 0:
            raise ValueError(f"k must be >= 0, got {k}")
        t = self.threshold if threshold is None else float(threshold)
        n = len(self._texts)
        tokens = self._tokenize(text)
        vocab = self._vocab
        # A token no item has matches nothing: dropping it leaves every LCS unchanged
        # (it still counts in the candidate's length).
        known = [c for tok in tokens if (c := vocab.get(tok)) is not None]
        if n == 0 or not known or (k == 0 and not t >= 0):
            # Every score is 0.0 (or there is nothing to score): 0.0 > t only for t < 0.
            return Screening(exceeded=n > 0 and 0.0 > t)
        top_ids = np.empty(k, dtype=np.int32)
        top_f = np.empty(k, dtype=np.float64)
        exceeded, n_top = self._k.search(
            np.array(known, dtype=np.int32), len(tokens), k, t, self._codes, self._starts, self._lens,
            self._heads, self._df, self._chunk_start, self._chunk_len, self._chunk_next, self._arena,
            self._hits, self._seen, self._qslot, top_ids, top_f, self._stats)
        if k == 0:
            return Screening(exceeded=bool(exceeded))
        top = list(zip(top_ids[:n_top].tolist(), top_f[:n_top].tolist()))
        return Screening(exceeded=(top[0][1] if top else 0.0) > t, top=top)

    # ------------------------------------------------------------------ introspection

    @property
    def vocabulary_size(self) -> int:
        return len(self._vocab)

    def nbytes(self) -> int:
        """Bytes held by the numpy arrays (codes, postings, per-item and per-token tables,
        scratch); the texts and the vocabulary dict come on top."""
        return sum(a.nbytes for a in (
            self._meta, self._starts, self._lens, self._hits, self._seen, self._codes, self._heads, self._tails,
            self._df, self._mark, self._qslot, self._chunk_start, self._chunk_size, self._chunk_len,
            self._chunk_next, self._arena))
