"""JSON Lines sources (FlagEmbedding's layout and most released training data): read by DuckDB in one typed pass when
every line is a clean object, else line by line, each odd line kept as a quarantined record with its reason."""

from __future__ import annotations

import json
from dataclasses import replace

import duckdb
import polars as pl

from kalm_core import extract, records
from kalm_core.catalog import Source

KEY_SAMPLE_LINES = 20_480  # lines whose keys decide the columns, like DuckDB's read_json sample


def stage_lines(con, uri: str) -> int | None:
    """jsonl -> _kalm_lines, one VARCHAR per line. DuckDB's reader parks undecodable lines in _kalm_rejects; a
    file with a CR, a NUL or an over-long line is split in Python instead (records.py), its odd lines parked in
    _kalm_py_rejects with their reasons. Returns the file's physical line count (None for a remote file)."""
    scan = records.scan_lines(records.files(uri)) if extract.is_local(uri) else None
    if scan is not None and scan.needs_python_split():
        good, bad = records.split_lines(records.files(uri))
        con.register("_kalm_good", pl.DataFrame({"line": good}, schema={"line": pl.Utf8}).to_arrow())
        con.execute("create or replace temp table _kalm_lines as select line from _kalm_good")
        con.unregister("_kalm_good")
        con.register("_kalm_bad", pl.DataFrame(bad, schema={"line": pl.Int64, "csv_line": pl.Utf8,
                                                            "reason": pl.Utf8}, orient="row").to_arrow())
        con.execute("create or replace temp table _kalm_py_rejects as select * from _kalm_bad")
        con.unregister("_kalm_bad")
        return scan.records
    con.execute(
        f"create or replace temp table _kalm_lines as select line, {extract.FILE_COLUMN} from read_csv($u, "
        "columns={'line': 'VARCHAR'}, "
        "header=false, delim=chr(31), quote='', escape='', auto_detect=false, max_line_size=$max, "
        f"store_rejects=true, rejects_table='_kalm_rejects', rejects_scan='_kalm_scans', filename='{extract.FILE_COLUMN}')",
        {"u": uri, "max": records.MAX_RECORD_BYTES + 16},
    )
    return scan.records if scan is not None else None


def refuse_json_array(con, src: Source, uri: str) -> None:
    """A .jsonl file that holds one JSON array (`[{...}, {...}]`) is JSON, not JSON Lines: say so, by name."""
    first = con.execute("select starts_with(ltrim(line), '[') and case when json_valid(line) then "
                        "coalesce(json_type(json_extract(line, '$[0]')) = 'OBJECT', false) else true end "
                        "from _kalm_lines where trim(line) <> '' limit 1"
                        ).fetchall()  # an array spread over lines, or one line holding the objects
    if first and first[0][0]:
        raise extract.SourceError(f"source {src.name!r} ({uri}) holds a JSON array, not JSON Lines (one object per line): "
                          "set `format: json` for it, or write one object per line")


def keys(con, src: Source) -> list[str]:
    """The object keys of the file's lines: those of a sample (as DuckDB's own readers sample), or of every line
    when the sample lacks a column the mapping needs."""
    def keys(limit: str) -> list[str]:
        rows = con.execute(
            f"with objects as (select try(json_keys(line)) as k from (select line from _kalm_lines {limit}) "
            "where starts_with(ltrim(line), '{')) select distinct unnest(k) from objects").fetchall()
        return sorted(k for (k,) in rows)

    sample = keys(f"limit {KEY_SAMPLE_LINES}")
    try:
        extract.resolve_columns(src, sample, "")
        return sample
    except extract.SourceError:
        return keys("")


def json_list(member: str) -> str:
    """SQL for a JSON member that is a list or a scalar -> VARCHAR[] (a JSON null -> [])."""
    return (f"case json_type({member}) when 'ARRAY' then from_json({member}, '[\"VARCHAR\"]') "
            f"when 'NULL' then cast([] as varchar[]) else [{member} ->> '$'] end")


def normalise_lines(con, cols: dict, available: list[str]) -> None:
    """Parse each line once into the mapped members; a line that is not a JSON object keeps its text."""
    neg = cols.get("negatives")
    neg_names = [neg] if isinstance(neg, str) else list(neg or [])
    members = [c for c in (cols["query"], cols["positive"], cols.get("id"), *neg_names) if c]
    row = [m for m in extract.ROW_MEMBERS if m in available and m not in members]  # FlagEmbedding's per-row members
    structure = json.dumps({m: "JSON" for m in members + row})
    shape = {"DOUBLE[]": """'["DOUBLE"]'""", "VARCHAR": """'"VARCHAR"'"""}
    extras = [f"case when load_error is null then try(from_json(rec.{extract.quote_column(m)}, {shape[extract.ROW_MEMBERS[m][1]]})) "
              f"end as {extract.ROW_MEMBERS[m][0]}" for m in row]
    lines = {r[0] for r in con.execute("describe _kalm_lines").fetchall()}
    extras += [f"{extract.quote_column(extract.FILE_COLUMN)} as file"] if extract.FILE_COLUMN in lines else []
    extra_sql = "".join(f",\n               {e}" for e in extras)
    rec = lambda name: f"rec.{extract.quote_column(name)}"  # noqa: E731
    negatives = [json_list(rec(n)) for n in neg_names]
    neg_sql = ("list_concat(" + ", ".join(negatives) + ")" if len(negatives) > 1
               else negatives[0] if negatives else "cast([] as varchar[])")
    rid = f"{rec(cols['id'])} ->> '$'" if cols.get("id") else "cast(null as varchar)"
    q, pos = rec(cols["query"]), rec(cols["positive"])
    # a query or positive must be text: a list or an object is a load error, never its JSON text
    type_error = (f"case when json_type({q}) not in ('VARCHAR', 'NULL') then 'query is not text (' || json_type({q}) "
                  f"|| ')' when json_type({pos}) = 'ARRAY' and json_structure({pos}) not in ('[\"VARCHAR\"]', "
                  f"'[\"NULL\"]') then 'positive is not text' "
                  f"when json_type({pos}) not in ('VARCHAR', 'NULL', 'ARRAY') then 'positive is not text (' || "
                  f"json_type({pos}) || ')' end")
    con.execute(
        f"""create or replace temp table _kalm_norm as
        with parsed as (
            select rowid + 1 as ordinal, *,
                   case when starts_with(ltrim(line), '{{') then try(json_transform(line, $structure)) end as rec
            from _kalm_lines
        ),
        checked as (
            select *, case when rec is null then 'malformed json' else {type_error} end as load_error
            from parsed
        )
        select ordinal,
               case when load_error is null then {q} ->> '$' end as query,
               case when load_error is null then {json_list(pos)} else cast([] as varchar[]) end as positives,
               case when load_error is null then list_filter({neg_sql}, lambda x: x is not null)
                    else cast([] as varchar[]) end as negatives,
               case when rec is not null then {rid} end as record_id,
               load_error,
               case when load_error is null then null else line end as raw_record,
               cast(null as varchar) as kept_out{extra_sql}
        from checked""",
        {"structure": structure},
    )


def load_clean_jsonl(con, src: Source, uri: str) -> extract.RawStats | None:
    """The fast path for a local jsonl file of JSON objects with text where text belongs: DuckDB's JSON reader
    detects each column's type over every record (a column with any other value in any record becomes JSON) and
    parses each line once, straight into typed columns; raw.<source> is written in the same pass (1.6x faster than
    keeping each line's text and parsing it in SQL). Anything else (a malformed, blank or non-object line, a
    duplicate key, a query that is ever a list or a number) returns None and leaves the lake as it was; the line
    path then loads the file and keeps each odd line as a quarantined record with its reason."""
    paths = records.files(uri)
    scan = records.scan_lines(paths)
    if scan.records == 0 or scan.needs_python_split():
        return None
    try:
        con.execute(
            "create or replace temp table _kalm_src as select * from read_json($u, format = 'newline_delimited', "
            f"records = true, sample_size = -1, maximum_object_size = {records.MAX_RECORD_BYTES + 16}, "
            f"filename = '{extract.FILE_COLUMN}')", {"u": uri})
    except duckdb.Error:
        return None
    try:
        if con.execute("select count(*) from _kalm_src").fetchall()[0][0] != scan.records:
            return None  # a blank line: the reader skips it, the line path keeps it as a record
        types = {r[0]: r[1] for r in con.execute("describe _kalm_src").fetchall()}
        try:
            cols = extract.resolve_columns(src, [c for c in types if c != extract.FILE_COLUMN], uri)
        except extract.SourceError:
            return None
        negs = cols.get("negatives")
        negs = [negs] if isinstance(negs, str) else list(negs or [])
        if (types[cols["query"]] != "VARCHAR" or types[cols["positive"]] not in extract._TEXT
                or any(types[n] not in extract._TEXT for n in negs)
                or (cols.get("id") and types[cols["id"]] not in ("VARCHAR", "BIGINT", "UBIGINT"))):
            return None
        extract.normalise_table(con, cols, types, kind="view")
        stats = extract.write_raw(con, src)  # one statement: raw.<source> is replaced in one commit
    finally:
        con.execute("drop view if exists _kalm_norm; drop table if exists _kalm_src")
    return replace(stats, file_records=scan.records)
