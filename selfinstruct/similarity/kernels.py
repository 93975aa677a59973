"""The index's compiled inner loops (numba): appending items, and one query's search.

Everything here works on integer token codes and plain numpy arrays owned by
`RougeLIndex`, which grows them; a kernel that runs out of room returns early and is
called again (see `append_items`).

Posting lists are chained chunks in one arena, so that an item can be appended to a
token's list in O(1) while the pool grows: token c's list starts at chunk ``heads[c]``;
chunk j holds ``chunk_len[j]`` item ids at ``arena[chunk_start[j]:]`` and continues at
chunk ``chunk_next[j]`` (-1: the end). A new chunk is as large as the list already is
(between `MIN_CHUNK` and `MAX_CHUNK`), so the arena is at most about twice the postings
and a long list is a few long contiguous runs. Ids in a list increase.

A query (`search`) is prefix filtering with integer LCS bounds, then exact bit-parallel
LCS on the survivors:

1. Probe the query's distinct tokens rarest first. A probed list adds the query's count
   of that token to each of its items' ``hits``. With ``U`` query tokens not probed yet,
   an item's LCS is at most ``min(hits + U, its length, the query's length)``, and an item
   not seen yet has LCS at most ``U``, so its score is at most F(U, U, lc). Probing first
   goes until that cannot exceed the threshold. An item met for the first time whose
   length rules it out even with LCS ``U`` is not recorded at all (its bound only falls).
2. Verify a head of the most-hit items (a counting sort by hits): LCS by Hyyrö's
   bit-parallel algorithm against the query's per-token position masks, one 64-bit word
   per 64 query tokens, then rouge-score's float F. This gives a top-k query its bar (the
   k-th score) and lets an exceed query stop at a near-duplicate.
3. Probe on while an unseen item could still beat the bar, or while reading the next list
   costs less than verifying the items its looser bound would leave. The common tokens,
   whose lists are longest, are the ones left unread.
4. Verify every seen item whose bound can beat the bar, most hits first; a hits level
   whose bound cannot beat it ends the pass. The bar only rises and bounds only fall, so
   an item ruled out once stays out.

Scores are compared as rouge-score's own float expression (`rouge_f`): for fixed lengths
the float is non-decreasing in the LCS, and distinct fractions 2L/(a+b) with a, b below
millions differ by far more than a rounding error, so comparing the float of an upper
bound with the bar is exact.
"""

from __future__ import annotations

import numpy as np
from numba import njit

__all__ = ["MAX_CHUNK", "MIN_CHUNK", "append_items", "lcs_length", "rouge_f", "search"]

MIN_CHUNK = 2
MAX_CHUNK = 4096

_ONE = np.uint64(1)
_ALL = np.uint64(0xFFFFFFFFFFFFFFFF)
_M1 = np.uint64(0x5555555555555555)
_M2 = np.uint64(0x3333333333333333)
_M4 = np.uint64(0x0F0F0F0F0F0F0F0F)
_H01 = np.uint64(0x0101010101010101)


@njit(cache=True)
def rouge_f(lcs, len_target, len_prediction):
    """rouge-score's ROUGE-L F, operation for operation (see `scoring.rouge_l_f`)."""
    if lcs == 0 or len_target == 0 or len_prediction == 0:
        return 0.0
    precision = lcs / len_prediction
    recall = lcs / len_target
    return 2 * precision * recall / (precision + recall)


@njit(cache=True)
def _popcount(x):
    x = x - ((x >> _ONE) & _M1)
    x = (x & _M2) + ((x >> np.uint64(2)) & _M2)
    x = (x + (x >> np.uint64(4))) & _M4
    return np.int64((x * _H01) >> np.uint64(56))


# --------------------------------------------------------------------------- LCS


@njit(cache=True)
def _query_masks(qseq, qslot, n_terms):
    """Per query term (slot), a bit mask of its positions in the query."""
    m = len(qseq)
    words = (m + 63) // 64
    masks = np.zeros((n_terms, words), dtype=np.uint64)
    for p in range(m):
        s = qslot[qseq[p]] - 1
        masks[s, p >> 6] |= _ONE << np.uint64(p & 63)
    return masks


@njit(cache=True)
def _lcs(codes, start, length, qslot, masks, m, v):
    """LCS of the item ``codes[start:start+length]`` with the query whose position masks
    are ``masks`` (Hyyrö 2004): V starts all ones; per item token with match mask M,
    U = V & M and V = (V + U) | (V - U), the addition carrying across words (V - U never
    borrows: U is a subset of V). The LCS is the number of zero bits among the m."""
    words = masks.shape[1]
    if words == 1:
        x = _ALL
        for i in range(start, start + length):
            s = qslot[codes[i]]
            if s:
                u = x & masks[s - 1, 0]
                x = (x + u) | (x - u)
        x = ~x
        if m < 64:
            x &= (_ONE << np.uint64(m)) - _ONE
        return _popcount(x)
    for w in range(words):
        v[w] = _ALL
    for i in range(start, start + length):
        s = qslot[codes[i]]
        if s == 0:
            continue
        carry = np.uint64(0)
        for w in range(words):
            x = v[w]
            u = x & masks[s - 1, w]
            total = x + u
            c1 = total < x
            total2 = total + carry
            c2 = total2 < total
            v[w] = total2 | (x - u)
            carry = np.uint64(1) if (c1 or c2) else np.uint64(0)
    n = 0
    for w in range(words):
        x = ~v[w]
        if w == words - 1 and m % 64:
            x &= (_ONE << np.uint64(m % 64)) - _ONE
        n += _popcount(x)
    return n


@njit(cache=True)
def lcs_length(a, b, qslot):
    """LCS length of two code sequences (for tests). ``qslot`` is a zeroed int32 scratch
    indexed by code; it is zero again on return."""
    n_terms = _number_terms(a, qslot)
    masks = _query_masks(a, qslot, n_terms)
    v = np.empty(masks.shape[1], dtype=np.uint64)
    n = _lcs(b, 0, len(b), qslot, masks, len(a), v) if len(a) else 0
    for p in range(len(a)):
        qslot[a[p]] = 0
    return n


@njit(cache=True)
def _number_terms(qseq, qslot):
    """Give each distinct code of the query a slot 1, 2, ... in ``qslot``; return how many."""
    n = 0
    for p in range(len(qseq)):
        c = qseq[p]
        if qslot[c] == 0:
            n += 1
            qslot[c] = n
    return n


# --------------------------------------------------------------------------- building


@njit(cache=True)
def _room_needed(item_codes, s, e, item, tails, df, chunk_len, chunk_size, mark):
    """The new chunks and arena slots appending the item ``item_codes[s:e]`` takes: one
    chunk for each distinct token whose last chunk is full (or that has none yet)."""
    stamp = -(item + 1)  # distinct from the stamps `append_items` leaves
    chunks = arena = 0
    for i in range(s, e):
        c = item_codes[i]
        if mark[c] == stamp:
            continue
        mark[c] = stamp
        tail = tails[c]
        if tail < 0 or chunk_len[tail] == chunk_size[tail]:
            chunks += 1
            arena += min(max(df[c], MIN_CHUNK), MAX_CHUNK)
    return chunks, arena


@njit(cache=True)
def append_items(item_codes, offsets, codes, starts, lens, meta, heads, tails, df, chunk_start,
                 chunk_size, chunk_len, chunk_next, arena, mark):
    """Append the items ``item_codes[offsets[b]:offsets[b+1]]`` in order.

    ``meta`` is [items, codes used, chunks used, arena used, chunks needed, arena needed].
    Returns how many items were appended: fewer than all when an array ran short, with
    what the next item needs in ``meta[4:6]`` (the caller grows the arrays and calls again
    with the rest); an item is appended whole or not at all.
    """
    for b in range(len(offsets) - 1):
        s, e = offsets[b], offsets[b + 1]
        n = e - s
        item = meta[0]
        if item >= len(lens) or meta[1] + n > len(codes):
            meta[4] = meta[5] = 0
            return b
        chunks, room = _room_needed(item_codes, s, e, item, tails, df, chunk_len, chunk_size, mark)
        if meta[2] + chunks > len(chunk_start) or meta[3] + room > len(arena):
            meta[4], meta[5] = chunks, room
            return b
        starts[item] = meta[1]
        lens[item] = n
        for i in range(n):
            codes[meta[1] + i] = item_codes[s + i]
        meta[1] += n
        stamp = item + 1
        for i in range(s, e):
            c = item_codes[i]
            if mark[c] == stamp:  # a repeated token: one posting per item
                continue
            mark[c] = stamp
            tail = tails[c]
            if tail < 0 or chunk_len[tail] == chunk_size[tail]:
                size = min(max(df[c], MIN_CHUNK), MAX_CHUNK)
                j = meta[2]
                meta[2] += 1
                chunk_start[j] = meta[3]
                meta[3] += size
                chunk_size[j] = size
                chunk_len[j] = 0
                chunk_next[j] = -1
                if tail < 0:
                    heads[c] = j
                else:
                    chunk_next[tail] = j
                tails[c] = j
                tail = j
            arena[chunk_start[tail] + chunk_len[tail]] = item
            chunk_len[tail] += 1
            df[c] += 1
        meta[0] += 1
    return len(offsets) - 1


# --------------------------------------------------------------------------- search


@njit(cache=True)
def _beats(f, item, k, t, n_top, top_ids, top_f):
    """Whether an item scoring (at most) f could enter the result: f > t for an exceed
    query; for a top-k query any f > 0 until it holds k, then f above the k-th score, or
    equal to it with a lower id (ties rank by id)."""
    if k == 0:
        return f > t
    if n_top < k:
        return f > 0.0
    bar = top_f[k - 1]
    return f > bar or (f == bar and item < top_ids[k - 1])


@njit(cache=True)
def _unseen_can_beat(unprobed, lc, k, t, n_top, top_f):
    """Whether an item not seen yet (LCS at most ``unprobed``) could enter the result."""
    if unprobed <= 0:
        return False
    u = min(unprobed, lc)
    f = rouge_f(u, u, lc)
    if k == 0:
        return f > t
    return n_top < k or f >= top_f[k - 1]


@njit(cache=True)
def _offer(item, f, k, n_top, top_ids, top_f):
    """Insert (item, f) into the top k, ordered by f descending then id ascending."""
    pos = n_top
    while pos > 0 and (top_f[pos - 1] < f or (top_f[pos - 1] == f and top_ids[pos - 1] > item)):
        pos -= 1
    if pos >= k:
        return n_top
    end = min(n_top, k - 1)
    for i in range(end, pos, -1):
        top_ids[i] = top_ids[i - 1]
        top_f[i] = top_f[i - 1]
    top_ids[pos] = item
    top_f[pos] = f
    return min(n_top + 1, k)


# hits[item] holds the query occurrences of its probed tokens, and this flag once the
# item was verified (the counts stay far below it: at most the query's length).
_VERIFIED = 1 << 30
_HITS = _VERIFIED - 1
_NO_LIMIT = (1 << 31) - 1
# Reading a posting costs about a sixteenth of ranking and verifying an item (random
# reads of its hits, length and codes, then the LCS; tuned at 100K items). Past the point where no unseen item can matter, a token's list is
# still probed (tightening every seen item's bound) when it is shorter than this many
# times the number of seen items its bound would otherwise leave to verify.
_PROBE_PER_VERIFY = 16
# Items verified first, most hits first, to set a top-k query's bar (at least 2k), and to
# give an exceed query the chance to stop at a near-duplicate before probing further.
_HEAD_TOPK = 32
_HEAD_EXCEED = 8


@njit(cache=True)
def _probe(code, mult, heads, chunk_start, chunk_len, chunk_next, arena, hits, seen, n_seen, level, lens,
           len_lo, len_hi):
    """Add ``mult`` to the hits of every item in ``code``'s list, recording newly seen
    items in ``seen`` and keeping ``level[h]`` = the number of seen items with h hits.

    An item seen for the first time is skipped when its length is outside
    ``[len_lo, len_hi]``, where even its bound cannot beat the bar: its bound only
    falls, so if a later list holds it, it is skipped there too."""
    j = heads[code]
    while j >= 0:
        base = chunk_start[j]
        for x in range(chunk_len[j]):
            item = arena[base + x]
            h = hits[item]
            if h == 0:
                li = lens[item]
                if li < len_lo or li > len_hi:
                    continue
                seen[n_seen] = item
                n_seen += 1
            else:
                level[h & _HITS] -= 1
            hits[item] = h + mult
            level[(h & _HITS) + mult] += 1
        j = chunk_next[j]
    return n_seen


@njit(cache=True)
def _feasible_lengths(unprobed, lc, k, t, n_top, top_ids, top_f):
    """The item lengths at which an item not seen yet (LCS at most ``unprobed``) could
    beat the bar: F(min(u, li), li, lc) rises with li up to u and falls after, so it is
    an interval around u; (1, 0) when there is none."""
    u = min(unprobed, lc)
    if u <= 0 or not _beats(rouge_f(u, u, lc), -1, k, t, n_top, top_ids, top_f):
        return 1, 0
    lo = u
    while lo > 1 and _beats(rouge_f(lo - 1, lo - 1, lc), -1, k, t, n_top, top_ids, top_f):
        lo -= 1
    # Above u the score falls as 2u / (li + lc): double, then bisect, to the last length
    # that still beats (a bar of 0, as for a top k not full yet, never stops falling short).
    hi_ok, hi_bad = u, u + lc
    while _beats(rouge_f(u, hi_bad, lc), -1, k, t, n_top, top_ids, top_f):
        hi_ok = hi_bad
        if hi_bad >= _NO_LIMIT // 2:
            return lo, _NO_LIMIT
        hi_bad *= 2
    while hi_bad - hi_ok > 1:
        mid = (hi_ok + hi_bad) // 2
        if _beats(rouge_f(u, mid, lc), -1, k, t, n_top, top_ids, top_f):
            hi_ok = mid
        else:
            hi_bad = mid
    return lo, hi_ok


@njit(cache=True)
def _least_unprobed(lc, k, t, n_top, top_f):
    """The least LCS bound u (<= lc) whose best possible score, F(u, u, lc), could enter
    the result; lc + 1 when none can."""
    for u in range(1, lc + 1):
        f = rouge_f(u, u, lc)
        if k == 0:
            if f > t:
                return u
        elif n_top < k or f >= top_f[k - 1]:
            return u
    return lc + 1


@njit(cache=True)
def _verify(limit, lo, seen, n_seen, hits, level, unprobed, lc, k, t, n_top, top_ids, top_f, codes, starts,
            lens, qslot, masks, m, v, stats):
    """Verify the seen items with at least ``lo`` hits, most hits first, until ``limit``
    were verified or no remaining item's bound can beat the bar. ``level`` (items per
    hits count) sizes the counting sort. Returns ``(n_top, exceeded)``."""
    lo = max(lo, 1)
    if lo > m:
        return n_top, False
    slot = np.empty(m + 1, dtype=np.int64)  # next free place of each hits level
    pos = 0
    for h in range(m, lo - 1, -1):
        slot[h] = pos
        pos += level[h]
    ranked = np.full(pos, -1, dtype=np.int32)  # verified items leave holes
    for i in range(n_seen):
        item = seen[i]
        h = hits[item]
        if h >= lo and not h & _VERIFIED:
            ranked[slot[h]] = item
            slot[h] += 1
    done = 0
    for i in range(pos):
        item = ranked[i]
        if item < 0:
            continue
        if done >= limit and (k == 0 or n_top == k):
            break
        bound = min(hits[item] + unprobed, lc)
        # No item at this hits level or below can beat the bar.
        if not _beats(rouge_f(bound, bound, lc), -1, k, t, n_top, top_ids, top_f):
            break
        li = lens[item]
        if not _beats(rouge_f(min(bound, li), li, lc), item, k, t, n_top, top_ids, top_f):
            continue
        hits[item] |= _VERIFIED
        done += 1
        f = rouge_f(_lcs(codes, starts[item], li, qslot, masks, m, v), li, lc)
        if k == 0:
            if f > t:
                stats[1] += done
                return n_top, True
        elif f > 0.0 and _beats(f, item, k, t, n_top, top_ids, top_f):
            n_top = _offer(item, f, k, n_top, top_ids, top_f)
    stats[1] += done
    return n_top, False


@njit(cache=True)
def search(qseq, lc, k, t, codes, starts, lens, heads, df, chunk_start, chunk_len, chunk_next,
           arena, hits, seen, qslot, top_ids, top_f, stats):
    """Exceed search (k == 0: is any F > t?) or exact top-k search (k > 0).

    ``qseq``: the query's known token codes in order (a token no item has matches
    nothing, so dropping it leaves every LCS unchanged); ``lc``: its full token count.
    ``hits`` (per item), ``qslot`` (per code) are zeroed scratch, zero again on return;
    ``seen`` is scratch with room for every item. ``stats`` accumulates items seen,
    verified, postings read and lists probed. Returns ``(exceeded, n_top)``: for k == 0
    the decision, for k > 0 the number of results written to ``top_ids/top_f``.
    """
    m = len(qseq)
    n_terms = _number_terms(qseq, qslot)
    masks = _query_masks(qseq, qslot, n_terms)
    v = np.empty(masks.shape[1], dtype=np.uint64)
    # Distinct terms, rarest first, with their counts in the query.
    term_code = np.empty(n_terms, dtype=np.int64)
    term_mult = np.zeros(n_terms, dtype=np.int64)
    for p in range(m):
        s = qslot[qseq[p]] - 1
        term_code[s] = qseq[p]
        term_mult[s] += 1
    term_df = np.empty(n_terms, dtype=np.int64)
    for s in range(n_terms):
        term_df[s] = df[term_code[s]]
    order = np.argsort(term_df, kind="mergesort")
    level = np.zeros(m + 1, dtype=np.int64)

    unprobed = m
    n_seen = 0
    n_top = 0
    next_term = 0
    exceeded = False

    # 1. Probe until no unseen item can exceed the threshold (a top-k query has no bar
    #    of its own yet: it also wants k items seen).
    while next_term < n_terms:
        u = min(unprobed, lc)
        if not rouge_f(u, u, lc) > t and (k == 0 or n_seen >= k):
            break
        s = order[next_term]
        next_term += 1
        len_lo, len_hi = (1, _NO_LIMIT) if k else _feasible_lengths(unprobed, lc, k, t, n_top, top_ids, top_f)
        n_seen = _probe(term_code[s], term_mult[s], heads, chunk_start, chunk_len, chunk_next, arena, hits,
                        seen, n_seen, level, lens, len_lo, len_hi)
        unprobed -= term_mult[s]
        stats[2] += term_df[s]
        stats[3] += 1

    # 2. Verify the most promising few: a top-k query gets its bar, an exceed query may
    #    find its near-duplicate.
    if n_seen:
        head = _HEAD_EXCEED if k == 0 else max(_HEAD_TOPK, 2 * k)
        lo, count = m, level[m]  # the highest hits levels holding `head` items
        while lo > 1 and count < head:
            lo -= 1
            count += level[lo]
        if k == 0:
            lo = max(lo, _least_unprobed(lc, k, t, n_top, top_f) - unprobed)
        n_top, exceeded = _verify(head, lo, seen, n_seen, hits, level, unprobed, lc, k, t, n_top, top_ids, top_f,
                                  codes, starts, lens, qslot, masks, m, v, stats)

    # 3. Probe on while an unseen item could still beat the bar, or while probing the
    #    next list is cheaper than verifying what the looser bounds would leave.
    while not exceeded and next_term < n_terms:
        s = order[next_term]
        need = _least_unprobed(lc, k, t, n_top, top_f)
        if unprobed < need:
            pending = 0
            for h in range(max(need - unprobed, 1), m + 1):
                pending += level[h]
            if pending == 0 or term_df[s] >= _PROBE_PER_VERIFY * pending:
                break
        next_term += 1
        len_lo, len_hi = _feasible_lengths(unprobed, lc, k, t, n_top, top_ids, top_f)
        n_seen = _probe(term_code[s], term_mult[s], heads, chunk_start, chunk_len, chunk_next, arena, hits,
                        seen, n_seen, level, lens, len_lo, len_hi)
        unprobed -= term_mult[s]
        stats[2] += term_df[s]
        stats[3] += 1

    # 4. Verify every seen item whose bound can still beat the bar.
    if not exceeded and n_seen:
        lo = _least_unprobed(lc, k, t, n_top, top_f) - unprobed
        n_top, exceeded = _verify(n_seen, lo, seen, n_seen, hits, level, unprobed, lc, k, t, n_top, top_ids, top_f,
                                  codes, starts, lens, qslot, masks, m, v, stats)

    stats[0] += n_seen
    for i in range(n_seen):
        hits[seen[i]] = 0
    for p in range(m):
        qslot[qseq[p]] = 0
    return exceeded, n_top
