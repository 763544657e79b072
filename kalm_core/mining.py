"""Hard-negative mining from a rank window (KaLM §3.2, technique (3)).

Given negatives come first. Then candidates ranked in [lo, hi) of the query's retrieval are sampled, never a
positive of the query nor the query's own text. With a margin (NV-Retriever's TopK-PercPos), a candidate scoring
above margin x the positive's score is skipped as a likely false negative. A row still short is filled with
random corpus texts and flagged.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Mined:
    negatives: list[str]
    n_given: int
    n_mined: int
    n_filled: int
    n_margin_dropped: int


def _rng(seed: int, key: str) -> np.random.Generator:
    return np.random.default_rng([seed, int(hashlib.md5(key.encode()).hexdigest()[:8], 16)])


def mine_negatives(key: str, given: list[str], candidates: list[tuple[int, float]], pos_score: float,
                   texts: list[str], excluded: set[int], n: int, lo: int, hi: int,
                   margin: float | None = None, seed: int = 0) -> Mined:
    """Negatives for one pair. `candidates`: (corpus id, score) in rank order with excluded ids removed."""
    rng = _rng(seed, key)
    excluded_texts = {texts[i] for i in excluded}
    chosen = list(dict.fromkeys(g for g in given if g not in excluded_texts))[:n]
    n_given = len(chosen)
    window = candidates[lo:hi]
    too_close: set[str] = set()  # likely false negatives: never mined, never filled
    if margin is not None:
        too_close = {texts[c] for c, s in window if s > margin * pos_score}
        window = [(c, s) for c, s in window if s <= margin * pos_score]
    pool = [texts[c] for c, _ in window if texts[c] not in chosen]
    take = min(n - len(chosen), len(pool))
    mined = [pool[i] for i in sorted(rng.choice(len(pool), size=take, replace=False))] if take > 0 else []
    chosen += mined
    n_filled = 0
    taken = set(chosen) | excluded_texts | too_close
    available = len(set(texts) - taken) if len(chosen) < n else 0
    while len(chosen) < n and n_filled < available:  # random fill, drawn a few at a time (corpora are large)
        for i in rng.integers(0, len(texts), size=4 * n):
            if len(chosen) < n and texts[i] not in taken:
                chosen.append(texts[i])
                taken.add(texts[i])
                n_filled += 1
    return Mined(chosen, n_given, len(mined), n_filled, len(too_close))
