"""The immutable batch snapshot that training reads (never the live warehouse): parquet named by its hash."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import polars as pl

SNAPSHOT_COLUMNS = ("batch_id", "position", "query", "instruction", "positive", "negatives", "task_type")


def write_snapshot(batches: pl.DataFrame, directory: str | Path) -> tuple[Path, str]:
    """Write the training columns to `directory/batches-<sha256[:16]>.parquet`; returns (path, full sha256)."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    tmp = directory / f".batches-{os.getpid()}.parquet"
    batches.select(*SNAPSHOT_COLUMNS, *[c for c in ("pair_id", "source") if c in batches.columns]) \
        .sort("batch_id", "position").write_parquet(tmp, statistics=False)
    return publish(tmp, directory)


def publish(tmp: Path, directory: Path) -> tuple[Path, str]:
    """Rename a written snapshot to `directory/batches-<sha256[:16]>.parquet`; returns (path, full sha256). The
    hash is read in blocks: a snapshot of millions of pairs is never read into memory whole."""
    with open(tmp, "rb") as f:
        digest = hashlib.file_digest(f, "sha256").hexdigest()
    path = directory / f"batches-{digest[:16]}.parquet"
    tmp.replace(path)
    return path, digest
