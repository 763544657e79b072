"""`kalm sql`'s sandbox: read the lake and nothing else, by construction.

Three layers, each enough for the statements the others miss:
1. **The parser decides.** Every statement is parsed by DuckDB itself; only what DuckDB serialises as a plain
   SELECT runs (`json_serialize_sql` refuses every other kind), EXPLAIN only without ANALYZE and only of such a
   SELECT, SET VARIABLE only with such a value. Functions that change state (DuckLake maintenance, checkpoints,
   `query()` of a string, the SQLite and PostgreSQL pass-throughs) are refused wherever they appear in the tree.
2. **The connection cannot reach files.** The lake is attached read-only, then `enable_external_access=false`
   with `allowed_directories=[the data path]` and no allowed path (the catalogue file, which ATTACH allows
   implicitly, is taken back out); `lock_configuration` refuses any later SET; replacement scans are off.
3. **The process cannot write.** With `confine=True` (the `kalm` command) the process then gives up, through
   Linux Landlock, the right to create, write, truncate or remove any file but its own temp folder and the
   catalogue's WAL index. A helper process holds the SQLite catalogue open meanwhile, so its WAL files are never
   removed and made again under a process that may not create them.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from contextlib import closing, contextmanager

import duckdb

from kalm_core import landlock, warehouse

# DuckLake's table functions that only read (`lake.snapshots()` is `ducklake_snapshots('lake')`); any other
# ducklake_* function, present or future, is refused
DUCKLAKE_READS = {"current_snapshot", "last_committed_snapshot", "list_files", "options", "settings", "snapshots",
                  "table_changes", "table_deletions", "table_info", "table_insertions", "scan"}
# built-in functions with a side effect, or that run SQL text or foreign SQL the parser here never sees
REFUSED_FUNCTIONS = {"checkpoint", "force_checkpoint", "enable_logging", "disable_logging", "enable_profiling",
                     "disable_profiling", "truncate_duckdb_logs", "json_execute_serialized_sql", "query",
                     "query_table", "sqlite_attach", "sqlite_query", "sqlite_scan", "postgres_attach",
                     "postgres_query", "postgres_execute", "postgres_scan", "postgres_scan_pushdown",
                     "python_map_function", "pandas_scan", "arrow_scan", "arrow_scan_dumb"}


class ReadOnlyQuery(ValueError):
    """A statement `kalm sql` will not run; the message says which and why."""


_PARSER = None


def _parser() -> duckdb.DuckDBPyConnection:
    """A bare in-memory DuckDB used only to parse (it never sees the lake)."""
    global _PARSER
    if _PARSER is None:
        _PARSER = duckdb.connect(config={"autoinstall_known_extensions": False,
                                         "autoload_known_extensions": False, "enable_external_access": False})
    return _PARSER


def _nodes(tree):
    """Every object node of a serialised statement tree, depth first."""
    if isinstance(tree, dict):
        yield tree
        tree = list(tree.values())
    if isinstance(tree, list):
        for value in tree:
            yield from _nodes(value)


def _functions(tree):
    """Every function call in a serialised statement tree, as (qualifier, name)."""
    for node in _nodes(tree):
        if node.get("class") == "FUNCTION" and "function_name" in node:
            yield (node.get("catalog") or node.get("schema") or "").lower(), node["function_name"].lower()


def _is_file_reader(name: str) -> bool:
    return name.startswith(("read_", "parquet_")) or name in ("glob", "sniff_csv")


def _paths(node) -> list[str] | None:
    """The file paths a reader's argument names: a text constant or a list of them (None: not constant)."""
    if node.get("class") == "CONSTANT" and node["value"]["type"]["id"] == "VARCHAR":
        return [node["value"]["value"]]
    if node.get("class") == "FUNCTION" and node.get("function_name") == "list_value":
        parts = [_paths(child) for child in node["children"]]
        return None if any(p is None for p in parts) else [p for part in parts for p in part]
    return None


def _file_reads(tree):
    """Every file a serialised statement reads: (what, its paths or None when they are not constants)."""
    for node in _nodes(tree):
        if node.get("class") == "FUNCTION" and _is_file_reader(node.get("function_name", "").lower()):
            args = [c for c in node["children"] if not c.get("alias")]  # named options carry an alias
            yield node["function_name"], _paths(args[0]) if args else None
        elif node.get("type") == "BASE_TABLE" and not node.get("schema_name") and \
                any(c in node.get("table_name", "") for c in "./\\"):
            yield "FROM", [node["table_name"]]  # a replacement scan: FROM 'file.parquet'


def _under(path: str, folder: str) -> bool:
    if "://" in folder:
        return path.startswith(folder) and ".." not in path
    return os.path.abspath(path).startswith(os.path.abspath(folder) + os.sep)


def _refused_function(qualifier: str, name: str) -> bool:
    if name.startswith("ducklake_"):
        return name.removeprefix("ducklake_") not in DUCKLAKE_READS
    if qualifier == warehouse.CATALOG:  # lake.snapshots(), lake.<anything else>()
        return name not in DUCKLAKE_READS
    return name in REFUSED_FUNCTIONS


def check_select(sql: str, data_path: str | None = None, what: str = "statement") -> None:
    """ReadOnlyQuery unless `sql` is one plain SELECT calling no function that changes state and reading files
    only under `data_path` (the lake's data files; no file at all when None)."""
    tree = json.loads(_parser().execute("select json_serialize_sql($q)", {"q": sql}).fetchone()[0])
    if tree.get("error") or len(tree.get("statements", [])) != 1:
        raise ReadOnlyQuery(f"kalm sql is read-only: this {what} is not a plain SELECT "
                            f"({tree.get('error_message', 'several statements')})")
    for qualifier, name in _functions(tree):
        if _refused_function(qualifier, name):
            raise ReadOnlyQuery(f"kalm sql is read-only: {name}() changes state or runs SQL text and is refused "
                                f"(lake maintenance is `kalm maintain`)")
    for what_reads, paths in _file_reads(tree):
        if paths is None or data_path is None or not all(_under(p, data_path) for p in paths):
            raise ReadOnlyQuery(f"kalm sql reads files only under the lake's data path ({data_path}), named by "
                                f"constant paths: {what_reads} {paths or '(not a constant)'} is refused")


def _tokens(query: str) -> list[tuple[int, str]]:
    """The statement's tokens as (offset, text), by DuckDB's tokenizer (comments are not tokens)."""
    offsets = [o for o, _ in duckdb.tokenize(query)]
    ends = offsets[1:] + [len(query)]
    return [(o, query[o:e].strip().upper()) for o, e in zip(offsets, ends)]


def check_statements(sql: str, data_path: str | None = None) -> list:
    """The parsed statements of `sql`, or ReadOnlyQuery naming the first one that is not a read (of the lake's
    tables, or of files under `data_path`)."""
    try:
        statements = duckdb.extract_statements(sql)
    except duckdb.Error as e:
        raise ReadOnlyQuery(f"the query does not parse: {e}") from None
    for st in statements:
        tokens = _tokens(st.query)
        words = [text for _, text in tokens[:2]]
        if st.type == duckdb.StatementType.SELECT:
            check_select(st.query, data_path)
        elif st.type == duckdb.StatementType.EXPLAIN:
            if len(tokens) < 2 or words[1] in ("ANALYZE", "ANALYSE", "("):
                raise ReadOnlyQuery("kalm sql is read-only: EXPLAIN ANALYZE (or with options) runs or hides its "
                                    "statement and is refused; EXPLAIN SELECT ... shows the plan")
            check_select(st.query[tokens[1][0]:], data_path, "EXPLAIN's statement")
        elif st.type == duckdb.StatementType.SET and words == ["SET", "VARIABLE"] and len(tokens) > 4:
            # SET VARIABLE name =|TO value: the value is checked as the SELECT that computes it
            check_select("select " + st.query[tokens[4][0]:], data_path, "variable's value")
        else:
            raise ReadOnlyQuery(f"kalm sql is read-only: {words[0] if words else st.type.name} statements are "
                                "refused (only SELECT, EXPLAIN and SET VARIABLE run). Change tables through the "
                                "pipeline (`kalm run`).")
    return statements


_KEEPER = """import shutil, sqlite3, sys
if sys.argv[2]:
    c = sqlite3.connect(sys.argv[2])
    c.execute("select count(*) from sqlite_master").fetchall()
print(flush=True)
sys.stdin.read()
shutil.rmtree(sys.argv[1], ignore_errors=True)
"""


def _keeper(scratch: str, spec: warehouse.LakeSpec) -> subprocess.Popen:
    """A helper process, not confined, that holds the SQLite catalogue open until this process exits (its
    stdin closes), then removes the scratch folder (its parent is not ours to write). While any connection is open
    SQLite keeps the catalogue's -wal and -shm files, which a confined reader could not make again."""
    keeper = subprocess.Popen([sys.executable, "-c", _KEEPER, scratch, str(spec.sqlite_file or "")],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    keeper.stdout.readline()  # connected: the WAL files exist
    return keeper


confined = False  # whether the kernel refuses this process every file write from now on (Landlock)


@contextmanager
def open_sandbox(lake: str | None = None, at: int | None = None, confine: bool = False):
    """A connection that reads the lake (as of snapshot `at`) and cannot touch anything else. `confine=True` also
    takes this process's right to write files away, for good: only for a process that exists to answer queries
    (`kalm sql`); `sandbox.confined` then says whether the kernel enforces it."""
    global confined
    spec = warehouse.lake_spec(lake)
    if not warehouse.exists_lake(spec):
        raise FileNotFoundError(f"no lake at {spec.describe()}: run `kalm run` first (or set KALM_LAKE)")
    scratch = tempfile.mkdtemp(prefix="kalm-sql-")  # DuckDB's spill folder
    keeper = None
    if confine:
        keeper = _keeper(scratch, spec)
        # Landlock binds the calling thread and the threads it starts afterwards, not a DuckDB thread pool that
        # already runs: confine before the connection (and its pool) exists, its extensions installed beforehand
        with closing(warehouse.new_connection()) as installer:
            warehouse.load_extensions(installer, "ducklake", spec.kind)
        wal = [f"{spec.sqlite_file}-wal", f"{spec.sqlite_file}-shm"] if spec.sqlite_file else []
        confined = confined or landlock.forbid_writes([scratch, os.devnull, *wal])
    con = warehouse.new_connection(python_enable_replacements=False, temp_directory=scratch)
    try:
        warehouse.attach(con, spec, read_only=True, at=at)
        allowed = [spec.data_path] if "://" not in spec.data_path else []
        con.execute("set allowed_paths = []")  # ATTACH allowed the catalogue file (and its WAL) implicitly
        con.execute("set allowed_directories = $dirs", {"dirs": [os.path.abspath(d) + "/" for d in allowed]})
        con.execute("set enable_external_access = false")
        con.execute("set lock_configuration = true")
        yield con
    finally:
        con.close()
        if keeper is None:
            shutil.rmtree(scratch, ignore_errors=True)
        # else the helper stops when this process exits and its pipe closes: only then is every SQLite handle of
        # DuckDB's closed, so the helper is the last connection and removes the WAL files, which we may not
