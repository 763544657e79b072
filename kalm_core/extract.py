"""raw/<source>: read one catalogue source with DuckDB and normalise it to the pair schema (layer 1).

Every record of the file becomes at least one raw row (one per positive): a malformed line or a row DuckDB cannot
decode is kept with `load_error` and its original text, so staging can quarantine it and nothing is lost.

Output columns: source, row_number (1-based record number in the file), positive_index, record_id, query,
positive, negatives (VARCHAR[]), load_error, kept_out, row_instruction, row_task_type, teacher_pos_score,
teacher_neg_scores, file, raw_record, content_hash, loaded_at. `kept_out`: why a task layout made no pair of the
record (kalm_core/sources), e.g. a neutral NLI hypothesis. JSON Lines are read by kalm_core/sources/jsonl.py.
"""

from __future__ import annotations

import glob
from dataclasses import dataclass, replace
from pathlib import Path

import duckdb
import polars as pl

from kalm_core import records
from kalm_core.catalog import Source
from kalm_core.identifiers import table
from kalm_core.warehouse import load_extensions

from kalm_core.sources import jsonl  # noqa: E402  its functions call back into this module at run time

# Fallback names for an unmapped file, FlagEmbedding's first.
_DEFAULT_NAMES = {"query": ["query"], "positive": ["pos", "positive"], "negatives": ["neg", "negatives"]}


class SourceError(RuntimeError):
    """A source that cannot be read; the message names the source and its URI."""


@dataclass(frozen=True)
class RawStats:
    records: int  # records read from the file
    rows: int  # raw rows written (one per positive)
    malformed: int  # records kept with a load_error
    file_records: int | None = None  # physical records of the file, counted before parsing (None: remote)
    kept_out: int = 0  # records a task layout turned into no pair, each with its reason (kalm_core/sources)


def quote_column(name: str) -> str:
    """Quote a column name that comes from a file header (any text; embedded quotes doubled)."""
    return '"' + name.replace('"', '""') + '"'


def is_local(uri: str) -> bool:
    return "://" not in uri


def resolve_columns(src: Source, available: list[str], uri: str) -> dict[str, str | list[str] | None]:
    """Pick each mapped column, or fail listing the expected and the available columns."""
    given = src.columns.model_fields_set
    chosen: dict[str, str | list[str] | None] = {}
    missing: list[str] = []
    for field in ("query", "positive", "negatives", "id"):
        want = getattr(src.columns, field)
        if field in given or field == "id":
            if want is None:
                chosen[field] = None
                continue
            names = [want] if isinstance(want, str) else list(want)
            missing += [n for n in names if n not in available]
            chosen[field] = want
        else:
            found = next((n for n in _DEFAULT_NAMES[field] if n in available), None)
            if found is None and field != "negatives":
                missing.append(" or ".join(_DEFAULT_NAMES[field]))
            chosen[field] = found
    if missing:
        raise SourceError(
            f"source {src.name!r} ({uri}): missing mapped column(s) {missing}; "
            f"expected query/positive/negatives from {src.columns.model_dump()}, available columns: {available}"
        )
    return chosen


def stage_file(con, src: Source, uri: str) -> tuple[str, list[str], dict, int | None]:
    """Read the file into temp table _kalm_lines (jsonl) or _kalm_src; returns (reader kind, available columns,
    describe types, physical records of the file or None where they cannot be counted before reading)."""
    fmt = src.resolved_format()
    if is_local(uri) and not glob.glob(uri, recursive=True):
        raise SourceError(f"source {src.name!r}: no file matches {uri}")
    if not is_local(uri):  # https://, s3://, hf://: httpfs from its pinned package, never downloaded
        load_extensions(con, "httpfs")
    con.execute("drop table if exists _kalm_rejects; drop table if exists _kalm_scans; "
                "drop table if exists _kalm_py_rejects")
    try:
        if fmt == "jsonl":
            n_records = jsonl.stage_lines(con, uri)
            jsonl.refuse_json_array(con, src, uri)
            return "jsonl", jsonl.keys(con, src), {}, n_records
        headerless = "" if src.header else ", header=false, names=$names"
        reader = {
            "parquet": f"read_parquet($u, filename='{FILE_COLUMN}')",
            "json": f"read_json_auto($u, filename='{FILE_COLUMN}')",
            "csv": f"read_csv($u, store_rejects=true, rejects_table='_kalm_rejects', rejects_scan='_kalm_scans'"
                   f"{headerless}, filename='{FILE_COLUMN}')",
        }[fmt]
        n_records = records.physical_records(uri, fmt, src.header)
        con.execute(f"create or replace temp table _kalm_src as select * from {reader}",
                    {"u": uri, **({} if src.header else {"names": src.column_names})})
        types = {r[0]: r[1] for r in con.execute("describe _kalm_src").fetchall()}
        return fmt, [c for c in types if c != FILE_COLUMN], types, n_records
    except duckdb.Error as e:
        raise SourceError(f"source {src.name!r} could not be read from {uri}: {e}") from None


def rejected_lines(con, kind: str, header: bool = True) -> list[tuple[int, str, str]]:
    """(record ordinal, original text, reason) of every line DuckDB's reader, or the Python split, rejected."""
    tables = {t for (t,) in con.execute("select table_name from duckdb_tables() where table_name in "
                                        "('_kalm_rejects', '_kalm_py_rejects')").fetchall()}
    if "_kalm_py_rejects" in tables:
        return con.execute("select line, csv_line, reason from _kalm_py_rejects order by line").fetchall()
    if "_kalm_rejects" not in tables:
        return []
    skip = 1 if kind == "csv" and header else 0  # reject line numbers count the CSV header line
    return con.execute(
        f"select line - {skip}, any_value(coalesce(csv_line, '')), "
        "string_agg(distinct error_type::varchar || ': ' || error_message, '; ') from _kalm_rejects group by line"
    ).fetchall()


def normalise_table(con, cols: dict, types: dict, kind: str = "table") -> None:
    """Typed columns of _kalm_src -> _kalm_norm (a temp table, or a view the raw table reads in the same pass)."""
    def as_list(name: str) -> str:  # a null list is an empty one, like a JSON null
        return (f"coalesce(cast({quote_column(name)} as varchar[]), [])" if types[name].endswith("[]")
                else f"[cast({quote_column(name)} as varchar)]")

    neg = cols.get("negatives")
    names = [neg] if isinstance(neg, str) else list(neg or [])
    negatives = "list_concat(" + ", ".join(as_list(n) for n in names) + ")" if len(names) > 1 else (
        as_list(names[0]) if names else "cast([] as varchar[])")
    rid = f"cast({quote_column(cols['id'])} as varchar)" if cols.get("id") else "null"
    qtype, ptype = types[cols["query"]], types[cols["positive"]]
    # a typed column that is not text makes every row a load error with the type named, never its text form
    error = (f"query is not text ({qtype})" if qtype != "VARCHAR"
             else f"positive is not text ({ptype})" if ptype not in ("VARCHAR", "VARCHAR[]") else None)
    if error:
        con.execute(
            f"""create or replace temp table _kalm_norm as
            select rowid + 1 as ordinal, cast(null as varchar) as query, cast([] as varchar[]) as positives,
                   cast([] as varchar[]) as negatives, {rid} as record_id, $error as load_error,
                   cast(to_json(_kalm_src) as varchar) as raw_record, cast(null as varchar) as kept_out
            from _kalm_src""", {"error": error})
        return
    mapped = {c for v in cols.values() for c in ([v] if isinstance(v, str) else list(v or []))}
    extras = "".join(f",\n               {item}" for item in row_member_columns(types, mapped))
    con.execute(
        f"""create or replace temp {kind} _kalm_norm as
        select rowid + 1 as ordinal,
               cast({quote_column(cols['query'])} as varchar) as query,
               {as_list(cols['positive'])} as positives,
               list_filter({negatives}, lambda x: x is not null) as negatives,
               {rid} as record_id,
               cast(null as varchar) as load_error,
               cast(null as varchar) as raw_record,
               cast(null as varchar) as kept_out{extras}
        from _kalm_src"""
    )


def add_rejected_lines(con, rejected: list[tuple[int, str, str]]) -> None:
    """Undecodable lines join the records with their true line number; the others keep file order around them."""
    if not rejected:
        return
    bad = sorted({int(r[0]) for r in rejected})
    frame = pl.DataFrame(
        {"line": [int(r[0]) for r in rejected], "raw_record": [r[1] for r in rejected],
         "load_error": [r[2] for r in rejected]},
        schema={"line": pl.Int64, "raw_record": pl.Utf8, "load_error": pl.Utf8},
    )
    con.register("_kalm_bad", frame.to_arrow())
    n_total = con.execute("select count(*) from _kalm_norm").fetchall()[0][0] + len(bad)
    con.execute(
        f"""create or replace temp table _kalm_norm as
        with all_lines as (select range + 1 as line from range({int(n_total)})),
        good_lines as (
            select line, row_number() over (order by line) as ordinal
            from all_lines where line not in (select line from _kalm_bad)
        )
        select g.line as ordinal, n.query, n.positives, n.negatives, n.record_id, n.load_error, n.raw_record,
               n.kept_out
        from _kalm_norm as n join good_lines as g on g.ordinal = n.ordinal
        union all
        select line, null, cast([] as varchar[]), cast([] as varchar[]), null, load_error, raw_record, null
        from _kalm_bad"""
    )
    con.unregister("_kalm_bad")


def write_raw(con, src: Source) -> RawStats:
    """_kalm_norm (one row per record) -> raw.<source> (one row per positive) with lineage columns."""
    # max_rows: a cap drawn as a hash sample of the record numbers, spread over every shard of a glob (the first N
    # records of three 400-row shards would be shard 0 and part of shard 1); stable across runs and machines
    limit = (f"where ordinal in (select ordinal from _kalm_norm order by md5(ordinal::varchar) "
             f"limit {int(src.max_rows)})") if src.max_rows else ""
    present = {r[0] for r in con.execute("describe _kalm_norm").fetchall()}
    optional = ", ".join(c if c in present else f"cast(null as {t}) as {c}" for c, t in OPTIONAL_RAW.items())
    con.execute(
        f"""create or replace table {table('raw', src.name)} as
        with records as (select * from _kalm_norm {limit}),
        exploded as (
            select ordinal, record_id, query, negatives, load_error, raw_record, {optional},
                   unnest(case when len(positives) = 0 then [null] else positives end) as positive,
                   generate_subscripts(case when len(positives) = 0 then [null] else positives end, 1)
                       as positive_index
            from records
        )
        select $source as source,
               ordinal as row_number,
               positive_index,
               record_id,
               query,
               positive,
               negatives,
               load_error,
               kept_out,
               -- a row's own instruction and task type (FlagEmbedding's prompt and type), its teacher's scores
               row_instruction,
               row_task_type,
               teacher_pos_scores[positive_index] as teacher_pos_score,
               teacher_neg_scores,
               file,
               raw_record,
               md5(concat_ws(chr(31), query, positive, array_to_string(negatives, chr(31)), raw_record))
                   as content_hash,
               current_localtimestamp() as loaded_at
        from exploded""",
        {"source": src.name},
    )
    # every record became exactly one row with positive_index 1 (a record without positives: one null positive)
    rows, records, malformed, kept_out = con.execute(
        f"select count(*), count(*) filter (positive_index = 1), "
        f"count(*) filter (positive_index = 1 and load_error is not null), "
        f"count(*) filter (positive_index = 1 and kept_out is not null) from {table('raw', src.name)}"
    ).fetchall()[0]
    return RawStats(records=records, rows=rows, malformed=malformed, kept_out=kept_out)


_TEXT = ("VARCHAR", "VARCHAR[]")
FILE_COLUMN = "_kalm_file"  # the file a record came from, as DuckDB's readers name it (a glob reads many)
# FlagEmbedding's per-row members (its released training folders): the row's own instruction and task type, and a
# teacher's scores for its positives and negatives (knowledge distillation)
ROW_MEMBERS = {"prompt": ("row_instruction", "VARCHAR"), "type": ("row_task_type", "VARCHAR"),
               "pos_scores": ("teacher_pos_scores", "DOUBLE[]"), "neg_scores": ("teacher_neg_scores", "DOUBLE[]")}
# raw's optional columns and their types: a path that has no such data writes nulls
OPTIONAL_RAW = {"kept_out": "varchar", "file": "varchar", "row_instruction": "varchar", "row_task_type": "varchar",
                "teacher_pos_scores": "double[]", "teacher_neg_scores": "double[]"}


def row_member_columns(types: dict, mapped: set) -> list[str]:
    """SQL select items for the FlagEmbedding members a typed table holds (and the file lineage)."""
    items = [f"{quote_column(FILE_COLUMN)} as file"] if FILE_COLUMN in types else []
    for member, (column, want) in ROW_MEMBERS.items():
        if member in types and member not in mapped and (types[member] == want or
                                                         want == "DOUBLE[]" and types[member].endswith("[]")):
            items.append(f"try_cast({quote_column(member)} as {want.lower()}) as {column}")
    return items


def load_file_source(con, src: Source, base_dir: Path) -> RawStats:
    """Read a `file` source into raw.<name>."""
    uri = src.resolved_uri(base_dir)
    if src.resolved_format() == "jsonl" and is_local(uri) and glob.glob(uri, recursive=True):
        stats = jsonl.load_clean_jsonl(con, src, uri)
        if stats is not None:
            return stats
    kind, available, types, n_records = stage_file(con, src, uri)
    if n_records == 0:
        raise SourceError(f"source {src.name!r}: {uri} holds no records (an empty file)")
    cols = resolve_columns(src, available, uri)
    rejected = rejected_lines(con, kind, src.header)
    if kind == "jsonl":
        jsonl.normalise_lines(con, cols, available)
    else:
        normalise_table(con, cols, types)
    add_rejected_lines(con, rejected)
    return replace(write_raw(con, src), file_records=n_records)


def load_frame_source(con, src: Source, frame: pl.DataFrame) -> RawStats:
    """Write an extracted frame (ordinal, query, positives, negatives, record_id) into raw.<name>."""
    frame = frame.with_columns(
        pl.lit(None, pl.Utf8).alias(c) for c in ("load_error", "raw_record", "kept_out") if c not in frame.columns
    ).select("ordinal", "query", "positives", "negatives", "record_id", "load_error", "raw_record", "kept_out")
    con.register("_kalm_frame", frame.to_arrow())
    con.execute("create or replace temp table _kalm_norm as select * from _kalm_frame")
    con.unregister("_kalm_frame")
    return replace(write_raw(con, src), file_records=frame.height)


def file_fingerprint(src: Source, base_dir: Path) -> str:
    """The data version of a file source: a hash of every matched local file's name and bytes.

    A remote URI is versioned by the URI itself (its change cannot be seen offline)."""
    import hashlib

    if src.kind == "sql":
        from kalm_core.sources.sql_source import fingerprint  # its SQL and every input file

        return fingerprint(src, base_dir)
    if src.kind == "mteb":
        from kalm_core.sources.mteb_source import fingerprint as mteb_fingerprint  # its revision or local copy

        return mteb_fingerprint(src, base_dir)
    uri = src.resolved_uri(base_dir)
    if not is_local(uri):
        return hashlib.sha256(uri.encode()).hexdigest()[:16]
    if src.format == "beir":
        from kalm_core.sources.beir import fingerprint  # its three files, not the folder

        return fingerprint(Path(uri), src.beir_split)
    h = hashlib.sha256()
    for f in sorted(glob.glob(uri, recursive=True)):
        h.update(f.encode())
        h.update(Path(f).read_bytes())
    return h.hexdigest()[:16]


def file_facts(src: Source, base_dir: Path) -> dict:
    """What a user wants to see about a file source's data: where it is, how many files and bytes, how many
    records (parquet row counts; text files' lines, less a header line per csv/tsv file) and when it last
    changed. A remote URI or a non-file source gives its location alone."""
    from datetime import datetime, timezone

    uri = src.resolved_uri(base_dir) if src.kind == "file" and src.uri else None
    if uri is None or not is_local(uri):
        return {"location": uri or src.origin}
    root = Path(uri)
    files = sorted(p for p in root.rglob("*") if p.is_file()) if root.is_dir() else \
        [Path(f) for f in sorted(glob.glob(uri, recursive=True)) if Path(f).is_file()]
    records = 0
    for f in files:
        if f.suffix == ".parquet":
            import pyarrow.parquet as pq

            records += pq.ParquetFile(f).metadata.num_rows
        else:
            with f.open("rb") as fh:
                lines = sum(chunk.count(b"\n") for chunk in iter(lambda: fh.read(1 << 24), b""))
            header = src.header and f.suffix in (".csv", ".tsv") and lines > 0
            records += lines - header
    newest = max((f.stat().st_mtime for f in files), default=None)
    return {"location": uri, "files": len(files), "size_bytes": sum(f.stat().st_size for f in files),
            "records": records,
            "last_modified": datetime.fromtimestamp(newest, timezone.utc).isoformat(timespec="seconds")
            if newest else "no file matches"}
