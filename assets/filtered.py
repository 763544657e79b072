"""Layer filtered: one filtered/<source> per training source (ranking consistency + hard negatives)."""

import itertools
import tempfile

import dagster as dg
import polars as pl

from assets.common import table_metadata, with_checks
from assets.resources import SettingsResource, WarehouseResource
from assets.versions import run_profile_versions
from kalm_core import filter_model
from kalm_core import warehouse as wh
from kalm_core.catalog import Catalog, Source
from kalm_core.config import data_dir, get_profile
from kalm_core.identifiers import table


def _pool(con, name: str | None) -> pl.Series | None:
    if not name:
        return None
    layer, tbl = name.split(".")
    return con.sql(f"select distinct text from {table(layer, tbl)} order by text").pl()["text"]


def _kept_some(context, warehouse: WarehouseResource, state: dict) -> dg.AssetCheckResult:
    name = state["key"].path[-1]
    with warehouse.connect(read_only=True) as con:
        kept, n = con.execute(f"select count(*) filter (kept), count(*) from {table('filtered', name)}").fetchall()[0]
    return dg.AssetCheckResult(passed=kept > 0, metadata={"source": name, "kept": kept, "pairs": n,
                                                          "expected_min_kept": 1},
                               description=None if kept else f"every pair of source {name!r} was filtered out")


def build_filtered_asset(src: Source) -> dg.AssetsDefinition:
    @with_checks(dg.AssetKey(["filtered", src.name]),
                 {"kept_some": ("the filter kept at least one pair of this source", _kept_some)},
                 deps=[dg.AssetKey(["staged", src.name])], group_name="filtered", kinds={"duckdb", "pytorch"},
                 description="Ranking-consistency filter and hard negatives mined from a rank window (KaLM §3.2).")
    def _filtered(context: dg.AssetExecutionContext, warehouse: WarehouseResource,
                  settings: SettingsResource) -> dg.MaterializeResult:
        from kalm_core.filtering import CachedEncoder, filter_results  # torch: imported by a step that runs

        profile = get_profile(settings.profile)
        cfg = profile.filter
        fm = filter_model.resolve(profile)  # an embedder, or an LM the user allowed (`--allow-lm-filter`)
        encoder = CachedEncoder.load(fm.path, fm.config, data_dir() / "embedding_cache", batch_size=cfg.batch_size)
        staged = table("staged", src.name)
        data_dir().mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=data_dir(), prefix=".filtered-") as parts:
            names = itertools.count()

            def sink(part: pl.DataFrame) -> None:  # each chunk's rows (staged columns and results) to disk
                part.write_parquet(f"{parts}/{next(names):06d}.parquet")

            with warehouse.connect(read_only=True) as con:  # DuckDB hands the filter its rows a chunk at a time
                carry = tuple(c for c in wh.columns(con, staged) if c != "negatives")
                stats = filter_results(con, staged, encoder, cfg, sink, _pool(con, cfg.candidate_pool),
                                       profile.model.query_template, cfg.instructed_queries,
                                       n_negatives=profile.n_negatives, carry=carry)
            with warehouse.connect() as con:  # the parts hold whole rows: the table is a copy of them
                con.execute(f"""create or replace table {table('filtered', src.name)} as
                                select * from read_parquet('{parts}/*.parquet')""")
                meta = table_metadata(  # a row per staged pair: the table holds stats.pairs rows
                    con, "filtered", src.name, rows=stats.pairs, pairs=stats.pairs, kept=stats.kept,
                    dropped=stats.dropped, kept_fraction=stats.kept / max(stats.pairs, 1),
                    median_pos_rank=stats.median_pos_rank,
                    corpus_size=stats.corpus_size, top_k=stats.window.top_k,
                    window=f"[{stats.window.lo}, {stats.window.hi})", window_shrunk=stats.window.shrunk,
                    rows_with_random_fill=stats.filled_rows, margin_dropped_candidates=stats.margin_dropped,
                    texts_encoded=encoder.encoded, texts_truncated=encoder.truncated, filter_model=fm.name,
                    filter_model_path=fm.path, filter_pooling=fm.config.pooling, filter_is_embedder=fm.is_embedder,
                    filter_enabled=cfg.enabled,
                )
        if not cfg.enabled:
            context.log.warning(f"filtered/{src.name}: filter.enabled is false: {stats.pairs} pairs kept unranked, "
                                "negatives given or filled at random")
        elif stats.window.shrunk:
            context.log.warning(f"filtered/{src.name}: corpus of {stats.corpus_size} texts is smaller than the "
                                f"window; k and the window shrank to {stats.window}")
        context.log.info(f"filtered/{src.name}: kept {stats.kept}/{stats.pairs}, median positive rank "
                         f"{stats.median_pos_rank}, {encoder.encoded} texts encoded (rest from cache)")
        return dg.MaterializeResult(metadata=meta, **run_profile_versions(context, settings.profile))

    return _filtered


@dg.asset(key=["filtered", "synthetic"], deps=[dg.AssetKey(["synthetic", "examples"])], group_name="filtered",
          kinds={"duckdb", "pytorch"},
          description="The synthetic examples through the same filter; each task type ranks against its own corpus.")
def filtered_synthetic(context: dg.AssetExecutionContext, warehouse: WarehouseResource,
                       settings: SettingsResource) -> dg.MaterializeResult:
    from kalm_core.filtering import CachedEncoder, filter_source

    profile = get_profile(settings.profile)
    with warehouse.connect(read_only=True) as con:
        pairs = con.sql(f"select * from {table('synthetic', 'examples')} order by row_number").pl()
    if pairs.is_empty():
        out = pairs.with_columns(pos_rank=pl.lit(None, pl.Int64), pos_score=pl.lit(None, pl.Float32),
                                 kept=pl.lit(None, pl.Boolean), reason=pl.lit(None, pl.Utf8),
                                 n_given_negatives=pl.lit(None, pl.Int32), n_mined_negatives=pl.lit(None, pl.Int32),
                                 n_filled_negatives=pl.lit(None, pl.Int32),
                                 n_window_candidates=pl.lit(None, pl.Int32), n_margin_dropped=pl.lit(None, pl.Int32),
                                 is_filled=pl.lit(None, pl.Boolean))
        stats = {}
    else:
        fm = filter_model.resolve(profile)
        encoder = CachedEncoder.load(fm.path, fm.config, data_dir() / "embedding_cache")
        parts, stats = [], {}
        for (task,), group in pairs.group_by("synthetic_task", maintain_order=True):
            out_g, st = filter_source(group, encoder, profile.filter, template=profile.model.query_template,
                                      instructed=profile.filter.instructed_queries, n_negatives=profile.n_negatives)
            parts.append(out_g)
            stats[task] = {"pairs": st.pairs, "kept": st.kept, "median_pos_rank": st.median_pos_rank}
        out = pl.concat(parts)
    with warehouse.connect() as con:
        rows = wh.write(con, "filtered", "synthetic", out)
        meta = table_metadata(con, "filtered", "synthetic", rows=rows, per_task_type=dg.MetadataValue.json(stats))
    return dg.MaterializeResult(metadata=meta, **run_profile_versions(context, settings.profile))


def build(catalog: Catalog) -> list[dg.AssetsDefinition]:
    """A filtered asset per training source (each with its kept_some check in its step) and the synthetic one."""
    sources = [s for s in catalog.sources if not s.held_out]  # the evaluation split is never filtered
    return [*(build_filtered_asset(s) for s in sources), filtered_synthetic]
