"""Hard-negative mining from a rank window (KaLM §3.2, technique (3)).

Given negatives come first. Then candidates ranked in [lo, hi) of the query's retrieval are sampled, never a
positive of the query nor the query's own text. With a margin (NV-Retriever's TopK-PercPos), a candidate scoring
above margin x the positive's score is skipped as a likely false negative. A row still short is filled with
random corpus texts and flagged.
"""

from __future__ import annotations

import random
from dataclasses import dataclass


@dataclass(frozen=True)
class Mined:
    negatives: list[int]  # corpus ids: given, then mined, then filled
    n_given: int
    n_mined: int
    n_filled: int
    n_margin_dropped: int  # distinct texts of the window the margin removed
    n_window: int  # candidates in the mining window before the margin


def _rng(seed: int, key: str) -> random.Random:
    """The pair's own random stream: the same draws whatever other rows the source holds (a str seed is hashed with
    SHA-512, the same in every process). Python's generator: seeding numpy's per pair cost 50 us, 5 s per 100k pairs."""
    return random.Random(f"{seed}:{key}")


def _sample(rng: random.Random, n: int, k: int) -> list[int]:
    """k distinct indices of range(n), uniformly (a partial Fisher-Yates shuffle: k draws, where random.sample
    spends ~40 us per call on its set-up)."""
    idx = list(range(n))
    for i in range(max(0, k)):
        j = i + int(rng.random() * (n - i))
        idx[i], idx[j] = idx[j], idx[i]
    return idx[:max(0, k)]


def mine_negatives(key: str, given: list[int], window: list[tuple[int, float]], pos_score: float,
                   corpus_size: int, excluded: set[int], n: int, margin: float | None = None,
                   seed: int = 0) -> Mined:
    """Negatives for one pair, as corpus ids (the corpus holds each text once, so an id is a text). `given`: the
    pair's own negatives' ids; `window`: the (corpus id, score) candidates ranked in the mining window [lo, hi), in
    rank order, excluded ids removed; `excluded`: the query's positives and its own text."""
    rng = _rng(seed, key)
    chosen = list(dict.fromkeys(g for g in given if g not in excluded))[:n]
    n_given = len(chosen)
    too_close: set[int] = set()  # likely false negatives: never mined, never filled
    n_window = len(window)
    if margin is not None:
        too_close = {c for c, s in window if s > margin * pos_score}
        window = [(c, s) for c, s in window if s <= margin * pos_score]
    pool = [c for c, _ in window]
    if chosen:
        given_set = set(chosen)
        pool = [c for c in pool if c not in given_set]
    take = min(n - len(chosen), len(pool))
    mined = [pool[i] for i in sorted(_sample(rng, len(pool), take))]
    chosen += mined
    n_filled = 0
    if len(chosen) < n:
        taken = set(chosen) | excluded | too_close
        available = corpus_size - len(taken)
        while len(chosen) < n and n_filled < available:  # random fill, drawn a few at a time (corpora are large)
            for _ in range(4 * n):
                t = rng.randrange(corpus_size)
                if len(chosen) < n and t not in taken:
                    chosen.append(t)
                    taken.add(t)
                    n_filled += 1
    return Mined(chosen, n_given, len(mined), n_filled, len(too_close), n_window)
