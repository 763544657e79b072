"""The immutable batch snapshot that training reads (never the live warehouse): parquet named by its hash."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from kalm_core.identifiers import table

SNAPSHOT_COLUMNS = ("batch_id", "position", "query", "instruction", "positive", "negatives", "task_type")


def export_snapshot(con, directory: str | Path, batches: str = table("batched", "batches")) -> tuple[Path, str]:
    """The training columns of `batches` in batch order, written by DuckDB to `directory/batches-<sha[:16]>.parquet`
    (a relation of millions of rows never passes through Python); returns (path, full sha256)."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    tmp = directory / f".batches-{os.getpid()}.parquet"
    con.execute(f"copy (select {', '.join([*SNAPSHOT_COLUMNS, 'pair_id', 'source'])} from {batches} "
                f"order by batch_id, position) to '{tmp}' (format parquet)")
    return publish(tmp, directory)


def publish(tmp: Path, directory: Path) -> tuple[Path, str]:
    """Rename a written snapshot to `directory/batches-<sha256[:16]>.parquet`; returns (path, full sha256). The
    hash is read in blocks: a snapshot of millions of pairs is never read into memory whole."""
    with open(tmp, "rb") as f:
        digest = hashlib.file_digest(f, "sha256").hexdigest()
    path = directory / f"batches-{digest[:16]}.parquet"
    tmp.replace(path)
    return path, digest
