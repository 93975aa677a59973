"""Compact, append-only storage behind the index: growable numpy arrays and posting lists.

A million instructions hold ~20 million (token, item) pairs; as Python lists of ints that
would be ~0.7 GB of int objects and pointers, as int32 numpy buffers it is ~80 MB. Buffers
grow by doubling, so appends are amortised O(1), and reads hand out numpy views.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import DTypeLike

__all__ = ["GrowableArray", "PostingLists"]

_MIN_CAPACITY = 4
# A token's tail of recent postings is merged into its bucket-sorted main array once the
# tail holds at least this many ids and a quarter of main's.
_MERGE_MIN = 16


def _grown(buf: np.ndarray, size: int, needed: int) -> np.ndarray:
    """A copy of ``buf[:size]`` in a buffer with room for at least ``needed`` values."""
    new = np.empty(max(needed, 2 * len(buf), _MIN_CAPACITY), dtype=buf.dtype)
    new[:size] = buf[:size]
    return new


class GrowableArray:
    """A numpy array with amortised O(1) append (like ``array.array``, but a view handed
    out stays valid, because growing copies to a new buffer instead of resizing)."""

    __slots__ = ("_buf", "_size")

    def __init__(self, dtype: DTypeLike = np.int32) -> None:
        self._buf = np.empty(_MIN_CAPACITY, dtype=dtype)
        self._size = 0

    def __len__(self) -> int:
        return self._size

    @property
    def capacity(self) -> int:
        return len(self._buf)

    def append(self, value: int) -> None:
        if self._size == len(self._buf):
            self._buf = _grown(self._buf, self._size, self._size + 1)
        self._buf[self._size] = value
        self._size += 1

    def extend(self, values: np.ndarray) -> None:
        end = self._size + len(values)
        if end > len(self._buf):
            self._buf = _grown(self._buf, self._size, end)
        self._buf[self._size:end] = values
        self._size = end

    def view(self) -> np.ndarray:
        return self._buf[: self._size]

    @property
    def nbytes(self) -> int:
        return self._buf.nbytes


class PostingLists:
    """token code -> the ids of the items containing it, readable by length-bucket range.

    Each token's postings live in a "main" array sorted by (length bucket, id), with a
    parallel uint8 array of buckets, plus a "tail" of recent appends in id order. A query
    reading the buckets ``lo..hi`` takes one binary-searched slice of main and filters the
    short tail, so its cost does not grow with the number of buckets. The tail is merged
    into main when it reaches a quarter of main's size (an O(n) stable sort on the uint8
    buckets), which keeps appends amortised O(1).

    Each item appears at most once per token (the index posts distinct tokens), so a
    slice holds no duplicates; the search relies on that to update per-item counters with
    a plain fancy-index add.
    """

    __slots__ = ("_item_bucket", "_main", "_main_bucket", "_tail", "_tail_size", "presence", "df")

    def __init__(self, item_bucket: GrowableArray) -> None:
        # The index's item -> bucket array (read when merging tails and filtering them).
        self._item_bucket = item_bucket
        # Per token code (plain Python lists: the query path reads single entries, where
        # list indexing is much cheaper than numpy's):
        self._main: list[np.ndarray | None] = []
        self._main_bucket: list[np.ndarray | None] = []
        self._tail: list[np.ndarray | None] = []
        self._tail_size: list[int] = []
        self.presence: list[int] = []  # bitmask of the buckets the token occurs in
        self.df: list[int] = []  # number of items containing the token

    def _reserve_token(self, code: int) -> None:
        grow = code + 1 - len(self.df)
        if grow > 0:
            for lst in (self._main, self._main_bucket, self._tail):
                lst.extend([None] * grow)
            for counts in (self._tail_size, self.presence, self.df):
                counts.extend([0] * grow)

    def append(self, code: int, bucket: int, item: int) -> None:
        """Add ``item`` (greater than every id already posted for ``code``), whose length
        bucket is ``bucket`` (already recorded in the item -> bucket array)."""
        if code >= len(self.df):
            self._reserve_token(code)
        tail = self._tail[code]
        size = self._tail_size[code]
        if tail is None:
            tail = self._tail[code] = np.empty(_MIN_CAPACITY, dtype=np.int32)
        elif size == len(tail):
            main = self._main[code]
            if size >= _MERGE_MIN and (main is None or 4 * size >= len(main)):
                self._merge(code, np.empty(0, dtype=np.int32))
                size = 0
            else:
                tail = self._tail[code] = _grown(tail, size, size + 1)
        tail[size] = item
        self._tail_size[code] = size + 1
        self.presence[code] |= 1 << bucket
        self.df[code] += 1

    def extend(self, code: int, items: np.ndarray, buckets: np.ndarray) -> None:
        """Add sorted, distinct ``items`` (all greater than the ids already posted) with
        their length buckets, merging everything into main."""
        if code >= len(self.df):
            self._reserve_token(code)
        self._merge(code, items, buckets)
        mask = 0
        for b in np.unique(buckets).tolist():
            mask |= 1 << b
        self.presence[code] |= mask
        self.df[code] += len(items)

    def _merge(self, code: int, items: np.ndarray, buckets: np.ndarray | None = None) -> None:
        """Rebuild main from main + tail + ``items``, sorted stably by bucket."""
        parts, part_buckets = [], []
        if self._main[code] is not None:
            parts.append(self._main[code])
            part_buckets.append(self._main_bucket[code])
        size = self._tail_size[code]
        if size:
            tail = self._tail[code][:size]  # type: ignore[index]
            parts.append(tail)
            part_buckets.append(self._item_bucket.view()[tail])
        if len(items):
            parts.append(items)
            part_buckets.append(buckets if buckets is not None else self._item_bucket.view()[items])
        all_items = np.concatenate(parts)
        all_buckets = np.concatenate(part_buckets)
        order = np.argsort(all_buckets, kind="stable")  # ids stay increasing within a bucket
        self._main[code] = all_items[order]
        self._main_bucket[code] = all_buckets[order]
        self._tail_size[code] = 0

    def get(self, code: int, lo: int, hi: int) -> np.ndarray:
        """The ids of the items of length buckets ``lo..hi`` that contain ``code``."""
        parts = []
        main = self._main[code]
        presence = self.presence[code]
        whole = (presence >> lo) << lo == presence and presence >> (hi + 1) == 0
        if main is not None:
            if whole:
                parts.append(main)
            else:
                i0, i1 = self._main_bucket[code].searchsorted((lo, hi + 1))  # type: ignore[union-attr]
                if i1 > i0:
                    parts.append(main[i0:i1])
        size = self._tail_size[code]
        if size:
            tail = self._tail[code][:size]  # type: ignore[index]
            if not whole:
                tb = self._item_bucket.view()[tail]
                tail = tail[(tb >= lo) & (tb <= hi)]
            parts.append(tail)
        if not parts:
            return np.empty(0, dtype=np.int32)
        return parts[0] if len(parts) == 1 else np.concatenate(parts)

    @property
    def nbytes(self) -> int:
        arrays = [a for lst in (self._main, self._main_bucket, self._tail) for a in lst if a is not None]
        return sum(a.nbytes for a in arrays)
