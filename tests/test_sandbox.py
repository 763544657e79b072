"""`kalm sql` cannot change the lake: an escape corpus through the real program, and the kernel's confinement shown
to hold for a statement that got past the parser."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import polars as pl
import pytest

from kalm_core import landlock, sandbox, warehouse

ROOT = Path(__file__).resolve().parents[1]

# every statement of the probe campaign, and more; {lake} and {d} are the lake and a scratch folder
ESCAPES = """
explain analyze copy (select 1 as x) to '{lake}/data/x.csv';
explain analyze copy (select 1 as x) to '{lake}/catalog.sqlite' (format csv, use_tmp_file false);
explain (analyze) select 1;
EXPLAIN /* a comment */ ANALYZE select 1;
explain analyse select 1;
copy (select 1 as x) to '{lake}/data/x.csv';
copy raw.alpha to '{d}/out.csv';
select * from read_blob('{lake}/catalog.sqlite');
select size from read_blob('{lake}/data/../catalog.sqlite');
select size from read_blob(['{lake}/data/x.parquet', '{lake}/catalog.sqlite']);
select size from read_blob('{lake}/*');
select * from read_text(getvariable('p'));
select * from '{lake}/catalog.sqlite';
select * from glob('{lake}/**');
select * from read_text('/etc/hostname');
select * from ducklake_cleanup_old_files('lake', cleanup_all => true);
select * from ducklake_delete_orphaned_files('lake', cleanup_all => true);
select * from (select 1) where exists (select * from ducklake_expire_snapshots('lake', older_than => now()));
select * from lake.merge_adjacent_files();
set variable v = (select count(*) from ducklake_rewrite_data_files('lake'));
select * from query('copy (select 1) to ''{d}/q.csv''');
select * from sqlite_query('{lake}/catalog.sqlite', 'delete from ducklake_snapshot');
select * from sqlite_scan('{lake}/catalog.sqlite', 'ducklake_snapshot');
select * from json_execute_serialized_sql(json_serialize_sql('select 1'));
select * from checkpoint();
call ducklake_cleanup_old_files('lake', cleanup_all => true);
set threads = 1;
set enable_external_access = true;
reset lock_configuration;
attach '{d}/other.duckdb' as o;
detach lake;
use memory;
install httpfs;
load sqlite;
pragma enable_profiling;
checkpoint;
vacuum;
drop table raw.alpha;
delete from raw.alpha;
update raw.alpha set query = 'x';
insert into raw.alpha select * from raw.alpha;
create table raw.evil as select 1;
create temp table t as select 1;
with x as (select 1) insert into raw.alpha select * from raw.alpha;
select 1; drop table raw.alpha;
export database '{d}/exported';
begin transaction;
"""


def _files(folder: Path) -> dict[str, str]:
    """Every file under the lake with its content hash (SQLite's shared-memory WAL index aside: readers write it)."""
    return {str(p.relative_to(folder)): hashlib.md5(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file() and not p.name.endswith("-shm")}


@pytest.fixture
def lake(tmp_path: Path) -> Path:
    """A lake with a table written twice and the first version expired: files that cleanup would delete."""
    lake = tmp_path / "lake"
    with warehouse.connect(lake) as con:
        for n in (2, 3):
            warehouse.write(con, "raw", "alpha", pl.DataFrame({"query": list("abc"[:n]), "positive": list("xyz"[:n])}))
        con.execute("call ducklake_expire_snapshots('lake', versions => [2])")
        con.execute("call ducklake_expire_snapshots('lake', older_than => now())")
    return lake


def test_every_escape_is_refused_and_no_byte_of_the_lake_changes(lake, tmp_path):
    attempts = [q.format(lake=lake, d=tmp_path) for q in ESCAPES.strip().splitlines()]
    before = _files(lake)
    session = subprocess.run([sys.executable, "-m", "dagster_project.cli", "sql", "-", "--lake", str(lake)],
                             input="\n".join(attempts) + "\n", capture_output=True, text=True, cwd=ROOT, timeout=120)
    refusals = [line for line in session.stderr.splitlines() if line.startswith("kalm: error:")]
    print(f"escape corpus: {len(attempts)} attempts, {len(refusals)} refused, "
          f"{sum(before.get(k) != v for k, v in _files(lake).items())} files changed")
    assert session.returncode == 1
    assert len(refusals) == len(attempts), session.stderr
    assert _files(lake) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["lake"]  # nothing written beside it either


def test_reads_still_work_in_the_sandbox(lake):
    data = warehouse.lake_spec(lake).data_path
    reads = ["select count(*) from raw.alpha",
             "explain select * from raw.alpha",
             "set variable s = (select max(snapshot_id) from lake.snapshots())",
             "select getvariable('s') > 0",
             "describe raw.alpha",
             f"select count(*) > 0 from read_blob('{data}**/*.parquet')",
             "select count(*) from ducklake_table_info('lake')"]
    with sandbox.open_sandbox(lake) as con:
        for sql in reads:
            for st in sandbox.check_statements(sql, data):
                assert con.execute(st.query).fetchall() is not None, sql
        assert con.execute("select count(*) from raw.alpha").fetchone() == (3,)


CONFINED = """
import sys
from kalm_core import sandbox
with sandbox.open_sandbox(sys.argv[1], confine=True) as con:
    assert sandbox.confined
    for sql in sys.argv[2:]:  # straight to DuckDB: as if the parser had let them through
        try:
            con.execute(sql).fetchall()
            print("ran:", sql)
        except Exception as e:
            print("refused:", type(e).__name__, str(e).splitlines()[0])
    print(con.execute("select count(*) from raw.alpha").fetchone()[0])
"""


@pytest.mark.skipif(landlock.abi_version() < 1, reason="the kernel has no Landlock")
def test_the_confined_process_cannot_write_even_what_the_parser_missed(lake, tmp_path):
    """Layer 3 alone: statements sent straight to the sandbox connection of a confined process change nothing."""
    data = lake / "data"
    live = next(data.rglob("*.parquet"))
    statements = [f"copy (select 1 as x) to '{data}/x.csv'",
                  f"copy (select 1 as x) to '{live}' (format parquet)",
                  "select * from ducklake_cleanup_old_files('lake', cleanup_all => true)"] * 3  # any DuckDB thread
    before = _files(lake)
    assert any(k.startswith("data/") and k not in {str(live.relative_to(lake))} for k in before)
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    done = subprocess.run([sys.executable, "-c", textwrap.dedent(CONFINED), str(lake), *statements],
                          capture_output=True, text=True, cwd=ROOT, timeout=120,
                          env={**os.environ, "TMPDIR": str(scratch)})
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert len(lines) == len(statements) + 1 and all(line.startswith("refused:") for line in lines[:-1]), lines
    assert all("Permission denied" in line for line in lines[0:-1:3])
    assert lines[-1] == "3"
    after = _files(lake)
    # the expired version's files, scheduled for deletion, are all still there
    assert after == before, {k: (before.get(k), after.get(k)) for k in set(before) | set(after)}
    assert not (data / "x.csv").exists()
    assert not list(scratch.iterdir())  # the spill folder is removed by the helper, outside the confinement


def test_a_lake_another_process_commits_to_stays_readable_once_confined(lake, tmp_path):
    """The confined process may not make the catalogue's WAL files again; the helper keeps them, so a commit from
    outside (whose writer closes last) is still read."""
    code = textwrap.dedent("""
        import sys, time
        from kalm_core import sandbox
        with sandbox.open_sandbox(sys.argv[1], confine=True) as con:
            print(con.execute("select count(*) from raw.alpha").fetchone()[0], flush=True)
            sys.stdin.readline()
            print(con.execute("select count(*) from raw.beta").fetchone()[0], flush=True)
    """)
    reader = subprocess.Popen([sys.executable, "-c", code, str(lake)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True, cwd=ROOT)
    try:
        assert reader.stdout.readline().strip() == "3"
        with warehouse.connect(lake) as con:
            warehouse.write(con, "raw", "beta", pl.DataFrame({"x": [1, 2, 3, 4]}))
        out, err = reader.communicate("\n", timeout=60)
        assert out.strip() == "4", err
    finally:
        reader.kill()
