"""Personas for the brainstorm stage: the shipped catalog/personas.jsonl (written by the project) or Persona Hub."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import polars as pl

from kalm_core.catalog import DEFAULT_PERSONAS, Personas


def load_personas(con, spec: Personas, base_dir: Path) -> pl.DataFrame:
    """persona_id, persona: read with DuckDB from any URI it can read; ids are content hashes when absent."""
    raw = spec.uri or str(DEFAULT_PERSONAS)
    uri = raw if ("://" in raw or os.path.isabs(raw)) else str((base_dir / raw).resolve())
    col = spec.column.replace('"', '""')
    limit = f"limit {int(spec.max_rows)}" if spec.max_rows else ""
    try:
        frame = con.sql(f'select cast("{col}" as varchar) as persona from read_json_auto(?) {limit}'
                        if uri.endswith((".jsonl", ".json")) else
                        f'select cast("{col}" as varchar) as persona from read_parquet(?) {limit}', params=[uri]).pl()
    except Exception as e:  # duckdb raises IOException, BinderException... each named in the message
        raise ValueError(f"personas could not be read from {uri} (column {spec.column!r}): {e}") from None
    frame = frame.filter(pl.col("persona").str.strip_chars() != "").unique("persona", maintain_order=True)
    ids = [hashlib.md5(p.encode()).hexdigest()[:10] for p in frame["persona"]]
    return frame.with_columns(pl.Series("persona_id", ids)).select("persona_id", "persona")
