"""The lake: readers during writes, writers that wait for each other by name, snapshots, retention."""

import subprocess
import sys
import textwrap
import time
from pathlib import Path

import polars as pl
import pytest

from kalm_core import retention, warehouse
from kalm_core.locks import LakeBusy

ROOT = Path(__file__).resolve().parents[2]

# A writer in another process: opens the lake as `owner`, writes table raw.<name> inside a transaction and holds it
# open for `hold` seconds before committing (a long write), printing 'writing' once the transaction is open.
WRITER = textwrap.dedent("""
    import sys, time
    from kalm_core import warehouse
    lake, owner, name, rows, hold = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), float(sys.argv[5])
    with warehouse.connect(lake, owner=owner) as con:
        con.execute("begin transaction")
        con.execute(f'create or replace table raw."{name}" as select range as i from range({rows})')
        print("writing", flush=True)
        time.sleep(hold)
        con.execute("commit")
    print("committed", flush=True)
""")


def writer(lake: Path, owner: str, name: str, rows: int, hold: float) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-c", WRITER, str(lake), owner, name, str(rows), str(hold)], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    return proc


def wait_for(proc: subprocess.Popen, word: str) -> None:
    line = proc.stdout.readline().strip()
    assert line == word, proc.stderr.read()


@pytest.fixture
def lake(tmp_path):
    path = tmp_path / "lake"
    with warehouse.connect(path) as con:
        warehouse.write(con, "raw", "t", pl.DataFrame({"i": [1, 2, 3]}))
    return path


def test_connect_creates_one_schema_per_layer_and_a_wal_catalogue(tmp_path, monkeypatch):
    import sqlite3

    monkeypatch.setenv("KALM_LAKE", str(tmp_path / "x"))
    with warehouse.connect() as con:
        schemas = {s for (s,) in con.execute(
            "select schema_name from information_schema.schemata where catalog_name = 'lake'").fetchall()}
    assert set(warehouse.LAYERS) <= schemas
    spec = warehouse.lake_spec()
    assert spec.home == tmp_path / "x" and (tmp_path / "x" / "data").is_dir()
    assert sqlite3.connect(spec.sqlite_file).execute("pragma journal_mode").fetchall() == [("wal",)]


def test_writes_share_an_instance_renewed_every_few_writes_and_a_lake_made_again_is_attached_again(tmp_path,
                                                                                                   monkeypatch):
    monkeypatch.setattr(warehouse, "WRITER_REUSE", 2)
    path = tmp_path / "lake"
    for i in range(5):  # instances 1, 1, 2, 2, 3: each sees what the ones before committed
        with warehouse.connect(path) as con:
            warehouse.write(con, "raw", f"t{i}", pl.DataFrame({"i": list(range(i + 1))}))
            assert con.execute("select count(*) from raw.t0").fetchall() == [(1,)]
        with warehouse.connect(path, read_only=True) as con:
            assert warehouse.count(con, "raw", f"t{i}") == i + 1
    assert sum(k[2] == warehouse.lake_spec(path).catalog for k in warehouse._WRITERS) == 1
    with warehouse.connect(path) as con:  # a temp table lives and dies with its connection, not the instance
        con.execute("create temp table scratch as select 1 as x")
    with warehouse.connect(path) as con:
        assert con.execute("select count(*) from duckdb_tables() where table_name = 'scratch'").fetchall() == [(0,)]
    import shutil

    shutil.rmtree(path)  # the same folder, a new lake
    with warehouse.connect(path) as con:
        assert not warehouse.exists(con, "raw", "t0")
        warehouse.write(con, "raw", "t0", pl.DataFrame({"i": [7]}))
    with warehouse.connect(path, read_only=True) as con:
        assert con.execute("select i from raw.t0").fetchall() == [(7,)]


def test_read_only_on_a_missing_lake_says_what_to_do(tmp_path):
    with pytest.raises(FileNotFoundError, match="kalm run"):
        with warehouse.connect(tmp_path / "none", read_only=True):
            pass


def test_a_lake_path_that_is_a_file_is_refused(tmp_path):
    with pytest.raises(warehouse.LakeError, match="a folder, not a file"):
        warehouse.lake_spec(tmp_path / "warehouse.duckdb")
    with pytest.raises(warehouse.LakeError, match="KALM_LAKE_DATA"):
        warehouse.lake_spec("postgres:dbname=kalm")


def test_a_reader_sees_the_last_commit_while_another_process_writes(lake):
    proc = writer(lake, "run A", "t", 1000, hold=4)
    wait_for(proc, "writing")
    t0 = time.monotonic()
    with warehouse.connect(lake, read_only=True) as con:
        assert warehouse.count(con, "raw", "t") == 3  # the committed version, not the open transaction
    assert time.monotonic() - t0 < 3
    wait_for(proc, "committed")
    proc.wait()
    with warehouse.connect(lake, read_only=True) as con:
        assert warehouse.count(con, "raw", "t") == 1000


def test_a_second_writer_waits_and_names_the_run_it_waits_for(lake):
    proc = writer(lake, "run A", "t", 1000, hold=3)
    wait_for(proc, "writing")
    told: list[str] = []
    with pytest.raises(LakeBusy, match="run A"):  # too impatient: fails naming the other run, writes nothing
        with warehouse.connect(lake, owner="run B", wait_s=0.5, on_wait=told.append):
            pass
    assert told and "run A" in told[0]
    with warehouse.connect(lake, owner="run B", on_wait=told.append) as con:  # patient: waits, then writes
        assert warehouse.count(con, "raw", "t") == 1000  # sees A's whole table, never half of it
        warehouse.write(con, "raw", "t", pl.DataFrame({"i": [7]}))
    proc.wait()
    assert proc.returncode == 0
    with warehouse.connect(lake, read_only=True) as con:
        assert con.execute("select i from raw.t").fetchall() == [(7,)]


def test_writers_of_different_tables_both_finish(lake):
    procs = [writer(lake, f"run {n}", n, 500, hold=0.5) for n in ("a", "b", "c")]
    for p in procs:
        out, err = p.communicate(timeout=120)
        assert p.returncode == 0 and "committed" in out, err
    with warehouse.connect(lake, read_only=True) as con:
        assert [warehouse.count(con, "raw", n) for n in ("a", "b", "c")] == [500, 500, 500]


def test_a_killed_writer_leaves_the_lake_unlocked_and_its_table_unchanged(lake):
    proc = writer(lake, "run A", "t", 1000, hold=60)
    wait_for(proc, "writing")
    proc.kill()
    proc.wait()
    with warehouse.connect(lake, wait_s=5) as con:  # the kernel freed the lock with the process
        assert warehouse.count(con, "raw", "t") == 3


def test_snapshots_time_travel_and_retention(tmp_path):
    path = tmp_path / "lake"
    with warehouse.connect(path) as con:
        snaps = []
        for k, n in enumerate((3, 5, 8)):
            warehouse.write(con, "batched", "batches", pl.DataFrame({"i": list(range(n))}))
            snaps.append(warehouse.snapshot_id(con))
            warehouse.write(con, "training", "runs", pl.DataFrame(
                {"run_id": [f"r{j}" for j in range(k + 1)], "batches_snapshot": snaps,
                 "finished_at": list(range(k + 1))}))
    with warehouse.connect(path, at=snaps[0]) as con:
        assert warehouse.count(con, "batched", "batches") == 3
    with warehouse.connect(path) as con:
        kept = retention.maintain(con, keep_runs=2)
        assert kept.kept_from == snaps[1] and kept.expired > 0
        remaining = {s for (s,) in con.execute("select snapshot_id from lake.snapshots()").fetchall()}
        assert min(remaining) >= snaps[1]
        con.execute("set variable snap = (select batches_snapshot from training.runs where run_id = 'r1')")
        assert con.execute("select count(*) from batched.batches at (version => getvariable('snap'))"
                           ).fetchall() == [(5,)]  # "which rows trained model r1": still answerable
    with pytest.raises(warehouse.LakeError):
        with warehouse.connect(path, at=snaps[0]):
            pass
    with pytest.raises(ValueError, match="at least 1"):
        with warehouse.connect(path) as con:
            retention.maintain(con, keep_runs=0)


def test_reads_share_one_attached_lake_and_see_each_commit_and_a_lake_made_again(tmp_path):
    import shutil

    lake = tmp_path / "lake"
    with warehouse.connect(lake) as con:
        con.execute("create table raw.t as select 1 as x")
    with warehouse.connect(lake, read_only=True) as r1, warehouse.connect(lake, read_only=True) as r2:
        assert r1.execute("select count(*) from raw.t").fetchall() == [(1,)]
        assert r2.execute("select kalm_clean(' a ')").fetchall() == [("a",)]  # macros on every cursor
    with warehouse.connect(lake) as con:
        con.execute("insert into raw.t values (2)")
    with warehouse.connect(lake, read_only=True) as r:
        assert r.execute("select count(*) from raw.t").fetchall() == [(2,)]  # the shared instance sees the commit
    assert len([k for k in warehouse._READERS if str(lake) in k[1]]) == 1
    shutil.rmtree(lake)
    with warehouse.connect(lake) as con:
        con.execute("create table raw.u as select 7 as y")
    with warehouse.connect(lake, read_only=True) as r:
        assert r.execute("select * from raw.u").fetchall() == [(7,)]
        assert not r.execute("select count(*) from information_schema.tables where table_name = 't'").fetchall()[0][0]


def test_exists_binds_a_query_and_a_miss_leaves_the_transaction_usable(tmp_path):
    with warehouse.connect(tmp_path / "lake") as con:
        con.execute("create table raw.a as select 1 as x")
        con.execute("begin")
        con.execute("insert into raw.a select 2")
        assert warehouse.exists(con, "raw", "a") and not warehouse.exists(con, "raw", "nope")
        con.execute("commit")  # the miss did not abort it
        assert warehouse.count(con, "raw", "a") == 2
    with warehouse.connect(tmp_path / "lake", read_only=True) as con:
        assert warehouse.exists(con, "raw", "a") and not warehouse.exists(con, "staged", "a")


def test_small_tables_are_files_not_catalogue_tables(tmp_path):
    """Data inlining is off: each inlined table version would be a table of its own in the SQLite catalogue, which
    makes every later table access slower."""
    import sqlite3

    with warehouse.connect(tmp_path / "lake") as con:
        for i in range(3):
            con.execute(f"create or replace table raw.small as select {i} as x")
        assert warehouse.count(con, "raw", "small") == 1
    catalog = sqlite3.connect(tmp_path / "lake" / "catalog.sqlite")
    inlined = catalog.execute("select count(*) from ducklake_inlined_data_tables").fetchall()[0][0]
    assert inlined == 0 and list((tmp_path / "lake" / "data").rglob("*.parquet"))


def test_tables_written_in_one_transaction_change_together(tmp_path):
    """warehouse.transaction: both tables in one snapshot, or neither when the block fails."""
    with warehouse.connect(tmp_path / "lake") as con:
        with warehouse.transaction(con):
            assert warehouse.write(con, "batched", "a", pl.DataFrame({"x": [1, 2]})) == 2
            warehouse.write(con, "batched", "b", pl.DataFrame({"y": [3]}))
        first = warehouse.snapshot_id(con)
        with pytest.raises(ZeroDivisionError), warehouse.transaction(con):
            warehouse.write(con, "batched", "a", pl.DataFrame({"x": [9]}))
            warehouse.write(con, "batched", "b", pl.DataFrame({"y": [9]}))
            1 / 0
        assert warehouse.snapshot_id(con) == first
        assert con.execute("select * from batched.a order by x").fetchall() == [(1,), (2,)]
        assert con.execute("select * from batched.b").fetchall() == [(3,)]
    with warehouse.connect(tmp_path / "lake", at=first - 1) as before:  # one commit: no snapshot holds one alone
        assert not warehouse.exists(before, "batched", "a") and not warehouse.exists(before, "batched", "b")


def test_maintain_removes_what_a_killed_writer_left_and_keeps_the_last_snapshots(tmp_path):
    """kill -9 during a large write leaves data files no snapshot references; maintain deletes exactly those (and the
    expired snapshots' files), so the folder holds the referenced files alone."""
    import os
    import signal
    import subprocess
    import sys
    import time

    lake = tmp_path / "lake"
    with warehouse.connect(lake) as con:
        for n in range(1, 5):  # four versions of one table: four snapshots besides the schemas'
            warehouse.write(con, "raw", "small", pl.DataFrame({"i": list(range(n))}))
    code = ("import sys\nfrom kalm_core import warehouse\nwith warehouse.connect(sys.argv[1]) as con:\n"
            "    con.execute('set threads = 1')\n"
            "    con.execute(\"create table raw.big as select i, md5(i::varchar) || repeat('x', 200) as t "
            "from range(60000000) r(i)\")\n")
    proc = subprocess.Popen([sys.executable, "-c", code, str(lake)])
    big = lake / "data" / "raw" / "big"
    deadline = time.monotonic() + 120
    while not (big.exists() and any(big.iterdir())) and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    on_disk = lambda: {p.name for p in (lake / "data").rglob("*") if p.is_file()}  # noqa: E731
    left = on_disk()
    assert any(big.rglob("*")), "the writer was killed before it wrote a file"

    with warehouse.connect(lake) as con:
        kept = retention.maintain(con, keep_snapshots=2)
        referenced = {p for (p,) in con.execute(
            "select path from __ducklake_metadata_lake.ducklake_data_file").fetchall()}
        assert not warehouse.exists(con, "raw", "big")
        assert warehouse.count(con, "raw", "small") == 4
        remaining = [s for (s,) in con.execute("select snapshot_id from lake.snapshots()").fetchall()]
    assert kept.orphans >= 1 and not [p for p in big.rglob("*") if p.is_file()]  # the killed write's files
    assert on_disk() == referenced  # the folder is back to the files the catalogue knows
    assert len(remaining) == 2 and kept.expired > 0
    assert len(left) - len(on_disk()) == kept.files_deleted


def test_committed_since_names_every_table_changed_after_a_snapshot(tmp_path):
    lake = tmp_path / "lake"
    with warehouse.connect(lake) as con:
        warehouse.write(con, "raw", "a", pl.DataFrame({"i": [1]}))
        warehouse.write(con, "raw", "b", pl.DataFrame({"i": [1]}))
        start = warehouse.snapshot_id(con)
        warehouse.write(con, "raw", "a", pl.DataFrame({"i": [1, 2]}))  # replaced
        replaced = warehouse.snapshot_id(con)
        warehouse.write(con, "staged", "c", pl.DataFrame({"i": pl.Series([], dtype=pl.Int64)}))  # new, empty
        con.execute("create table raw.gone as select 1 as i")
        con.execute("drop table raw.gone")  # committed, then dropped: not in the lake
        warehouse.replace_rows(con, "raw.b", "i = 1", "(select 5 as i)")  # changed in place
        last = warehouse.snapshot_id(con)
        assert warehouse.committed_since(con, start) == [("raw.a", replaced), ("staged.c", replaced + 1),
                                                         ("raw.b", last)]
        assert warehouse.committed_since(con, last) == []
        assert {n for n, _ in warehouse.committed_since(con, None)} == {"raw.a", "raw.b", "staged.c"}
