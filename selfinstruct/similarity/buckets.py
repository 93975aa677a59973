"""Length buckets: items are grouped by token count so a query can skip whole lengths.

ROUGE-L's F is at most 2*min(la, lb)/(la + lb), so an item much shorter or longer than
the query can never reach the threshold, and after some tokens have been probed the
lengths that can still matter shrink to a window around the number of unprobed tokens.
Buckets are single lengths up to 10 tokens and then grow by ~12.5% (11, 12, ..., 16,
18-19, 20-21, ..., 64-71, ...), which keeps each bucket's length range narrow relative to
the lengths in it while capping the count at under 256 (a bucket fits in a byte).
"""

from __future__ import annotations

import numpy as np

__all__ = ["BUCKET_LO", "BUCKET_HI", "N_BUCKETS", "bucket_of", "buckets_of"]


def _edges() -> list[int]:
    edges = list(range(0, 11))  # bucket 0 holds the empty items (length 0)
    while edges[-1] < 2**31:
        edges.append(max(edges[-1] + 1, int(edges[-1] * 1.125)))
    return edges


_EDGES = np.array(_edges(), dtype=np.int64)
N_BUCKETS = len(_EDGES) - 1
assert N_BUCKETS < 256
# Bucket b holds lengths BUCKET_LO[b] .. BUCKET_HI[b] inclusive.
BUCKET_LO = _EDGES[:-1].copy()
BUCKET_HI = _EDGES[1:] - 1
_SMALL = 4096
_SMALL_TABLE = (np.searchsorted(_EDGES, np.arange(_SMALL), side="right") - 1).astype(np.uint8)


def bucket_of(length: int) -> int:
    """The bucket of an item with ``length`` tokens."""
    if length < _SMALL:
        return int(_SMALL_TABLE[length])
    return int(np.searchsorted(_EDGES, length, side="right")) - 1


def buckets_of(lengths: np.ndarray) -> np.ndarray:
    """Vectorised `bucket_of` (uint8)."""
    return (np.searchsorted(_EDGES, lengths, side="right") - 1).astype(np.uint8)
