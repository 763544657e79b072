"""SQL-file models (sql/<layer>/<name>.sql, marts first of all) as assets, with key checks."""


import re

import dagster as dg

from assets.common import table_metadata
from assets.resources import WarehouseResource
from kalm_core import sql_models
from kalm_core import warehouse as wh
from kalm_core.identifiers import table


def build_sql_asset(model: sql_models.SqlModel, built: dict[str, list[str]]) -> dg.AssetsDefinition:
    deps = [dg.AssetKey(list(d)) for d in model.dependencies(built)]

    @dg.asset(key=[model.layer, model.name], deps=deps, group_name=model.layer, kinds={"duckdb"},
              code_version=model.code_version, description=model.description)
    def _model(warehouse: WarehouseResource) -> dg.MaterializeResult:
        with warehouse.connect() as con:
            sql_models.run_model(con, model, built)
            meta = table_metadata(con, model.layer, model.name, sql=dg.MetadataValue.md(f"```sql\n{model.text}\n```"))
        return dg.MaterializeResult(metadata=meta)

    return _model


def build_key_checks(model: sql_models.SqlModel) -> list[dg.AssetChecksDefinition]:
    """not-empty and unique-key checks for a model whose header names a single-column `key`."""
    key_col = model.header.get("key", "")
    asset_key = dg.AssetKey([model.layer, model.name])

    @dg.asset_check(asset=asset_key, name="not_empty", description="the table has rows")
    def _not_empty(warehouse: WarehouseResource) -> dg.AssetCheckResult:
        with warehouse.connect(read_only=True) as con:
            n = con.execute(f"select count(*) from {table(model.layer, model.name)}").fetchall()[0][0]
        return dg.AssetCheckResult(passed=n > 0, metadata={"row_count": n, "expected_min": 1})

    if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", key_col):
        return [_not_empty]

    @dg.asset_check(asset=asset_key, name=f"unique_{key_col}", description=f"{key_col} is unique and not null")
    def _unique(warehouse: WarehouseResource) -> dg.AssetCheckResult:
        with warehouse.connect(read_only=True) as con:
            n, distinct, nulls = con.execute(
                f'select count(*), count(distinct "{key_col}"), count(*) - count("{key_col}") '
                f"from {table(model.layer, model.name)}"
            ).fetchall()[0]
        return dg.AssetCheckResult(passed=n == distinct and nulls == 0,
                                   metadata={"rows": n, "distinct_keys": distinct, "null_keys": nulls})

    return [_not_empty, _unique]


TRAINING_PAIRS = dg.AssetKey(["marts", "training_pairs"])
EVAL_PAIRS = dg.AssetKey(["marts", "eval_pairs"])


@dg.asset_check(asset=TRAINING_PAIRS, name="no_eval_overlap", blocking=True, additional_deps=[EVAL_PAIRS],
                description="no training pair (by normalised query + positive, i.e. pair_id) is in the evaluation "
                            "split: evaluation data never leaks into training (evaluation guards the other side)")
def no_eval_overlap(warehouse: WarehouseResource) -> dg.AssetCheckResult:
    with warehouse.connect(read_only=True) as con:
        if not wh.exists(con, "marts", "eval_pairs"):
            return dg.AssetCheckResult(passed=True, metadata={"overlapping_pairs": 0, "not_built_yet": "eval_pairs"})
        overlap, sources = overlap_count(con)
    return dg.AssetCheckResult(
        passed=overlap == 0, metadata={"overlapping_pairs": overlap, "expected": 0},
        description=None if overlap == 0 else
        f"{overlap} training pair(s) are also in the evaluation split ({sources}): drop them from the training "
        "source or mark it held_out")


def overlap_count(con, training: str = "marts.training_pairs") -> tuple[int, str | None]:
    """(pairs whose pair_id, i.e. normalised query + positive, is in both `training` and marts.eval_pairs, which
    sources they come from)."""
    layer, name = training.split(".")
    return con.execute(
        f"select count(*), string_agg(distinct t.source || ' ~ ' || e.source, ', ') "
        f"from {table(layer, name)} as t join {table('marts', 'eval_pairs')} as e using (pair_id)").fetchall()[0]


def build(built: dict[str, list[str]]) -> tuple[list, list]:
    models = sql_models.discover()
    checks = [c for m in models for c in build_key_checks(m)]
    if any((m.layer, m.name) == ("marts", "training_pairs") for m in models) and \
            any((m.layer, m.name) == ("marts", "eval_pairs") for m in models):
        checks.append(no_eval_overlap)
    return [build_sql_asset(m, built) for m in models], checks
