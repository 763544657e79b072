"""Layer staged: one staged/<source> asset per source from sql/staged/stg_source.sql, with its checks in its step."""


import dagster as dg

from assets.common import table_metadata, with_checks
from assets.resources import SettingsResource, WarehouseResource
from assets.versions import run_profile_versions
from kalm_core import staging
from kalm_core.catalog import Catalog, Source
from kalm_core.config import get_profile
from kalm_core.sql_models import SqlModel, parse_header
from kalm_core.token_length import length_limits


def _template() -> SqlModel:
    text = staging.STAGING_SQL.read_text(encoding="utf-8")
    return SqlModel("staged", "stg_source", staging.STAGING_SQL, text, parse_header(text))


def _counts(context, warehouse: WarehouseResource, state: dict) -> dict[str, int]:
    """The source's rows recounted from the lake, once for both checks of a step."""
    if "accounting" not in state:
        with warehouse.connect(read_only=True) as con:
            state["accounting"] = staging.accounting(con, state["key"].path[-1])
    return state["accounting"]


def _row_accounting(context, warehouse: WarehouseResource, state: dict) -> dg.AssetCheckResult:
    n = _counts(context, warehouse, state)
    out = n["kept"] + n["rejected"] + n["duplicates"]
    return dg.AssetCheckResult(passed=n["rows_in"] == out, metadata={**n, "rows_out": out})


def _not_empty(context, warehouse: WarehouseResource, state: dict) -> dg.AssetCheckResult:
    kept = _counts(context, warehouse, state)["kept"]
    return dg.AssetCheckResult(passed=kept > 0, metadata={"rows_kept": kept, "expected_min": 1})


CHECKS = {"row_accounting": ("rows in raw = kept + rejected + duplicates: staging loses nothing", _row_accounting),
          "not_empty": ("the source kept at least one pair", _not_empty)}


def build_staged_asset(src: Source) -> dg.AssetsDefinition:
    model = _template()

    @with_checks(dg.AssetKey(["staged", src.name]), CHECKS, deps=[dg.AssetKey(["raw", src.name])],
                 group_name="staged", kinds={"duckdb"}, code_version=model.code_version,
                 description=f"Source {src.name!r} staged: {model.description[:1].lower()}{model.description[1:]}",
                 metadata=model.metadata)
    def _staged(context: dg.AssetExecutionContext, warehouse: WarehouseResource,
                settings: SettingsResource) -> dg.MaterializeResult:
        profile = get_profile(settings.profile)  # its model's max lengths and tokenizer set the length limits
        limits = length_limits(profile.model)
        with warehouse.connect() as con:
            stats = staging.stage_source(con, src, model.text, profile.model)
            meta = table_metadata(
                con, "staged", src.name, rows=stats.kept, rows_in=stats.rows_in, rows_kept=stats.kept,
                rows_rejected=stats.rejected, rows_duplicate=stats.duplicates,
                reject_reasons=dg.MetadataValue.json(stats.reasons), sql=dg.MetadataValue.path(str(model.path)),
                max_query_tokens=limits.max_query_tokens, max_passage_tokens=limits.max_passage_tokens,
                tokenizer=limits.tokenizer, texts_tokenized=stats.tokenized,
            )
        context.log.info(f"staged/{src.name}: {stats.rows_in} in = {stats.kept} kept + {stats.rejected} "
                         f"rejected + {stats.duplicates} duplicates")
        return dg.MaterializeResult(metadata=meta, **run_profile_versions(context, settings.profile,
                                                                          base=model.code_version))

    return _staged


def build(catalog: Catalog) -> list[dg.AssetsDefinition]:
    """The staged assets, each with its row_accounting and not_empty checks in its step."""
    return [build_staged_asset(s) for s in catalog.sources]
