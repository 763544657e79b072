"""Snapshot retention: expire what no recent training run needs, then compact small files and delete old ones.

Every materialisation is a DuckLake snapshot, and `training.runs.batches_snapshot` records the one each model
trained on. Keeping the last N runs reproducible means keeping every snapshot from the oldest of theirs on;
anything older is expired, adjacent small files are merged and unreferenced files deleted.
"""

from __future__ import annotations

from dataclasses import dataclass

from kalm_core import warehouse
from kalm_core.identifiers import table

DEFAULT_KEEP_RUNS = 5


@dataclass(frozen=True)
class Retention:
    kept_from: int | None  # oldest snapshot kept (None: nothing expired)
    expired: int
    files_deleted: int


def oldest_needed(con, keep_runs: int) -> int | None:
    """The oldest batches snapshot among the last `keep_runs` training runs (None when there is none)."""
    if not warehouse.exists(con, "training", "runs"):
        return None
    cols = {c for (c,) in con.execute(
        "select column_name from information_schema.columns where table_catalog = ? and table_schema = 'training' "
        "and table_name = 'runs'", [warehouse.CATALOG]).fetchall()}
    if "batches_snapshot" not in cols:
        return None
    return con.execute(
        f"select min(batches_snapshot) from (select batches_snapshot from {table('training', 'runs')} "
        "order by finished_at desc limit ?)", [int(keep_runs)]).fetchall()[0][0]


def maintain(con, keep_runs: int = DEFAULT_KEEP_RUNS) -> Retention:
    """Expire snapshots older than what the last `keep_runs` training runs need; compact; delete old files."""
    if keep_runs < 1:
        raise ValueError(f"keep_runs must be at least 1, got {keep_runs}")
    cutoff = oldest_needed(con, keep_runs)
    lake = warehouse.CATALOG
    expired = 0
    if cutoff is not None:
        old = [s for (s,) in con.execute(f"select snapshot_id from {lake}.snapshots() where snapshot_id < ?",
                                         [cutoff]).fetchall()]
        if old:
            con.execute(f"call ducklake_expire_snapshots('{lake}', versions => $v)", {"v": old})
            expired = len(old)
    con.execute(f"call ducklake_merge_adjacent_files('{lake}')")
    deleted = con.execute(f"call ducklake_cleanup_old_files('{lake}', cleanup_all => true)").fetchall()
    return Retention(kept_from=cutoff, expired=expired, files_deleted=len(deleted))
