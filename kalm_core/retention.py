"""Snapshot retention: expire what no recent training run needs, then compact small files and delete old ones.

Every materialisation is a DuckLake snapshot, and `training.runs.batches_snapshot` records the one each model
trained on. Keeping the last N runs reproducible means keeping every snapshot from the oldest of theirs on; a lake
no model has trained on yet keeps its last N snapshots. Anything older is expired, adjacent small files are merged,
the expired snapshots' files deleted, and so are orphans: files in the data path that no snapshot references (what a
killed writer wrote before its commit). The caller holds the lake's write lock, so no writer is mid-commit; a shared
(PostgreSQL) lake's writers may be on other machines, so there only orphans older than a day go.
"""

from __future__ import annotations

from dataclasses import dataclass

from kalm_core import warehouse
from kalm_core.identifiers import table

DEFAULT_KEEP_RUNS = 5
DEFAULT_KEEP_SNAPSHOTS = 100  # with no training run: about two full runs of the demo profile
SHARED_ORPHAN_AGE = "1 day"  # a shared lake's writer on another machine may still be writing a younger file


@dataclass(frozen=True)
class Retention:
    kept_from: int | None  # oldest snapshot kept (None: nothing expired)
    expired: int
    files_deleted: int  # expired snapshots' files and orphans
    orphans: int  # of which: files no snapshot ever referenced (a killed writer's)


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


def last_snapshots(con, keep: int) -> int | None:
    """The oldest of the last `keep` snapshots (None when there are fewer)."""
    rows = con.execute(f"select snapshot_id from {warehouse.CATALOG}.snapshots() order by snapshot_id desc "
                       "limit 1 offset ?", [int(keep) - 1]).fetchall()
    return rows[0][0] if rows else None


def maintain(con, keep_runs: int = DEFAULT_KEEP_RUNS, keep_snapshots: int = DEFAULT_KEEP_SNAPSHOTS,
             shared: bool = False) -> Retention:
    """Expire snapshots older than what the last `keep_runs` training runs need (with none: all but the last
    `keep_snapshots`); compact; delete expired and orphaned files (on a `shared` lake, orphans a day old)."""
    if keep_runs < 1 or keep_snapshots < 1:
        raise ValueError(f"keep_runs and keep_snapshots must be at least 1, got {keep_runs} and {keep_snapshots}")
    cutoff = oldest_needed(con, keep_runs)
    if cutoff is None:
        cutoff = last_snapshots(con, keep_snapshots)
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
    age = f"older_than => now() - interval '{SHARED_ORPHAN_AGE}'" if shared else "cleanup_all => true"
    orphans = con.execute(f"call ducklake_delete_orphaned_files('{lake}', {age})").fetchall()
    return Retention(kept_from=cutoff, expired=expired, files_deleted=len(deleted) + len(orphans),
                     orphans=len(orphans))
