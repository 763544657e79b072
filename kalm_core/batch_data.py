"""The trainer's input contract: an immutable parquet snapshot of global batches (KaLM §3.2 batching).

Columns batch_id, position, query, instruction, positive, negatives (list) and task_type. Every problem is
reported before training starts: a missing or unreadable file, missing columns, no rows, unequal batches, a
batch holding the same passage twice, rows without the negatives the group size needs.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import polars as pl

from kalm_core.config import ModelConfig
from kalm_core.snapshot import SNAPSHOT_COLUMNS
from kalm_core.prompts import instructed_query

REQUIRED = SNAPSHOT_COLUMNS  # the snapshot's contract is defined once, where it is written


class BatchFileError(ValueError):
    """The snapshot cannot be trained on; the message names the problem."""


@dataclass(frozen=True)
class Batch:
    """One global batch as texts: queries (B,) with their instruction applied, passages (B * G,) group-major."""

    batch_id: int
    queries: list[str]
    passages: list[str]


def load_batches(path: str | Path, group_size: int, world_size: int = 1,
                 template: str = ModelConfig.query_template, sha256: str | None = None) -> list[Batch]:
    """Read and validate the snapshot (against its recorded sha256 when given); returns the global batches in
    batch_id order."""
    path = Path(path)
    if not path.exists():
        raise BatchFileError(f"batch file {path} does not exist")
    if sha256 is not None:
        with open(path, "rb") as f:
            digest = hashlib.file_digest(f, "sha256").hexdigest()
        if digest != sha256:
            raise BatchFileError(f"batch file {path} has sha256 {digest[:16]}…, not the {sha256[:16]}… recorded when "
                                 "it was written: it changed or was damaged since. Rebuild batched/batches.")
    try:
        frame = pl.read_parquet(path)
    except Exception as e:  # polars raises several types for a damaged or non-parquet file
        raise BatchFileError(f"batch file {path} is not a readable parquet file: {e}") from None
    missing = [c for c in REQUIRED if c not in frame.columns]
    if missing:
        raise BatchFileError(f"batch file {path} lacks columns {missing}; it has {frame.columns}")
    if frame.is_empty():
        raise BatchFileError(f"batch file {path} holds no rows")
    if frame.select(pl.col("query").is_null().any() | pl.col("positive").is_null().any()).item():
        raise BatchFileError(f"batch file {path} has rows without a query or a positive")
    sizes = frame.group_by("batch_id").len()
    if sizes["len"].n_unique() != 1:
        raise BatchFileError(f"batch file {path}: batches differ in size ({sorted(set(sizes['len']))}); "
                             "every global batch must be one optimisation step of the same size")
    size = int(sizes["len"][0])
    if size % world_size:
        raise BatchFileError(f"global batch {size} does not split over {world_size} devices")
    need = group_size - 1
    batches = []
    for (bid,), rows in frame.sort("batch_id", "position").group_by("batch_id", maintain_order=True):
        queries, passages = [], []
        for r in rows.iter_rows(named=True):
            negs = list(r["negatives"] or [])
            if need and not negs:
                raise BatchFileError(f"batch {bid}: a row has no negatives but the group size is {group_size}")
            negs = [negs[i % len(negs)] for i in range(need)] if need else []  # a short row repeats its own
            queries.append(instructed_query(r["query"], r["task_type"], r["instruction"], template))
            passages += [r["positive"], *negs]
        positives = passages[::group_size]
        if len(set(positives)) != len(positives):
            raise BatchFileError(f"batch {bid} holds the same positive passage twice (a false negative)")
        batches.append(Batch(int(bid), queries, passages))
    return batches
