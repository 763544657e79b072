"""Resources: the DuckDB warehouse and the pipeline settings (catalogue, profile)."""

from __future__ import annotations

from contextlib import contextmanager

import dagster as dg

from kalm_core import warehouse
from kalm_core.catalog import Catalog, load_catalog


class WarehouseResource(dg.ConfigurableResource):
    """The warehouse file. Ours, not dagster-duckdb's DuckDBResource, which retries a locked file for ~100 s
    instead of saying it is locked (docs/DESIGN.md, "DuckDB allows one writer")."""

    path: str

    @contextmanager
    def connect(self, read_only: bool = False):
        con = warehouse.connect(self.path, read_only=read_only)
        try:
            yield con
        finally:
            con.close()


class SettingsResource(dg.ConfigurableResource):
    """Which catalogue and profile this code location was built from."""

    catalog_path: str
    profile: str = "demo"

    def catalog(self) -> Catalog:
        return load_catalog(self.catalog_path)
