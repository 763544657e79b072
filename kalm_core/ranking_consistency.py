"""Ranking-consistency filtering (KaLM §3.2, technique (2)).

Each query is searched against its own source's corpus (every positive and negative of the source once, plus an
optional candidate pool; kalm_core/filtering.py builds it). A pair whose positive does not rank within the top k is dropped: its query is too
broad, and it would poison hard-negative mining. Ranks are 0-based and ignore the query's own text and the
query's other positives, which are not competitors.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from kalm_core.config import FilterConfig


@dataclass(frozen=True)
class Window:
    """The drop threshold k and the mining window [lo, hi), shrunk for a corpus smaller than hi."""

    top_k: int
    lo: int
    hi: int
    shrunk: bool

    @classmethod
    def for_corpus(cls, size: int, cfg: FilterConfig) -> "Window":
        lo, hi = cfg.window
        if size > hi:
            return cls(cfg.top_k, lo, hi, False)
        scale = size / hi  # keep k and the window at the same share of the (small) corpus
        k = max(1, round(cfg.top_k * scale))
        return cls(k, max(1, round(lo * scale)), max(1, size - 1), True)


@dataclass
class Ranked:
    """Per pair: the positive's rank and score, and the retrieved candidates (excluded items removed)."""

    ranks: np.ndarray  # (P,) int64
    pos_scores: np.ndarray  # (P,) float32
    cand_ids: np.ndarray  # (P, depth) int64: corpus ids in rank order, -1 past the end of a short list
    cand_scores: np.ndarray  # (P, depth) float32

    @classmethod
    def unranked(cls, pairs: int) -> "Ranked":
        """No ranking (filter.enabled false): no candidates, so mining takes given negatives and fills at random."""
        return cls(np.zeros(pairs, np.int64), np.zeros(pairs, np.float32), np.full((pairs, 0), -1, np.int64),
                   np.zeros((pairs, 0), np.float32))

    def window(self, i: int, lo: int, hi: int) -> list[tuple[int, float]]:
        """Pair i's candidates ranked in [lo, hi): (corpus id, score)."""
        ids = self.cand_ids[i, lo:hi]
        ids = ids[ids >= 0]
        return list(zip(ids.tolist(), self.cand_scores[i, lo:lo + len(ids)].tolist()))


def rank_positives(q_emb: np.ndarray, corpus_emb: np.ndarray, pos_ids: np.ndarray,
                   excluded: list[set[int]], depth: int, chunk: int = 4096) -> Ranked:
    """q_emb (P, D) one row per pair; pos_ids (P,) the positive's corpus id; excluded[i] ids that never count."""
    if len(pos_ids) == 0:  # no pairs, so no corpus
        return Ranked(np.zeros(0, np.int64), np.zeros(0, np.float32), np.zeros((0, depth), np.int64),
                      np.zeros((0, depth), np.float32))
    extra = max((len(e) for e in excluded), default=0)
    from kalm_core.search import count_above, topk  # torch: imported when a filter ranks (off: never)

    scores, ids = topk(q_emb, corpus_emb, depth + extra, chunk)  # (P, depth + extra)
    pos_scores = np.einsum("pd,pd->p", q_emb, corpus_emb[pos_ids]).astype(np.float32)
    # array work over all pairs at once (a Python loop over 100k pairs x 100 candidates took 12 s)
    rows = np.arange(len(pos_ids), dtype=np.int64)
    ex = np.full((len(pos_ids), max(extra, 1)), -2, dtype=np.int64)  # each pair's few excluded ids, -2 padded
    for i, e in enumerate(excluded):
        ex[i, :len(e)] = list(e)
    is_excluded = np.zeros(ids.shape, dtype=bool)  # (P, K)
    for j in range(ex.shape[1]):
        is_excluded |= ids == ex[:, j:j + 1]
    is_pos = (ids == pos_ids[:, None]) & (ids >= 0)
    counts = (ids >= 0) & ~is_pos & ~is_excluded  # the competitors, in rank order
    ahead = np.cumsum(counts, axis=1)  # competitors up to each position
    found = is_pos.any(axis=1)
    ranks = np.where(found, ahead[rows, is_pos.argmax(axis=1)], -1).astype(np.int64)
    order = np.argsort(~counts, axis=1, kind="stable")[:, :depth]  # competitors first, rank order kept
    cand_ids = np.where(np.take_along_axis(counts, order, axis=1), np.take_along_axis(ids, order, axis=1), -1)
    cand_scores = np.take_along_axis(scores, order, axis=1).astype(np.float32)
    deep = np.flatnonzero(~found)  # positive below the retrieved depth: count exactly
    if deep.size:
        above = count_above(q_emb[deep], corpus_emb, pos_scores[deep], chunk)
        for j, i in enumerate(deep):
            ex = [x for x in excluded[i] if x != pos_ids[i]]
            ex_above = int((corpus_emb[ex] @ q_emb[i] > pos_scores[i]).sum()) if ex else 0
            ranks[i] = int(above[j]) - ex_above
    return Ranked(ranks, pos_scores, cand_ids, cand_scores)


def keep_decision(ranks: np.ndarray, top_k: int) -> tuple[np.ndarray, list[str | None]]:
    """kept = rank < k; the reason of a dropped pair names its rank."""
    kept = ranks < top_k
    reasons = [None if k else f"positive ranked {int(r)} >= top_k {top_k}" for k, r in zip(kept, ranks)]
    return kept, reasons
