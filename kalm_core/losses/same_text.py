"""Identical texts inside a batch leave each other's softmax (KaLM §3.1 trains label-based tasks as pairs).

A classification batch with label-name positives holds the same positive many times, and a same-label clustering
batch holds a query that is another row's positive: such a candidate is not a negative of the query. For query i,
every candidate whose text is the query's own, or a positive of a row with the same query text, is masked out of
its softmax (its target stays). Forbidding repeated texts at batching instead kept whole label-based sources out of
training; this is the mask FlagEmbedding lacks (its #850, #1400).
"""

from __future__ import annotations

import numpy as np


def same_text_mask(queries: list[str], passages: list[str]) -> np.ndarray | None:
    """(N, N * G) bool for N queries and their group-major passages (row i*G is query i's positive); None when no
    candidate repeats a text, the common case for retrieval batches."""
    n = len(queries)
    group = len(passages) // n
    ids: dict[str, int] = {}
    p = np.array([ids.setdefault(t, len(ids)) for t in passages], dtype=np.int64)
    q = np.array([ids.setdefault(t, len(ids)) for t in queries], dtype=np.int64)
    if len(ids) == len(passages) + n:  # every text distinct: nothing to mask
        return None
    positive = p[::group]  # (N,)
    mask = (p[None, :] == positive[:, None]) | (p[None, :] == q[:, None])  # (N, N * G)
    _, first, counts = np.unique(q, return_inverse=True, return_counts=True)
    for label in np.flatnonzero(counts > 1):  # a query text asked twice: each row's positive masks for the other
        rows = np.flatnonzero(first == label)
        mask[rows] |= mask[rows].any(axis=0)
    targets = np.arange(n) * group
    mask[np.arange(n), targets] = False
    return mask if mask.any() else None
