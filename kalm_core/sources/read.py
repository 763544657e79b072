"""A file in a task layout (kalm_core.catalog.LAYOUTS) -> raw.<source>: DuckDB reads it as any file source
(kalm_core/extract.py: parquet, csv, json, jsonl with its odd lines kept), the layout's columns come out as text,
and the layout's module turns the rows into pairs, each record one raw row."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import polars as pl

from kalm_core import extract
from kalm_core.catalog import LAYOUTS, Source
from kalm_core.extract import RawStats, SourceError
from kalm_core.sources import convert
from kalm_core.sources.schema import LayoutError

OPTIONAL = ("label_text", "score", "label", "id")  # read when the catalogue names them


def layout_columns(src: Source) -> dict[str, str]:
    """The layout's field -> the file's column, for every field the catalogue names."""
    needed = LAYOUTS[src.layout][0]
    return {f: getattr(src.columns, f) for f in (*needed, *OPTIONAL)
            if getattr(src.columns, f) is not None and (f in needed or f in src.columns.model_fields_set)}


def read_layout(con, src: Source, uri: str) -> tuple[pl.DataFrame, list, int | None]:
    """(ordinal, record_id, load_error, raw_record and the layout's fields as text), the lines DuckDB could not
    decode, and the file's physical record count."""
    kind, available, _, n_records = extract.stage_file(con, src, uri)
    if n_records == 0:
        raise SourceError(f"source {src.name!r}: {uri} holds no records (an empty file)")
    cols = layout_columns(src)
    missing = sorted(c for c in cols.values() if c not in available)
    if missing:
        raise SourceError(f"source {src.name!r} ({uri}): missing column(s) {missing} of its {src.layout} layout "
                          f"{cols}; available columns: {available}")
    rejected = extract.rejected_lines(con, kind, src.header)
    fields = [f for f in cols if f != "id"]
    if kind == "jsonl":
        path = lambda c: _literal('$."' + c.replace('"', '\\"') + '"')  # noqa: E731
        member = lambda c: f"case when is_object then json_extract_string(line, {path(c)}) end"  # noqa: E731
        sql = f"""select ordinal,
                   {', '.join(f'{member(cols[f])} as {f}' for f in fields)},
                   {member(cols['id']) if 'id' in cols else 'null'} as record_id,
                   case when not is_object then 'malformed json' end as load_error,
                   case when not is_object then line end as raw_record
            from (select rowid + 1 as ordinal, line,
                         starts_with(ltrim(line), '{{') and coalesce(try(json_valid(line)), false) as is_object
                  from _kalm_lines)"""
    else:
        col = lambda c: "cast(" + extract.quote_column(c) + " as varchar)"  # noqa: E731
        sql = f"""select rowid + 1 as ordinal,
                   {', '.join(f'{col(cols[f])} as {f}' for f in fields)},
                   {col(cols['id']) if 'id' in cols else 'null'} as record_id,
                   cast(null as varchar) as load_error,
                   cast(null as varchar) as raw_record
            from _kalm_src"""
    frame = con.execute(sql).pl().cast({f: pl.Utf8 for f in (*fields, "record_id", "load_error", "raw_record")})
    # a malformed line has no fields
    frame = frame.with_columns(pl.when(pl.col("load_error").is_null()).then(pl.col(f)).alias(f) for f in fields)
    return frame, rejected, n_records


def load_layout_source(con, src: Source, base_dir: Path, seed: int = 0) -> RawStats:
    """Read a file source in a task layout, convert its rows to pairs and write raw.<name>."""
    uri = src.resolved_uri(base_dir)
    frame, rejected, n_records = read_layout(con, src, uri)
    try:
        pairs = convert(frame, src, seed)
    except LayoutError as e:
        raise SourceError(f"source {src.name!r} ({uri}): {e}") from None
    con.register("_kalm_pairs", pairs.to_arrow())
    con.execute("create or replace temp table _kalm_norm as select * from _kalm_pairs")
    con.unregister("_kalm_pairs")
    keep_original_text(con, "_kalm_lines" if src.resolved_format() == "jsonl" else "_kalm_src")
    extract.add_rejected_lines(con, rejected)
    return replace(extract.write_raw(con, src), file_records=n_records)


def keep_original_text(con, source_table: str) -> None:
    """A kept-out record keeps its original text (its line, or its row as JSON), read only for those records: the
    text of every record would cost a JSON rendering per row (1M rows: seconds) for the few kept out."""
    text = "line" if source_table == "_kalm_lines" else f"cast(to_json({source_table}) as varchar)"
    con.execute(f"""update _kalm_norm set raw_record = o.text
        from (select rowid + 1 as ordinal, {text} as text from {source_table}
              where rowid + 1 in (select ordinal from _kalm_norm where kept_out is not null)) o
        where o.ordinal = _kalm_norm.ordinal""")


def _literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"
