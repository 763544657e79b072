"""A source as a SQL model over several files, for layouts that need a join: MS MARCO's id triples
(`collection.tsv`, `queries.train.tsv`, `qidpidtriples`) are three headerless files of ids and texts.

The catalogue names the SQL file and its input files; each file's absolute path is a DuckDB variable of the same
name (`getvariable('collection')`), so the SQL reads each file as it needs to (a headerless TSV, parquet shards).
Its one SELECT returns a row per record: query, positive (a text or a list), negatives (optional), record_id
(optional), or the columns `columns:` maps. The SQL text and every input file are the source's version.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import replace
from pathlib import Path

import duckdb

from kalm_core import extract
from kalm_core.catalog import Source
from kalm_core.extract import RawStats, SourceError


def sql_path(src: Source, base_dir: Path) -> Path:
    path = Path(src.sql)
    return path if path.is_absolute() else (base_dir / path).resolve()


def input_files(src: Source, base_dir: Path) -> dict[str, Path]:
    """Each named input file, resolved against the catalogue's folder; a SourceError names any that is missing."""
    files = {name: Path(uri) if Path(uri).is_absolute() else (base_dir / uri).resolve()
             for name, uri in src.files.items()}
    missing = {name: str(p) for name, p in files.items() if not p.is_file()}
    if missing:
        raise SourceError(f"source {src.name!r}: input file(s) not found: {missing}")
    return files


def fingerprint(src: Source, base_dir: Path) -> str:
    """The data version: the SQL text and every input file's name and bytes."""
    h = hashlib.sha256(sql_path(src, base_dir).read_bytes())
    for name, path in sorted(input_files(src, base_dir).items()):
        h.update(name.encode())
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
    return h.hexdigest()[:16]


def _one_select(con, text: str, where: Path) -> None:
    tree = json.loads(con.execute("select json_serialize_sql($q)", {"q": text}).fetchone()[0])
    if tree.get("error") or len(tree.get("statements", [])) != 1:
        raise SourceError(f"{where} must hold one SELECT statement "
                          f"({tree.get('error_message', 'it holds several')})")


def load_sql_source(con, src: Source, base_dir: Path) -> RawStats:
    """raw.<name> from the rows the source's SELECT returns, one record each."""
    path = sql_path(src, base_dir)
    if not path.is_file():
        raise SourceError(f"source {src.name!r}: SQL file {path} not found")
    text = path.read_text(encoding="utf-8").strip().rstrip(";")
    _one_select(con, text, path)
    files = input_files(src, base_dir)
    for name, file in files.items():
        con.execute(f"set variable {name} = $path", {"path": str(file)})
    try:
        con.execute(f"create or replace temp table _kalm_src as {text}")
    except duckdb.Error as e:
        raise SourceError(f"source {src.name!r}: {path} failed: {e}") from None
    finally:
        for name in files:
            con.execute(f"reset variable {name}")
    types = {r[0]: r[1] for r in con.execute("describe _kalm_src").fetchall()}
    if "id" not in src.columns.model_fields_set and "record_id" in types:  # the SELECT's own record ids
        src = src.model_copy(update={"columns": src.columns.model_copy(update={"id": "record_id"})})
    cols = extract.resolve_columns(src, list(types), str(path))
    n_records = con.execute("select count(*) from _kalm_src").fetchall()[0][0]
    if n_records == 0:
        raise SourceError(f"source {src.name!r}: {path} returned no rows")
    extract.normalise_table(con, cols, types)
    stats = extract.write_raw(con, src)
    con.execute("drop table if exists _kalm_src")
    return replace(stats, file_records=n_records)
