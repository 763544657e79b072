"""The warehouse: one DuckDB file, one schema per layer (docs/DESIGN.md §1).

DuckDB allows one writer process, so a locked file is reported at once instead of being retried for minutes.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import duckdb
import polars as pl

from kalm_core.identifiers import LAYERS, table

DEFAULT_WAREHOUSE = "data/warehouse.duckdb"


class WarehouseLocked(RuntimeError):
    """Another process holds the DuckDB file."""


def warehouse_path(path: str | os.PathLike | None = None) -> Path:
    """The warehouse file: `path`, else $KALM_WAREHOUSE, else data/warehouse.duckdb."""
    return Path(path or os.environ.get("KALM_WAREHOUSE") or DEFAULT_WAREHOUSE)


def connect(path: str | os.PathLike | None = None, read_only: bool = False, wait_s: float = 2.0):
    """Open the warehouse, creating the layer schemas; fail fast with a clear message when it is locked."""
    p = warehouse_path(path)
    if read_only and not p.exists():
        raise FileNotFoundError(f"no warehouse at {p}: run `kalm run` first (or set KALM_WAREHOUSE)")
    p.parent.mkdir(parents=True, exist_ok=True)
    deadline = time.monotonic() + wait_s
    while True:
        try:
            con = duckdb.connect(str(p), read_only=read_only)
            break
        except duckdb.IOException as e:  # the lock is an IO error; anything else is re-raised untouched
            if "lock" not in str(e).lower():
                raise
            if time.monotonic() >= deadline:
                raise WarehouseLocked(
                    f"the warehouse {p} is locked by another process ({_holder(str(e))}). DuckDB allows one "
                    "writer: stop that process (a `kalm run`, `kalm ui` or a DuckDB shell) or point "
                    "KALM_WAREHOUSE at another file."
                ) from None
            time.sleep(0.2)
    if not read_only:
        for layer in LAYERS:
            con.execute(f'create schema if not exists "{layer}"')
    return con


def _holder(message: str) -> str:
    i = message.find("PID")
    return message[i:].split(")")[0] if i >= 0 else "see DuckDB's message"


def write(con, layer: str, name: str, frame: pl.DataFrame) -> int:
    """Replace table layer.name with `frame`; returns its row count."""
    con.register("_kalm_frame", frame.to_arrow())
    try:
        con.execute(f"create or replace table {table(layer, name)} as select * from _kalm_frame")
    finally:
        con.unregister("_kalm_frame")
    return frame.height


def exists(con, layer: str, name: str) -> bool:
    q = "select count(*) from information_schema.tables where table_schema = ? and table_name = ?"
    return con.execute(q, [layer, name]).fetchall()[0][0] > 0


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
