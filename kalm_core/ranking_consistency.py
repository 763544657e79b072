"""Ranking-consistency filtering (KaLM §3.2, technique (2)).

Each query is searched against its own source's corpus (every positive and negative of the source, plus an
optional candidate pool). A pair whose positive does not rank within the top k is dropped: its query is too
broad, and it would poison hard-negative mining. Ranks are 0-based and ignore the query's own text and the
query's other positives, which are not competitors.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from kalm_core.config import FilterConfig
from kalm_core.search import count_above, topk


@dataclass(frozen=True)
class Corpus:
    texts: list[str]
    ids: dict[str, int]

    @classmethod
    def build(cls, positives: list[str], negatives: list[list[str]], pool: list[str] | None = None) -> "Corpus":
        texts = list(dict.fromkeys([*positives, *(n for ns in negatives for n in ns), *(pool or [])]))
        return cls(texts, {t: i for i, t in enumerate(texts)})

    def __len__(self) -> int:
        return len(self.texts)


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
    candidates: list[list[tuple[int, float]]]  # per pair, (corpus id, score) in rank order, up to `depth`


def rank_positives(q_emb: np.ndarray, corpus_emb: np.ndarray, pos_ids: np.ndarray,
                   excluded: list[set[int]], depth: int, chunk: int = 4096) -> Ranked:
    """q_emb (P, D) one row per pair; pos_ids (P,) the positive's corpus id; excluded[i] ids that never count."""
    extra = max((len(e) for e in excluded), default=0)
    scores, ids = topk(q_emb, corpus_emb, depth + extra, chunk)  # (P, depth + extra)
    pos_scores = np.einsum("pd,pd->p", q_emb, corpus_emb[pos_ids]).astype(np.float32)
    ranks = np.full(len(pos_ids), -1, dtype=np.int64)
    candidates: list[list[tuple[int, float]]] = []
    for i in range(len(pos_ids)):
        kept: list[tuple[int, float]] = []
        for cid, s in zip(ids[i].tolist(), scores[i].tolist()):
            if cid < 0:
                break
            if cid == pos_ids[i]:
                ranks[i] = len(kept)
            elif cid not in excluded[i]:
                kept.append((cid, s))
        candidates.append(kept[:depth])
    deep = np.flatnonzero(ranks < 0)  # positive below the retrieved depth: count exactly
    if deep.size:
        above = count_above(q_emb[deep], corpus_emb, pos_scores[deep], chunk)
        for j, i in enumerate(deep):
            ex = [x for x in excluded[i] if x != pos_ids[i]]
            ex_above = int((corpus_emb[ex] @ q_emb[i] > pos_scores[i]).sum()) if ex else 0
            ranks[i] = int(above[j]) - ex_above
    return Ranked(ranks, pos_scores, candidates)


def keep_decision(ranks: np.ndarray, top_k: int) -> tuple[np.ndarray, list[str | None]]:
    """kept = rank < k; the reason of a dropped pair names its rank."""
    kept = ranks < top_k
    reasons = [None if k else f"positive ranked {int(r)} >= top_k {top_k}" for k, r in zip(kept, ranks)]
    return kept, reasons
