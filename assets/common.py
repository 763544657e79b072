"""Helpers shared by the asset modules: table metadata, a per-source asset with its checks in one step."""


from collections.abc import Callable

import dagster as dg

from assets.resources import SettingsResource, WarehouseResource
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


Check = Callable[[dg.AssetExecutionContext, WarehouseResource, dict], dg.AssetCheckResult]


def with_checks(key: dg.AssetKey, checks: dict[str, tuple[str, Check]], **spec):
    """A per-source asset and its blocking checks (name: (description, check)) as one Dagster step: with 70 sources a
    step per check cost ~0.09 s of Dagster's bookkeeping each, four per source (#23 item 5). A check selected
    alone (the UI, `AssetSelection.checks`) runs alone against the lake as it is. A check's third argument is the
    step's state: "key", the asset's; "meta", the build's metadata (None when the check runs alone); and what an
    earlier check of the step left there for the next. The decorated function builds the asset:
    (context, warehouse, settings) -> MaterializeResult."""

    def wrap(build: Callable[..., dg.MaterializeResult]) -> dg.AssetsDefinition:
        @dg.multi_asset(name="__".join(key.path), specs=[dg.AssetSpec(key, **spec)], can_subset=True,
                        check_specs=[dg.AssetCheckSpec(name, asset=key, blocking=True, description=description)
                                     for name, (description, _) in checks.items()])
        def _step(context: dg.AssetExecutionContext, warehouse: WarehouseResource, settings: SettingsResource):
            state = {"key": key, "meta": None}
            if key in context.selected_asset_keys:
                result = build(context, warehouse, settings)
                state["meta"] = result.metadata
                yield result
            for name, (_, check) in checks.items():
                if dg.AssetCheckKey(key, name) in context.selected_asset_check_keys:
                    result = check(context, warehouse, state)
                    yield dg.AssetCheckResult(asset_key=key, check_name=name, passed=result.passed,
                                              metadata=result.metadata, description=result.description,
                                              severity=result.severity)

        return _step

    return wrap
