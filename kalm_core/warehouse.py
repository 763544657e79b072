"""The warehouse: a DuckLake (catalogue + parquet data files), one schema per layer (docs/DESIGN.md §1).

Asset key [layer, name] is table `layer.name` of the lake. The catalogue is a SQLite file under the lake folder
(`data/lake/catalog.sqlite`, data files in `data/lake/data/`) or, to share one lake between machines, a PostgreSQL
database (`KALM_LAKE=postgres:dbname=kalm host=...` plus `KALM_LAKE_DATA=` any path DuckDB can write).

Readers always see the last committed snapshot, whatever a run is writing. Writers take the lake's write lock for
the life of their connection (`locks.py`): SQLite lets one writer commit at a time, and a second writer whose
transaction started before the first commit would fail, so it waits instead and is told which run it waits for.
Extensions come from the pinned `duckdb-extension-*` packages and are never downloaded at run time.
"""

from __future__ import annotations

import glob
import importlib.util
import os
import sqlite3
import tempfile
import threading
import uuid
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import duckdb
import polars as pl

from kalm_core import pairs
from kalm_core.identifiers import LAYERS, table
from kalm_core.locks import WriteLock

DEFAULT_LAKE = "data/lake"
LAKE_ID = "lake.id"  # written beside a new SQLite catalogue
CATALOG = "lake"  # the name the lake is attached under


class LakeError(RuntimeError):
    """A lake that cannot be opened (missing, misconfigured, an extension package absent)."""


@dataclass(frozen=True)
class LakeSpec:
    """Where the lake lives: its DuckLake catalogue, its data path and the folder for locks and generated files."""

    catalog: str  # 'sqlite:/abs/catalog.sqlite' or 'postgres:<libpq connection string>'
    data_path: str  # a folder or any URL DuckDB can write (s3://...)
    home: Path  # locks/ and the default data directory (snapshots, caches, models) live under or beside it

    @property
    def kind(self) -> str:
        return self.catalog.split(":", 1)[0]

    @property
    def owns_data(self) -> bool:
        """An embedded lake whose data files are its own folder's `data/`: the folder can be moved or copied whole."""
        return self.kind == "sqlite" and self.data_path == str(self.home / "data") + "/"

    @property
    def sqlite_file(self) -> Path | None:
        return Path(self.catalog.split(":", 1)[1]) if self.kind == "sqlite" else None

    def describe(self) -> str:
        """The lake for messages: the folder, or the PostgreSQL database without its password."""
        if self.kind == "sqlite":
            return str(self.home)
        parts = [p for p in self.catalog.split(":", 1)[1].split() if not p.lower().startswith("password")]
        return f"postgres:{' '.join(parts)} (data {self.data_path})"


def lake_spec(lake: str | os.PathLike | None = None) -> LakeSpec:
    """`lake`, else $KALM_LAKE, else data/lake: a folder (embedded SQLite catalogue) or a `postgres:` DSN."""
    where = str(lake or os.environ.get("KALM_LAKE") or DEFAULT_LAKE)
    if where.startswith("postgres:"):
        data = os.environ.get("KALM_LAKE_DATA")
        if not data:
            raise LakeError("a PostgreSQL lake needs KALM_LAKE_DATA: the data path (a shared folder or s3://...)")
        home = Path(os.environ.get("KALM_DATA_DIR") or "data").resolve()
        return LakeSpec(where, data.rstrip("/") + "/", home / "lake")
    if "://" in where or where.startswith("sqlite:"):
        raise LakeError(f"KALM_LAKE={where!r}: give a folder (embedded lake) or 'postgres:dbname=... host=...'")
    home = Path(where).resolve()
    if home.suffix in (".duckdb", ".db", ".jsonl", ".parquet", ".csv", ".sqlite") or (home.exists()
                                                                                      and not home.is_dir()):
        raise LakeError(f"the lake is a folder, not a file: {home} (e.g. data/lake)")
    data = os.environ.get("KALM_LAKE_DATA") or str(home / "data")
    return LakeSpec(f"sqlite:{home / 'catalog.sqlite'}", data.rstrip("/") + "/", home)


def exists_lake(spec: LakeSpec) -> bool:
    return spec.kind != "sqlite" or spec.sqlite_file.exists()


def extension_path(name: str) -> str:
    """The extension binary shipped by the PyPI package `duckdb-extension-<name>` for this DuckDB version."""
    pkg = importlib.util.find_spec(f"duckdb_extension_{name}")
    if pkg is None or not pkg.submodule_search_locations:
        raise LakeError(f"the DuckDB extension {name!r} is missing: pip install duckdb-extension-{name}=="
                        f"{duckdb.__version__}")
    root = pkg.submodule_search_locations[0]
    found = glob.glob(f"{root}/extensions/v{duckdb.__version__}/{name}.duckdb_extension")
    if not found:
        raise LakeError(f"duckdb-extension-{name} has no build for DuckDB {duckdb.__version__} (in {root})")
    return found[0]


def load_extensions(con, *names: str) -> None:
    """Install each extension from its package file once (INSTALL copies the binary: not on every connection),
    then LOAD it."""
    installed = {n for (n,) in con.execute(
        "select extension_name from duckdb_extensions() where installed or loaded").fetchall()}
    for name in names:
        if name not in installed and f"{name}_scanner" not in installed:
            con.install_extension(extension_path(name))
        con.load_extension(name)


MEMORY_ENV = "KALM_DUCKDB_MEMORY"  # each DuckDB instance's memory limit (DuckDB's default: 80% of the RAM)


def new_connection(**config) -> duckdb.DuckDBPyConnection:
    """An in-memory DuckDB that never downloads an extension, with the pair contract's macros (pairs.py). With
    $KALM_DUCKDB_MEMORY (e.g. 1GB) its joins, sorts and aggregates spill to the system's temporary folder past
    that limit."""
    limit = os.environ.get(MEMORY_ENV)
    spill = {"memory_limit": limit, "temp_directory": str(Path(tempfile.gettempdir()) / "kalm-duckdb")} if limit else {}
    con = duckdb.connect(config={"autoinstall_known_extensions": False, "autoload_known_extensions": False,
                                 **spill, **config})
    pairs.register(con)
    return con


@contextmanager
def wide_sort(con):
    """Inside, a DuckDB under $KALM_DUCKDB_MEMORY runs on one thread: sorting or joining a million rows of texts
    needs its working memory per thread, and two halves of a small limit fail where one whole succeeds."""
    if not os.environ.get(MEMORY_ENV):
        yield con
        return
    (threads,) = con.execute("select current_setting('threads')").fetchone()
    con.execute("set threads = 1")
    try:
        yield con
    finally:
        con.execute(f"set threads = {int(threads)}")


def _create_sqlite_catalog(path: Path) -> None:
    """A new SQLite catalogue in WAL mode, so readers never block the writer's commit (WAL is persistent), and the
    lake's identity beside it (a lake deleted and made again at the same path is another lake to its readers)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    (path.parent / LAKE_ID).write_text(uuid.uuid4().hex)
    c = sqlite3.connect(path)
    try:
        c.execute("pragma journal_mode=wal")
    finally:
        c.close()


def _lake_identity(spec: LakeSpec) -> str | None:
    if spec.sqlite_file is None:
        return None
    try:
        return (spec.sqlite_file.parent / LAKE_ID).read_text()
    except FileNotFoundError:  # a lake made before identities: its catalogue file's inode
        return str(spec.sqlite_file.stat().st_ino)


def attach(con, spec: LakeSpec, read_only: bool = False, at: int | None = None) -> None:
    """Attach the lake as `lake` and make it the default catalogue."""
    load_extensions(con, "ducklake", spec.kind if spec.kind != "postgres" else "postgres")
    options = [f"data_path '{_literal(spec.data_path)}'"]
    if spec.owns_data:  # the catalogue keeps the absolute data path it was made with: a moved lake gives its own
        options.append("override_data_path true")
    if read_only or at is not None:
        options.append("read_only")
    else:
        # no data inlining: each inlined table version is a table of its own in the catalogue database, and with a
        # few hundred of them every table access costs ~10x more (docs/DESIGN.md); a small table is a small file
        options.append("data_inlining_row_limit 0")
    if at is not None:
        options.append(f"snapshot_version {int(at)}")
    try:
        con.execute(f"attach 'ducklake:{_literal(spec.catalog)}' as {CATALOG} ({', '.join(options)})")
    except duckdb.Error as e:
        msg = str(e).replace(spec.catalog, spec.describe())
        raise LakeError(f"cannot open the lake {spec.describe()}: {msg}") from None
    con.execute(f"use {CATALOG}")


_READERS: dict[tuple, duckdb.DuckDBPyConnection] = {}  # (pid, catalogue, data path, lake identity) -> instance


def _reader(spec: LakeSpec) -> duckdb.DuckDBPyConnection:
    """This process's read-only instance of the lake, attached once. Loading the extensions and attaching cost
    ~0.3 s per new DuckDB instance, paid by every read of every step before; each read now takes a cursor, whose
    every transaction still sees the last committed snapshot. Keyed by pid (a forked child opens its own) and by
    the lake's identity (a lake deleted and made again is attached again)."""
    key = (os.getpid(), spec.catalog, spec.data_path, _lake_identity(spec))
    con = _READERS.get(key)
    if con is None:
        for old in [k for k in _READERS if k[0] == key[0] and k[1:3] == key[1:3]]:  # this lake, made again
            _READERS.pop(old).close()
        con = new_connection()
        attach(con, spec, read_only=True)
        _READERS[key] = con
    return con


@contextmanager
def _cursor(spec: LakeSpec):
    cur = _reader(spec).cursor()
    try:
        pairs.register(cur)  # temp macros and the default catalogue belong to each connection
        cur.execute(f"use {CATALOG}")
        yield cur
    finally:
        cur.close()


@contextmanager
def connect(lake: str | os.PathLike | None = None, read_only: bool = False, at: int | None = None,
            owner: str | None = None, wait_s: float | None = None, on_wait=None):
    """A connection to the lake. Read-only ones see the last committed snapshot (or snapshot `at`); a writable one
    holds the lake's write lock until it closes, waiting for another writer (`owner` names us in its message)."""
    spec = lake_spec(lake)
    if (read_only or at is not None) and not exists_lake(spec):
        raise FileNotFoundError(f"no lake at {spec.describe()}: run `kalm run` first (or set KALM_LAKE)")
    if read_only and at is None:
        with _cursor(spec) as cur:
            yield cur
        return
    lock = None
    if not (read_only or at is not None):
        if spec.sqlite_file and not spec.sqlite_file.exists():
            _create_sqlite_catalog(spec.sqlite_file)
        if "://" not in spec.data_path:
            Path(spec.data_path).mkdir(parents=True, exist_ok=True)
        lock = WriteLock(spec.home / "locks" / "write.lock", owner=owner, wait_s=wait_s, on_wait=on_wait)
        lock.acquire()
    try:
        with _attached(spec, at=at) as con:
            yield con
    finally:
        if lock is not None:
            lock.release()


_WRITERS: dict[tuple, duckdb.DuckDBPyConnection] = {}  # (pid, memory limit, lake, identity) -> the lake, writable
_WRITER_USES: dict[tuple, int] = {}
_WRITER_BUSY = threading.Lock()
# writes per instance before a fresh one: a long-lived attached lake kept ~2 MB of native memory per step's write (70
# sources: 2.1 GiB peak against 1.7 with an instance per write); a fresh instance every 32 costs ~6 ms a write
WRITER_REUSE = 32


def _writable(con, spec: LakeSpec) -> None:
    attach(con, spec)
    con.execute(";".join(f'create schema if not exists "{layer}"' for layer in LAYERS))


@contextmanager
def _attached(spec: LakeSpec, at: int | None):
    """A writable connection (the caller holds the write lock), or one at snapshot `at`. The process keeps one
    DuckDB instance with the lake attached writable and hands out a cursor of it: a new instance loaded two
    extensions and attached the lake, ~0.2 s of every step's write before. Each cursor's transactions start from the
    last committed snapshot, whoever committed it, like the readers'. A snapshot, or a second thread writing
    meanwhile, gets an instance of its own."""
    if at is not None or not _WRITER_BUSY.acquire(blocking=False):
        con = new_connection()
        try:
            if at is not None:
                attach(con, spec, at=at)
            else:
                _writable(con, spec)
            yield con
        finally:
            con.close()
        return
    try:
        key = (os.getpid(), os.environ.get(MEMORY_ENV), spec.catalog, spec.data_path, _lake_identity(spec))
        base = _WRITERS.get(key)
        if base is None or _WRITER_USES[key] >= WRITER_REUSE:
            for old in [k for k in _WRITERS if k[0] == key[0] and k[2:4] == key[2:4]]:  # this lake, made again
                _WRITERS.pop(old).close()
                _WRITER_USES.pop(old)
            base = new_connection()
            _writable(base, spec)
            _WRITERS[key], _WRITER_USES[key] = base, 0
        _WRITER_USES[key] += 1
        con = base.cursor()  # its temp objects, macros and transaction are its own; gone when it closes
        try:
            pairs.register(con)
            con.execute(f"use {CATALOG}")
            yield con
        finally:
            con.close()
    finally:
        _WRITER_BUSY.release()


def snapshot_id(con) -> int:
    """The lake's current snapshot: the lineage id recorded with every materialisation."""
    return con.execute(f"select id from {CATALOG}.current_snapshot()").fetchall()[0][0]


def committed_since(con, snapshot: int | None) -> list[tuple[str, int]]:
    """Every table that a commit after `snapshot` created, replaced or changed and that is still there, as
    (layer.name, the last snapshot that changed it): what a run that stopped part-way left in the lake, whatever its
    steps managed to report. The catalogue's own tables map DuckLake's table ids back to names."""
    meta = f"__ducklake_metadata_{CATALOG}"
    return con.execute(f"""
        with changed as (
            select snapshot_id, unnest(coalesce(changes['tables_inserted_into'], [])
                                       || coalesce(changes['tables_deleted_from'], [])) as table_id
            from {CATALOG}.snapshots() where snapshot_id > $snap),
        created as (
            select snapshot_id, unnest(coalesce(changes['tables_created'], [])) as name
            from {CATALOG}.snapshots() where snapshot_id > $snap),
        live as (
            select t.table_id, s.schema_name || '.' || t.table_name as name
            from {meta}.ducklake_table t join {meta}.ducklake_schema s using (schema_id)
            where t.end_snapshot is null and s.end_snapshot is null)
        select name, max(snapshot_id) as snapshot from (
            select live.name, snapshot_id from changed join live on live.table_id = changed.table_id::bigint
            union all
            select created.name, snapshot_id from created where created.name in (select name from live))
        group by name order by snapshot, name""", {"snap": -1 if snapshot is None else snapshot}).fetchall()


def write(con, layer: str, name: str, frame: pl.DataFrame) -> int:
    """Replace table layer.name with `frame` (one atomic commit); returns its row count."""
    con.register("_kalm_frame", frame.to_arrow())
    try:
        con.execute(f"create or replace table {table(layer, name)} as select * from _kalm_frame")
    finally:
        con.unregister("_kalm_frame")
    return frame.height


@contextmanager
def transaction(con):
    """One commit for everything written inside (rolled back on an error): tables produced together change
    together, and the lake's catalogue is reloaded once after the commit instead of once per table."""
    con.execute("begin transaction")
    try:
        yield con
    except BaseException:
        con.execute("rollback")
        raise
    con.execute("commit")


def replace_rows(con, target: str, where: str, rows: str, params: dict | None = None) -> None:
    """Delete the rows of table `target` that match `where` and insert `rows` (a table or view) by column name, in
    one commit."""
    with transaction(con):
        con.execute(f"delete from {target} where {where}", params)
        con.execute(f"insert into {target} by name select * from {rows}")


def exists(con, layer: str, name: str) -> bool:
    """Whether table layer.name is in the lake as last committed: a query on it is bound in a cursor of its own
    (another connection of the same instance), so a miss never aborts the caller's transaction. information_schema
    reads every table's metadata from the catalogue first, ~0.5 s on a lake of 50 tables."""
    probe = con.cursor()
    try:
        probe.execute(f"select 1 from {CATALOG}.{table(layer, name)} limit 0")
        return True
    except duckdb.CatalogException:
        return False
    finally:
        probe.close()


def columns(con, relation: str) -> list[str]:
    """The column names of a table (`table(layer, name)`) or any relation, in order."""
    return [d[0] for d in con.execute(f"select * from {relation} limit 0").description]


def count(con, layer: str, name: str) -> int:
    return con.execute(f"select count(*) from {table(layer, name)}").fetchall()[0][0]


def markdown_sample(con, sql: str, n: int = 5, width: int = 60) -> str:
    """A small Markdown table of the first rows of `sql`, texts cut to `width` characters."""
    frame = con.sql(f"select * from ({sql}) limit {int(n)}").pl()
    if frame.is_empty():
        return "_(no rows)_"
    cols = frame.columns
    cell = lambda v: str(v).replace("|", "\\|").replace("\n", " ")[:width]  # noqa: E731
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in frame.iter_rows()]
    return "\n".join(lines)


def _literal(text: str) -> str:
    return str(text).replace("'", "''")
