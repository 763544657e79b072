"""Task-homogeneous and semi-homogeneous batches (KaLM §3.2, technique (4)).

Cut each group's shuffled rows (a group is a task type, or a source) into global batches; the groups' remainders
(a group smaller than a batch, a group's last rows) are pooled into mixed batches rather than dropped. Then take
`m = int(global_batch * (1 - ratio))` rows from every in-group batch, pool them across those batches, shuffle, and
put them back: ratio 1.0 gives pure in-task batches, where in-batch negatives are hardest; a lower ratio trades
hardness for fewer false negatives. What is short of one more batch is returned by `left_over` with its reason. Rows are placed so that texts repeat inside a batch as little as the data allows; where
they must (a classification source's label-name positives), the loss masks the repeats out of each other's
softmax (kalm_core/losses/same_text.py) instead of the rows being left out. The result is a deterministic function
of the seed.
"""

from __future__ import annotations

from collections import Counter, deque
from dataclasses import dataclass

import numpy as np
import polars as pl

from kalm_core.config import BatchConfig


class BatchingError(ValueError):
    """The input cannot be cut into the configured batches."""


def allowed_purity_gap(expected: float, purity_sd: float, tolerance: float) -> float:
    """How far the realised mean purity may sit from its expectation: a share (`tolerance`) of the expected mixing
    1 - expected, plus three sampling SDs. Relative, so a mostly in-task ratio (0.95) is told apart from none mixed
    (an absolute 0.05 would accept both)."""
    return tolerance * (1.0 - expected) + 3 * purity_sd


def purity_ok(realised: float, expected: float, purity_sd: float, tolerance: float) -> bool:
    """The realised purity follows the semi-homogeneous ratio (the blocking check's formula)."""
    return abs(realised - expected) <= allowed_purity_gap(expected, purity_sd, tolerance)


@dataclass(frozen=True)
class BatchStats:
    batches: int
    rows_in: int
    rows_batched: int
    rows_left_over: int  # rows short of one more global batch once every group's remainder was pooled
    pooled_batches: int  # batches of several groups' remainders (small sources, groups' last rows)
    mixed_per_batch: int  # m
    mean_purity: float
    expected_purity: float
    purity_sd: float  # sampling standard deviation of mean_purity around expected_purity

    def purity_ok(self, tolerance: float) -> bool:
        return purity_ok(self.mean_purity, self.expected_purity, self.purity_sd, tolerance)


class _Keys:
    """What batching reads of each row, and nothing more: its group (as a code), upsampling copy, pair and the 64-bit
    hashes of its texts (query, positive, negatives), in numpy arrays: a million rows cost tens of MB, where the rows
    as Python dicts cost gigabytes. Texts are compared by hash (a collision among 10M texts: ~3e-6)."""

    def __init__(self, keys: pl.DataFrame):
        self.values = keys["group"].unique().sort().to_list()  # a group's code is its place in sorted order
        self.group = (keys["group"].rank("dense").to_numpy() - 1).astype(np.int64)
        self.copy = keys["copy"].to_numpy()
        self.pair = keys["pair_id"].rank("dense").to_numpy()
        self.offsets = np.zeros(keys.height + 1, dtype=np.int64)
        np.cumsum(keys["texts"].list.len().to_numpy(), out=self.offsets[1:])
        self.flat = keys["texts"].explode().to_numpy()

    def texts(self, row: int) -> set[int]:
        return set(self.flat[self.offsets[row]:self.offsets[row + 1]].tolist())

    def majority(self, batch: list[int]) -> int:
        """The most frequent group code of a batch (the first met, on a tie)."""
        return Counter(self.group[batch].tolist()).most_common(1)[0][0]


def batch_keys(pairs: pl.DataFrame, group_by: str) -> pl.DataFrame:
    """The narrow frame `assign` reads, row for row of `pairs` (the SQL twin for a lake table: batch_keys_sql)."""
    return pairs.select(
        pl.col(group_by).alias("group"),
        (pl.col("copy") if "copy" in pairs.columns else pl.lit(0)).alias("copy"),
        (pl.col("pair_id") if "pair_id" in pairs.columns else pl.int_range(pl.len())).alias("pair_id"),
        pl.concat_list(pl.col("query").hash(), pl.col("positive").hash(),
                       pl.col("negatives").list.eval(pl.element().hash())).alias("texts"))


def batch_keys_sql(group_by: str) -> str:
    """The select list of batch_keys in DuckDB, over a relation of pairs with a `copy` column."""
    return (f'"{group_by}" as "group", copy, pair_id, '
            "list_concat([hash(query), hash(positive)], list_transform(negatives, x -> hash(x))) as texts")


def _cut_group(rows: list[int], size: int, keys: "_Keys") -> tuple[list[list[int]], list[int]]:
    """Fill batches in order, deferring a row whose texts clash with the batch being filled; rows that clash with
    every batch (few distinct texts, e.g. label-name positives) then fill batches of their own, repeated texts and
    all (masked in the loss), but never two copies of one pair (an upsampled source's repeats, kalm_core/mixing.py).
    Returns the batches and the rows short of one more batch."""
    batches, current, seen, deferred = [], [], set(), []
    queue = deque(rows)  # popleft is O(1): a task can hold hundreds of thousands of rows
    while queue:
        row = queue.popleft()
        texts = keys.texts(row)
        if texts & seen:
            deferred.append(row)
        else:
            current.append(row)
            seen |= texts
        if len(current) == size:
            batches.append(current)
            current, seen = [], set()
            queue.extendleft(reversed(deferred))  # deferred rows go first into the next batch
            deferred = []
    tail, left_over = _fill_by_pair(current + deferred, size, keys.pair)
    return batches + tail, left_over


def _fill_by_pair(rows: list[int], size: int, pair: np.ndarray) -> tuple[list[list[int]], list[int]]:
    """Full batches of `rows` in order, a copy of a pair already in the batch deferred to the next one."""
    batches, current, ids, deferred = [], [], set(), []
    queue = deque(rows)
    while queue:
        row = queue.popleft()
        key = int(pair[row])
        if key in ids:
            deferred.append(row)
            continue
        current.append(row)
        ids.add(key)
        if len(current) == size:
            batches.append(current)
            current, ids = [], set()
            queue.extendleft(reversed(deferred))
            deferred = []
    return batches, current + deferred


def semi_homogeneous(pairs: pl.DataFrame, cfg: BatchConfig,
                     world_size: int = 1) -> tuple[pl.DataFrame, pl.DataFrame, BatchStats]:
    """pairs (query, positive, negatives, <group_by>, ...) -> (batches with batch_id and position, per-batch
    purity, stats): `assign` over the pairs' keys, the rows gathered in batch order."""
    if cfg.group_by not in pairs.columns:
        raise BatchingError(f"group_by column {cfg.group_by!r} is not in the pairs ({pairs.columns})")
    placed, purity, stats = assign(batch_keys(pairs, cfg.group_by), cfg, world_size)
    out = pairs[placed["row"]].select(placed["batch_id"], placed["position"], *pairs.columns)
    return out, purity, stats


def assign(keys: pl.DataFrame, cfg: BatchConfig,
           world_size: int = 1) -> tuple[pl.DataFrame, pl.DataFrame, BatchStats]:
    """keys (group, copy, pair_id, texts: batch_keys) -> (row, batch_id, position) in batch order, per-batch purity,
    stats. A global batch is `cfg.per_device_batch x world_size`, the world size training is launched with
    (train.nproc), so every device's micro-batch comes from the same global batch."""
    if not 0.0 <= cfg.ratio <= 1.0:
        raise BatchingError(f"ratio must be in [0, 1], got {cfg.ratio}")
    size = cfg.per_device_batch * world_size
    rng = np.random.default_rng(cfg.seed)
    k = _Keys(keys)
    batches: list[list[int]] = []
    left_over: list[int] = []
    for g in range(len(k.values)):  # 1. shuffle each group and cut it into global batches
        rows = np.flatnonzero(k.group == g)
        rows = rows[rng.permutation(len(rows))]
        rows = rows[np.argsort(k.copy[rows], kind="stable")]  # an upsampled source: each pass before the next
        cut, rest = _cut_group(rows.tolist(), size, k)
        batches += cut
        left_over += rest
    # 2. the groups' remainders (a small source, a group's last rows) pooled into mixed batches, not dropped;
    # the smallest groups' rows go first, so what stays short of a batch comes from the groups that trained most
    sizes = np.bincount(k.group, minlength=len(k.values))
    pool = np.asarray(left_over, dtype=np.int64)[rng.permutation(len(left_over))]
    pool = pool[np.argsort(sizes[k.group[pool]], kind="stable")]
    pooled_batches, left_over = _cut_group(pool.tolist(), size, k)
    if not batches and not pooled_batches:
        raise BatchingError(f"{keys.height} pairs do not fill one global batch of {size}")
    batches = [batches[i] for i in rng.permutation(len(batches))]
    m = int(size * (1 - cfg.ratio)) if batches else 0
    majority = [k.majority(b) for b in batches]
    share: dict = {}
    if m > 0:  # 3. take m rows from every in-group batch, pool, shuffle, put back
        pooled = [row for b in batches for row in b[size - m:]]
        share = {g: n / len(pooled) for g, n in Counter(k.group[pooled].tolist()).items()}
        pooled = [pooled[i] for i in rng.permutation(len(pooled))]
        for i, b in enumerate(batches):
            b[size - m:] = pooled[i * m:(i + 1) * m]
    # the pooled batches at random places in the epoch; their purity is their composition's, not a draw
    kinds = ["in_group"] * len(batches)
    for b in pooled_batches:
        at = int(rng.integers(len(batches) + 1))
        batches.insert(at, b)
        kinds.insert(at, "pooled")
        majority.insert(at, k.majority(b))
    for b in batches:  # a batch's rows in a random order, so devices' micro-batches mix the same way
        b[:] = [b[i] for i in rng.permutation(len(b))]

    purity_rows = []
    for bid, b in enumerate(batches):
        counts = Counter(k.group[b].tolist())
        purity = counts[majority[bid]] / len(b)
        expected = ((size - m) + m * share.get(majority[bid], 0.0)) / size if kinds[bid] == "in_group" else purity
        purity_rows.append({"batch_id": bid, "kind": kinds[bid], "majority_group": k.values[majority[bid]],
                            "purity": purity, "expected_purity": expected, "size": len(b), "groups": len(counts)})
    lengths = [len(b) for b in batches]
    placed = pl.DataFrame({
        "row": np.fromiter((r for b in batches for r in b), dtype=np.int64, count=sum(lengths)),
        "batch_id": np.repeat(np.arange(len(batches), dtype=np.int64), lengths),
        "position": np.concatenate([np.arange(n, dtype=np.int64) for n in lengths]),
    })
    purity = pl.DataFrame(purity_rows)
    # each batch's m mixed rows are a draw from the pool: the share of its majority group has variance p(1-p)/m
    var = sum((m / size) ** 2 * share.get(g, 0.0) * (1 - share.get(g, 0.0)) / m
              for g, kind in zip(majority, kinds) if kind == "in_group") if m else 0.0
    stats = BatchStats(
        batches=len(batches), rows_in=keys.height, rows_batched=placed.height, rows_left_over=len(left_over),
        pooled_batches=len(pooled_batches), mixed_per_batch=m, mean_purity=float(purity["purity"].mean()),
        expected_purity=float(purity["expected_purity"].mean()), purity_sd=var ** 0.5 / len(batches),
    )
    return placed, purity, stats
