"""An exact ROUGE-L similarity index: the same keep/reject decisions as rouge-score,
thousands of times faster than scoring every pool instruction.

Answering a query (a candidate instruction) touches few pool items (`RougeLIndex._search`):

1. Probe, rarest token first. Posting lists can be read by item-length range (see
   `buckets`); each item in a probed list gets ``hits += (the query's count of that
   token)``. In length bucket b an item not seen yet shares only the ``U_b`` still
   unprobed query tokens, so its LCS is at most ``min(U_b, len)``. Once even that cannot
   beat the bar (the threshold for an exceed query, the k-th best score so far for a
   top-k query) the bucket is settled and never read again: prefix filtering, per item
   length. A typical query reads only its rarer tokens' lists, and only at lengths near
   its own.
2. Bound each seen item's LCS by ``hits + min(U_b, signature overlap with the unprobed
   tokens)`` (`signature`: a 256-bit token-set hash), then by the number of the item's
   positions holding a query token (a scan of its stored codes). Cheapest first; items
   whose bound cannot beat the bar are dropped after each step. Bounds are integers and
   are compared with per-length integer thresholds derived from the float score.
3. Verify the rest, best bound first: exact LCS with rapidfuzz's bit-parallel ``LCSseq``
   (batched via ``process.cdist``) and rouge-score's exact float score. An exceed query
   stops at the first item over the threshold; a top-k query raises its bar with every
   batch and stops when no remaining bound, and no unsettled bucket, can beat it.

Scores use rouge-score's own float expression (see `scoring`), so ties at the threshold
(lengths 8 and 12 with LCS 7 score 0.7000000000000001 > 0.7) are decided as rouge-score
decides them.

Small pools (a few thousand items) are simply scanned whole with one batched rapidfuzz
call, which is cheaper there than the search's fixed per-query cost.

Not thread-safe: a query uses per-index scratch buffers. Use one index per thread or a lock.
"""

from __future__ import annotations

import logging
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Callable, Iterable

import numpy as np
from rapidfuzz import process
from rapidfuzz.distance import LCSseq

from .buckets import BUCKET_LO, N_BUCKETS, bucket_of, buckets_of
from .scoring import rouge_l_f_array
from .signature import SIG_WORDS, signature, signature_bit, signatures
from .storage import GrowableArray, PostingLists
from .tokenize import Tokenizer, as_tokenize_fn
from .vocab import CodeSeq, Vocabulary, codes_of

__all__ = ["RougeLIndex", "Screening"]

log = logging.getLogger(__name__)

_NEVER = np.iinfo(np.int64).max  # an LCS threshold no item can reach
_MASK64 = (1 << 64) - 1
# Texts tokenised and posted per batch in `extend`: bounds the temporary arrays.
_EXTEND_BATCH = 1 << 16
# Pools up to this size are scanned whole with rapidfuzz's batched LCS (~0.1 us per
# item), which beats the index's fixed per-query overhead; exceed queries switch to the
# index sooner because it answers them with far less work.
_BRUTE_MAX_TOPK = 6_000
_BRUTE_MAX_EXCEED = 3_000
# Consecutive tokens are probed together while their lists hold at most this many ids.
_PROBE_BATCH = 512
# A top-k query probes in rounds of at least this many postings before verifying, so
# that it has candidates to set its bar with; each later round may probe as much as all
# earlier rounds together.
_FIRST_ROUND_POSTINGS = 1024
# Before a top-k query has k scores it cannot prune; it first verifies this many (at
# least 2k) of its most promising items, to get a bar before bounding the rest.
_HEAD = 48
# Items verified per rapidfuzz batch; the batch doubles each time (up to the max) so an
# exceed query that finds its near-duplicate first stops early, and a top-k query raises
# its bar between batches.
_VERIFY_FIRST = 16
_VERIFY_MAX = 512


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


@dataclass(slots=True)
class _Query:
    length: int  # token count, unknown tokens included (rouge-score's len(prediction))
    seq: CodeSeq  # codes of the known tokens, in order
    terms: list[tuple[int, int]]  # (code, count in the query), rarest first
    # Signatures of terms[j:] for j = 0..len(terms), with their excess (tokens counted
    # minus bits set): the bound on what an item shares with the tokens not yet probed.
    suffix_sigs: np.ndarray  # (len(terms) + 1, SIG_WORDS) uint64
    suffix_excess: np.ndarray  # (len(terms) + 1,) int64


class RougeLIndex:
    """Exact ROUGE-L (rouge-score F-measure) nearest-neighbour and threshold index.

    Args:
        tokenizer: an object with ``tokenize(text) -> list[str]`` or a callable; defaults
            to rouge-score's tokenizer without stemming (Self-Instruct's setting). Use
            ``RougeTokenizer(use_stemmer=True)`` to match ``RougeScorer(use_stemmer=True)``.
        threshold: the default threshold for `exceeds` / `screen` (Self-Instruct: 0.7).

    Scores are rouge-score's ``scorer.score(pool_item, candidate)["rougeL"].fmeasure``
    (the expression is symmetric, so the argument order does not change the float).
    """

    def __init__(self, tokenizer: Tokenizer | Callable[[str], list[str]] | None = None,
                 threshold: float = 0.7) -> None:
        self.tokenizer = tokenizer
        self.threshold = float(threshold)
        self._tokenize = as_tokenize_fn(tokenizer)
        self._vocab = Vocabulary()
        self._texts: list[str] = []
        # Every item's token codes as rapidfuzz compares them fastest (see `vocab`), and
        # concatenated into one int32 array (for vectorised scans);
        # item i is _codes[_starts[i]:][:_lens[i]].
        self._seqs: list[CodeSeq] = []
        self._codes = GrowableArray(np.dtype("<i4"))
        self._starts = GrowableArray(np.int64)
        self._lens = GrowableArray(np.int32)
        self._max_len = 0
        self._bucket = GrowableArray(np.uint8)  # item -> length bucket
        self._bucket_count = np.zeros(N_BUCKETS, dtype=np.int64)
        self._postings = PostingLists(self._bucket)
        # item -> token-set signature, one array per 64-bit word (gathers are contiguous)
        self._sigs = [GrowableArray(np.uint64) for _ in range(SIG_WORDS)]
        # Query-time scratch, all zero between queries: per item, the probed-token hits;
        # per token code, the query's count of that token.
        self._hits = np.zeros(0, dtype=np.int32)
        self._qcount = np.zeros(0, dtype=np.int32)
        # Pool sizes up to which queries scan every item instead (tests lower these to
        # exercise the index on small pools).
        self._scan_limit_topk = _BRUTE_MAX_TOPK
        self._scan_limit_exceed = _BRUTE_MAX_EXCEED

    # ------------------------------------------------------------------ building

    def __len__(self) -> int:
        return len(self._texts)

    def text(self, item_id: int) -> str:
        """The text of item ``item_id`` as it was added."""
        return self._texts[item_id]

    def add(self, text: str) -> int:
        """Add one instruction; returns its id (0, 1, 2, ... in insertion order)."""
        seq = self._vocab.encode(self._tokenize(text))
        codes = _codes_array(seq)
        item = len(self._texts)
        n = len(codes)
        self._texts.append(text)
        self._seqs.append(seq)
        self._starts.append(len(self._codes))
        self._codes.extend(codes)
        self._lens.append(n)
        self._max_len = max(self._max_len, n)
        bucket = bucket_of(n)
        self._bucket.append(bucket)  # before posting: the posting lists read it
        self._bucket_count[bucket] += 1
        distinct = set(codes_of(seq))
        for code in distinct:
            self._postings.append(code, bucket, item)
        for column, word in zip(self._sigs, signature(distinct)):
            column.append(word)
        self._fit_scratch()
        return item

    def extend(self, texts: Iterable[str]) -> None:
        """Add many instructions (ids continue in order). Posting lists are built with a
        few vectorised passes per batch, so the cost is mostly tokenisation."""
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
        tokenize, encode = self._tokenize, self._vocab.encode
        seqs = [encode(tokenize(t)) for t in texts]
        base = len(self._texts)
        lens = np.fromiter(map(len, seqs), dtype=np.int64, count=len(seqs))
        if all(isinstance(s, str) for s in seqs):
            # One UTF-32 encode turns every code of the batch into an integer array.
            codes = np.frombuffer("".join(seqs).encode("utf-32-le"), dtype="<i4")  # type: ignore[arg-type]
        else:
            codes = np.fromiter((c for s in seqs for c in codes_of(s)), dtype="<i4", count=int(lens.sum()))
        item_buckets = buckets_of(lens)
        self._bucket.extend(item_buckets)  # before posting: the posting lists read it
        self._bucket_count += np.bincount(item_buckets, minlength=N_BUCKETS)
        # Distinct (code, item) pairs sorted by code then item: each code's run is its new
        # postings, already in increasing id order.
        items = np.repeat(np.arange(base, base + len(seqs), dtype=np.int32), lens)
        order = np.lexsort((items, codes))
        run_codes, items = codes[order], items[order]
        distinct = np.ones(len(items), dtype=bool)
        distinct[1:] = (run_codes[1:] != run_codes[:-1]) | (items[1:] != items[:-1])
        run_codes, items = run_codes[distinct], items[distinct]
        posting_buckets = item_buckets[items - base]
        run_starts = np.flatnonzero(np.diff(run_codes, prepend=-1))
        run_ends = np.append(run_starts[1:], len(items))
        for code, s, e in zip(run_codes[run_starts].tolist(), run_starts.tolist(), run_ends.tolist()):
            self._postings.extend(code, items[s:e], posting_buckets[s:e])
        self._texts.extend(texts)
        self._seqs.extend(seqs)
        self._starts.extend(len(self._codes) + np.cumsum(lens) - lens)
        self._codes.extend(codes)
        self._lens.extend(lens.astype(np.int32))
        if len(lens):
            self._max_len = max(self._max_len, int(lens.max()))
        sigs = signatures(codes, lens)
        for w, column in enumerate(self._sigs):
            column.extend(sigs[:, w])
        self._fit_scratch()

    def _fit_scratch(self) -> None:
        if len(self._hits) < self._lens.capacity:
            self._hits = np.zeros(self._lens.capacity, dtype=np.int32)
        if len(self._qcount) < self._vocab.code_bound:
            self._qcount = np.zeros(max(2 * len(self._qcount), self._vocab.code_bound), dtype=np.int32)

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
        seq = self._vocab.lookup(tokens)
        if n == 0 or not seq or (k == 0 and not t >= 0):
            # Every score is 0.0 (or there is nothing to score): 0.0 > t only for t < 0.
            return Screening(exceeded=n > 0 and 0.0 > t)
        if n <= (self._scan_limit_exceed if k == 0 else self._scan_limit_topk):
            exceeded, top = self._scan_all(seq, len(tokens), k, t)
            return Screening(exceeded, top)
        q = self._query(len(tokens), seq)
        if k == 0:
            return Screening(exceeded=self._search(q, 0, t)[0])
        _, top = self._search(q, k, t)
        best = top[0][1] if top else 0.0
        return Screening(exceeded=best > t, top=top)

    def _scan_all(self, seq: CodeSeq, lc: int, k: int, t: float) -> tuple[bool, list[tuple[int, float]]]:
        """Score every item (small pools): one batched rapidfuzz call."""
        lcs = process.cdist([seq], self._seqs, scorer=LCSseq.similarity, dtype=np.int32)[0]
        f = rouge_l_f_array(lcs, self._lens.view(), lc)
        if k == 0:
            return bool((f > t).any()), []
        hit = np.flatnonzero(f > 0)
        best = hit[np.lexsort((hit, -f[hit]))[:k]]
        top = list(zip(best.tolist(), f[best].tolist()))
        return (top[0][1] if top else 0.0) > t, top

    def _query(self, length: int, seq: CodeSeq) -> _Query:
        df = self._postings.df
        terms = list(Counter(codes_of(seq)).items())
        terms.sort(key=lambda cm: df[cm[0]])
        # Signatures of every suffix of the terms, built from the last term backwards.
        sig, occurrences = 0, 0  # the 256-bit signature as one Python int
        sigs, excess = [0], [0]
        for code, mult in reversed(terms):
            sig |= 1 << signature_bit(code)
            occurrences += mult
            sigs.append(sig)
            excess.append(occurrences - sig.bit_count())
        words = np.array([[(x >> (64 * w)) & _MASK64 for w in range(SIG_WORDS)] for x in reversed(sigs)],
                         dtype=np.uint64)
        return _Query(length, seq, terms, words, np.array(excess[::-1], dtype=np.int64))

    # ------------------------------------------------------------------ the search

    def _search(self, q: _Query, k: int, t: float) -> tuple[bool, list[tuple[int, float]]]:
        """Exceed search (k == 0: is any F > t?) or exact top-k search (k > 0).

        Returns (exceeded, top); ``exceeded`` is only meaningful for k == 0.
        """
        lc = q.length
        terms = q.terms
        postings = self._postings
        hits = self._hits
        qcount = self._qcount

        state = _SearchState(k, t, lc, sum(m for _, m in terms), self._bucket_count > 0, self._max_len)
        unprobed = state.unprobed  # numpy array, updated in place
        touched: list[np.ndarray] = []  # ids whose hits counter we raised, to reset
        fresh: list[np.ndarray] = []  # ids seen since the last bounding pass
        pending = _Queue()  # bounded, not yet verified
        next_term = 0
        probed = 0  # postings visited so far
        verify_n = _VERIFY_FIRST

        def probe(unsettled: np.ndarray) -> None:
            """Probe the next (rarest unprobed) token in the unsettled length buckets
            (the range spanning them; reading a settled bucket too is merely extra work),
            and the tokens after it while their lists stay short (one batch costs about
            what one token does, and probing more than needed is merely extra work)."""
            nonlocal next_term, probed
            spread = np.flatnonzero(unsettled)
            lo, hi = int(spread[0]), int(spread[-1])
            outside = ~(((1 << (hi + 1)) - 1) ^ ((1 << lo) - 1))
            lists: list[np.ndarray] = []
            mults: list[int] = []
            size = removed = 0
            while next_term < len(terms):
                code, mult = terms[next_term]
                if lists and size + postings.df[code] > _PROBE_BATCH:
                    break
                j = next_term
                next_term += 1
                removed += mult
                # Buckets holding the token that are not read keep it unprobed; everywhere
                # else it is probed (where no item has the token, for free).
                skipped = postings.presence[code] & outside
                if skipped:
                    unprobed[_bits(skipped)] += mult
                    state.skip(skipped, j)
                ids = postings.get(code, lo, hi)
                if len(ids):
                    lists.append(ids)
                    mults.append(mult)
                    size += len(ids)
                if size > _PROBE_BATCH:
                    break
            np.subtract(unprobed, removed, out=unprobed)
            state.probed_terms = next_term
            if not lists:
                return
            probed += size
            if len(lists) == 1:
                ids, add = lists[0], mults[0]
            else:  # an item may be in several lists: sum its increments first
                ids, inverse = np.unique(np.concatenate(lists), return_inverse=True)
                weights = np.repeat(np.array(mults, dtype=np.int64), [len(x) for x in lists])
                add = np.bincount(inverse, weights=weights).astype(np.int32)
            before = hits.take(ids)
            new = ids.compress(before == 0)
            before += add
            hits[ids] = before
            if len(new):
                touched.append(new)
                fresh.append(new)

        for code, mult in terms:
            qcount[code] = mult
        try:
            while True:
                # Probe until every length bucket is settled; a top-k query also stops
                # after a round's worth of postings, to verify what it has and raise its bar.
                budget = _FIRST_ROUND_POSTINGS + probed if k else sys.maxsize
                round_start = probed
                while probed - round_start < budget:
                    unsettled = state.unsettled()
                    if not unsettled.any():
                        break
                    probe(unsettled)
                if fresh:
                    ids = fresh[0] if len(fresh) == 1 else np.concatenate(fresh)
                    fresh.clear()
                    self._bound(ids, q, state, pending)
                # Verify, best bound first.
                while len(pending):
                    ids = pending.pop(verify_n)
                    verify_n = min(2 * verify_n, _VERIFY_MAX)
                    f = self._exact_scores(q.seq, ids, lc)
                    if k == 0:
                        if (f > t).any():
                            return True, []
                        continue
                    state.offer(ids, f)
                    pending.prune(state, self._lens.view())
                if not state.unsettled().any():
                    return False, state.top()
        finally:
            for ids in touched:
                hits[ids] = 0
            for code, _ in terms:
                qcount[code] = 0

    def _bound(self, ids: np.ndarray, q: _Query, state: _SearchState, pending: _Queue) -> None:
        """Bound newly seen items, cheapest bound first, and queue those that can matter."""
        lens = self._lens.view()
        item_lens = lens.take(ids)
        # Probed tokens found, plus what the item can share with the tokens not yet
        # probed in its bucket: at most U_b of them, and at most their signature overlap.
        item_buckets = self._bucket.view().take(ids)
        suffix = state.probed_prefix().take(item_buckets)
        unprobed_sigs = q.suffix_sigs.take(suffix, axis=0)
        shared = q.suffix_excess.take(suffix)
        for w in range(SIG_WORDS):
            shared += np.bitwise_count(self._sigs[w].view().take(ids) & unprobed_sigs[:, w])
        bound = self._hits.take(ids) + np.minimum(state.unprobed.take(item_buckets), shared)
        keep = state.keep(ids, bound, item_lens)
        ids, bound = ids.compress(keep), bound.compress(keep)
        if not len(ids):
            return
        if not state.has_bar() and len(ids) > max(_HEAD, 2 * state.k):
            # Nothing can be pruned yet: verify the most promising few to get a bar.
            item_lens = lens[ids]
            ub = rouge_l_f_array(np.minimum(np.minimum(bound, item_lens), state.lc), item_lens, state.lc)
            order = np.lexsort((ids, -ub))
            head, rest = ids[order[: max(_HEAD, 2 * state.k)]], order[max(_HEAD, 2 * state.k):]
            state.offer(head, self._exact_scores(q.seq, head, state.lc))
            ids, bound = ids[rest], bound[rest]
            keep = state.keep(ids, bound, lens[ids])
            ids, bound = ids[keep], bound[keep]
            if not len(ids):
                return
        # Forward bound: the item's positions that hold a query token.
        bound = np.minimum(bound, self._forward_overlap(ids))
        item_lens = lens[ids]
        keep = state.keep(ids, bound, item_lens)
        ids, bound, item_lens = ids[keep], bound[keep], item_lens[keep]
        ub = rouge_l_f_array(np.minimum(np.minimum(bound, item_lens), state.lc), item_lens, state.lc)
        pending.add(ids, ub, bound)

    def _forward_overlap(self, ids: np.ndarray) -> np.ndarray:
        """Per item, the number of its token positions whose token is in the query (an
        upper bound on its LCS with the query that does not depend on what was probed)."""
        item_lens = self._lens.view()[ids].astype(np.int64)
        ends = np.cumsum(item_lens)
        firsts = ends - item_lens
        # Positions of all the items' tokens in the concatenated code array.
        pos = np.repeat(self._starts.view()[ids] - firsts, item_lens) + np.arange(int(ends[-1]))
        in_query = (self._qcount[np.take(self._codes.view(), pos)] > 0).astype(np.int32)
        return np.add.reduceat(in_query, firsts)

    def _exact_scores(self, query: CodeSeq, ids: np.ndarray, lc: int) -> np.ndarray:
        """rouge-score's F for the query against each of ``ids``."""
        seqs = self._seqs
        lcs = process.cdist([query], [seqs[i] for i in ids.tolist()], scorer=LCSseq.similarity, dtype=np.int32)[0]
        return rouge_l_f_array(lcs, self._lens.view()[ids], lc)

    # ------------------------------------------------------------------ introspection

    @property
    def vocabulary_size(self) -> int:
        return len(self._vocab)

    def nbytes(self) -> int:
        """Approximate bytes held by the numpy parts (codes, postings, signatures, scratch)."""
        return (self._postings.nbytes + self._codes.nbytes + self._starts.nbytes + self._lens.nbytes
                + self._bucket.nbytes + sum(c.nbytes for c in self._sigs) + self._hits.nbytes
                + self._qcount.nbytes)


class _BarTables:
    """LCS thresholds for one bar, per item length (see `_SearchState`). Cached
    process-wide (a pure function of the key, arrays read-only): an exceed query's bar
    depends only on the threshold and the query's length."""

    __slots__ = ("need", "need_tie", "need_bucket")

    _cache: dict[tuple[float, int, bool, int], _BarTables] = {}

    def __init__(self, need: np.ndarray, need_tie: np.ndarray, need_bucket: np.ndarray) -> None:
        self.need, self.need_tie, self.need_bucket = need, need_tie, need_bucket

    @classmethod
    def any_score(cls, lc: int, max_len: int) -> _BarTables:
        """Bar for a top k that is not full yet: any F > 0, i.e. LCS >= 1."""
        key = (0.0, lc, False, -max_len - 1)
        tables = cls._cache.get(key)
        if tables is None:
            need = np.ones(max_len + 1, dtype=np.int64)
            need[0] = _NEVER
            tables = cls._store(key, cls(need, need, _bucket_need(need, max_len)))
        return tables

    @classmethod
    def beating(cls, bar: float, lc: int, max_len: int, strict_only: bool) -> _BarTables:
        """Thresholds for scores ``> bar`` (and, unless ``strict_only``, ``>= bar``)."""
        key = (bar, lc, strict_only, max_len)
        tables = cls._cache.get(key)
        if tables is not None:
            return tables
        li = np.arange(max_len + 1, dtype=np.int64)
        cap = np.minimum(li, lc)  # an LCS reaches neither length
        # The threshold lies within a couple of units of bar * (li + lc) / 2.
        base = np.maximum(np.floor(bar * (li + lc) / 2).astype(np.int64) - 1, 1)
        cand = base + np.arange(4)[:, None]
        f = rouge_l_f_array(np.minimum(cand, cap), np.maximum(li, 1), lc)
        ok = (cand <= cap) & (li > 0)
        strict = ok & (f > bar)
        need = np.where(strict.any(axis=0), base + strict.argmax(axis=0), _NEVER)
        if strict_only:
            need_tie = need
        else:
            tie = ok & (f >= bar)
            need_tie = np.where(tie.any(axis=0), base + tie.argmax(axis=0), _NEVER)
        return cls._store(key, cls(need, need_tie, _bucket_need(need_tie, max_len)))

    @classmethod
    def _store(cls, key: tuple[float, int, bool, int], tables: _BarTables) -> _BarTables:
        for array in (tables.need, tables.need_tie, tables.need_bucket):
            array.flags.writeable = False
        if len(cls._cache) >= 8192:
            cls._cache.clear()
        cls._cache[key] = tables
        return tables


def _bucket_need(need: np.ndarray, max_len: int) -> np.ndarray:
    """Per bucket, the least U at which an unseen item there could beat the bar: its LCS
    is at most min(U, len), so some length in the bucket must have need[len] <= U (need
    is _NEVER where need > len)."""
    per_bucket = np.full(N_BUCKETS, _NEVER, dtype=np.int64)
    reachable = int(np.searchsorted(BUCKET_LO, max_len, side="right"))  # buckets with lo <= max_len
    per_bucket[:reachable] = np.minimum.reduceat(need, BUCKET_LO[:reachable])
    return per_bucket


class _SearchState:
    """The bar a pool item must beat, as integer LCS thresholds, and the top k so far.

    For an item of length ``li`` the bar is an LCS threshold: ``need[li]`` is the least
    LCS whose rouge-score float beats the bar (``> t`` for an exceed query, ``> k-th
    score`` for a full top-k) and ``need_tie[li]`` the least that reaches it (a tie with
    the k-th score enters with a lower id). The float score is non-decreasing in the LCS
    (consecutive values differ by far more than the rounding), so "bound >= need" is
    exactly "the bound's score beats the bar", and bounds never need scoring.
    """

    __slots__ = ("k", "t", "lc", "max_len", "unprobed", "probed_terms", "_alive", "_stopped_at",
                 "_populated", "_tables", "_need_bucket", "_top_ids", "_top_f")

    def __init__(self, k: int, t: float, lc: int, unprobed: int, populated: np.ndarray, max_len: int) -> None:
        self.k, self.t, self.lc, self.max_len = k, t, lc, max_len
        # Per length bucket, U: the query's occurrences of tokens not probed there.
        self.unprobed = np.full(N_BUCKETS, unprobed, dtype=np.int64)
        # Terms are probed in order; in a bucket, the probed ones are a prefix of them
        # until the first term skipped there (see `probed_prefix`).
        self.probed_terms = 0
        self._alive = (1 << N_BUCKETS) - 1  # buckets where no term was skipped yet
        self._stopped_at = np.full(N_BUCKETS, -1, dtype=np.int64)
        self._populated = populated.copy()
        self._populated[0] = False  # empty items always score 0
        self._top_ids = np.empty(0, dtype=np.int32)
        self._top_f = np.empty(0, dtype=np.float64)
        if k == 0:
            self._use(_BarTables.beating(t, lc, max_len, strict_only=True))
        else:
            self._use(_BarTables.any_score(lc, max_len))

    def skip(self, buckets: int, term: int) -> None:
        """Record that ``term`` was not probed in the buckets of bitmask ``buckets``."""
        dropped = self._alive & buckets
        if dropped:
            self._alive &= ~dropped
            self._stopped_at[_bits(dropped)] = term

    def probed_prefix(self) -> np.ndarray:
        """Per bucket, how many of the first terms were all probed there (terms after
        may have been probed too: the suffix is a superset of what is unprobed)."""
        return np.where(self._stopped_at < 0, self.probed_terms, self._stopped_at)

    def _use(self, tables: _BarTables) -> None:
        self._tables = tables
        self._need_bucket = np.where(self._populated, tables.need_bucket, _NEVER)

    def unsettled(self) -> np.ndarray:
        """Mask of the length buckets where an item not seen yet could beat the bar."""
        return self.unprobed >= self._need_bucket

    def has_bar(self) -> bool:
        """Whether items can be pruned yet (a top-k query needs k scores first)."""
        return self.k == 0 or len(self._top_ids) == self.k

    def keep(self, ids: np.ndarray, bound: np.ndarray, item_lens: np.ndarray) -> np.ndarray:
        """Mask of the items whose LCS bound could still beat the bar."""
        beats = bound >= self._tables.need.take(item_lens)
        if self.k == 0 or len(self._top_ids) < self.k:
            return beats
        return beats | ((bound >= self._tables.need_tie[item_lens]) & (ids < self._top_ids[-1]))

    def offer(self, ids: np.ndarray, f: np.ndarray) -> None:
        """Merge verified scores into the top k (F > 0 only)."""
        hit = f > 0
        if not hit.any():
            return
        all_ids = np.concatenate((self._top_ids, ids[hit]))
        all_f = np.concatenate((self._top_f, f[hit]))
        best = np.lexsort((all_ids, -all_f))[: self.k]
        was_full = len(self._top_ids) == self.k
        bar_before = self._top_f[-1] if was_full else None
        self._top_ids, self._top_f = all_ids[best], all_f[best]
        if len(self._top_ids) == self.k and (not was_full or self._top_f[-1] != bar_before):
            self._use(_BarTables.beating(float(self._top_f[-1]), self.lc, self.max_len, strict_only=False))

    def top(self) -> list[tuple[int, float]]:
        return list(zip(self._top_ids.tolist(), self._top_f.tolist()))


class _Queue:
    """Item ids with LCS bounds, popped best score bound first (ties: lower id first)."""

    __slots__ = ("ids", "ub", "bound", "_sorted")

    def __init__(self) -> None:
        self.ids = np.empty(0, dtype=np.int32)
        self.ub = np.empty(0, dtype=np.float64)
        self.bound = np.empty(0, dtype=np.int64)
        self._sorted = True

    def __len__(self) -> int:
        return len(self.ids)

    def add(self, ids: np.ndarray, ub: np.ndarray, bound: np.ndarray) -> None:
        if len(ids):
            self.ids = np.concatenate((self.ids, ids))
            self.ub = np.concatenate((self.ub, ub))
            self.bound = np.concatenate((self.bound, bound))
            self._sorted = False

    def prune(self, state: _SearchState, lens: np.ndarray) -> None:
        """Drop the items whose bound cannot beat the bar (order is preserved)."""
        if len(self.ids):
            keep = state.keep(self.ids, self.bound, lens[self.ids])
            if not keep.all():
                self.ids, self.ub, self.bound = self.ids[keep], self.ub[keep], self.bound[keep]

    def pop(self, n: int) -> np.ndarray:
        if not self._sorted:
            order = np.lexsort((self.ids, -self.ub))
            self.ids, self.ub, self.bound = self.ids[order], self.ub[order], self.bound[order]
            self._sorted = True
        head = self.ids[:n]
        self.ids, self.ub, self.bound = self.ids[n:], self.ub[n:], self.bound[n:]
        return head


@lru_cache(maxsize=1 << 14)
def _bits(mask: int) -> np.ndarray:
    """A bucket bitmask as a (read-only, cached) bool array of N_BUCKETS."""
    raw = np.frombuffer(mask.to_bytes(32, "little"), dtype=np.uint8)
    bits = np.unpackbits(raw, bitorder="little")[:N_BUCKETS].astype(bool)
    bits.flags.writeable = False
    return bits


def _codes_array(seq: CodeSeq) -> np.ndarray:
    if isinstance(seq, str):
        return np.frombuffer(seq.encode("utf-32-le"), dtype="<i4")
    return np.array(seq, dtype="<i4")
