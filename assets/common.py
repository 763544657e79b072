"""Helpers shared by the asset modules: table metadata."""

from __future__ import annotations

import dagster as dg

from kalm_core import warehouse
from kalm_core.identifiers import table


def table_metadata(con, layer: str, name: str, rows: int | None = None, **extra) -> dict:
    """row_count (`rows` when the caller just counted them: each query on a lake table costs ~15 ms of catalogue
    work), a 5-row Markdown sample, the table name and the lake snapshot that holds this version of it (its lineage:
    `kalm sql --at SNAPSHOT` reads the lake as of then), plus any extra scalars."""
    return {
        "dagster/row_count": dg.MetadataValue.int(warehouse.count(con, layer, name) if rows is None else rows),
        "table": f"{layer}.{name}",
        "lake_snapshot": dg.MetadataValue.int(warehouse.snapshot_id(con)),
        "sample": dg.MetadataValue.md(warehouse.markdown_sample(con, f"select * from {table(layer, name)}")),
        **extra,
    }
