"""Layer batched: semi-homogeneous global batches, their purity, and the parquet snapshot training reads."""

import dagster as dg

from assets.common import table_metadata
from assets.resources import SettingsResource, WarehouseResource
from assets.versions import run_profile_versions
from kalm_core import epoch_batches, mixing, plots
from kalm_core import warehouse as wh
from kalm_core.batching import allowed_purity_gap, purity_ok
from kalm_core.catalog import Catalog
from kalm_core.config import data_dir, get_profile
from kalm_core.identifiers import table
from kalm_core.snapshot import export_snapshot
from kalm_core.versions import code_version

TRAINING_PAIRS = dg.AssetKey(["marts", "training_pairs"])
DATA_MIX = dg.AssetKey(["marts", "data_mix"])
BATCHES = dg.AssetKey(["batched", "batches"])
PURITY = dg.AssetKey(["batched", "batch_purity"])
LEFT_OVER = dg.AssetKey(["batched", "left_over"])
MIX_CHECK = dg.AssetCheckKey(DATA_MIX, "every_weighted_source_sampled")


def build_data_mix(catalog: Catalog) -> tuple[dg.AssetsDefinition, dg.AssetChecksDefinition]:
    weights = {s.name: s.weight for s in catalog.sources if not s.held_out}
    weights_version = code_version((), (sorted(weights.items()),))  # a changed weight re-mixes

    @dg.asset(key=DATA_MIX, deps=[TRAINING_PAIRS], group_name="marts", kinds={"duckdb"},
              code_version=weights_version,
              description="How many pairs of each source one epoch trains on: its available pairs, catalogue "
                          "weight and the profile's mix temperature and total (kalm_core/mixing.py).")
    def data_mix(context: dg.AssetExecutionContext, warehouse: WarehouseResource,
                 settings: SettingsResource) -> dg.MaterializeResult:
        cfg = get_profile(settings.profile).mix
        with warehouse.connect() as con:
            mix = mixing.mix_table(con, table("marts", "training_pairs"), weights, cfg)
            rows = wh.write(con, "marts", "data_mix", mix)
            meta = table_metadata(con, "marts", "data_mix", rows=rows, temperature=cfg.temperature,
                                  total=int(mix["sampled"].sum()), available=int(mix["available"].sum()),
                                  upsampled_sources=int((mix["repeats"] > 1).sum()),
                                  mix=dg.MetadataValue.md(plots.data_mix(mix["source"].to_list(),
                                                                         mix["available"].to_list(),
                                                                         mix["sampled"].to_list())))
        context.log.info(f"data mix: {int(mix['sampled'].sum()):,} pairs per epoch from {rows} sources "
                         f"(temperature {cfg.temperature})")
        return dg.MaterializeResult(metadata=meta, **run_profile_versions(context, settings.profile, DATA_MIX,
                                                                          base=weights_version))

    @dg.asset_check(asset=DATA_MIX, name=MIX_CHECK.name, blocking=True,
                    description="every training source with a weight above 0 contributes pairs to the epoch")
    def every_weighted_source_sampled(warehouse: WarehouseResource) -> dg.AssetCheckResult:
        with warehouse.connect(read_only=True) as con:
            rows = con.execute(f"select source, available, sampled from {table('marts', 'data_mix')} "
                               "where weight > 0").fetchall()
        missing = [s for s, _, sampled in rows if sampled == 0]
        return dg.AssetCheckResult(
            passed=not missing, metadata={"sources": len(rows), "sources_without_pairs": ", ".join(missing) or "none"},
            description=(f"sources meant to be in the mix that contribute nothing (no kept pairs, or a total too "
                         f"small): {', '.join(missing)}") if missing else None)

    return data_mix, every_weighted_source_sampled


@dg.multi_asset(
    specs=[
        dg.AssetSpec(BATCHES, deps=[TRAINING_PAIRS, DATA_MIX], group_name="batched", kinds={"duckdb"},
                     description="One row per pair in a global batch (batch_id, position); an upsampled "
                                 "source's pairs once per copy."),
        dg.AssetSpec(PURITY, deps=[TRAINING_PAIRS, DATA_MIX], group_name="batched",
                     kinds={"duckdb"}, description="One row per batch: majority group and its share."),
        dg.AssetSpec(LEFT_OVER, deps=[TRAINING_PAIRS, DATA_MIX], group_name="batched", kinds={"duckdb"},
                     description="The epoch's pairs that are in no batch, each with the reason: with the batches, "
                                 "every sampled pair is accounted for."),
    ],
)
def batches(context: dg.AssetExecutionContext, warehouse: WarehouseResource, settings: SettingsResource):
    profile = get_profile(settings.profile)
    cfg = profile.batch
    epoch = mixing.epoch_sql(table("marts", "training_pairs"), table("marts", "data_mix"))
    params = {"seed": str(profile.mix.seed)}
    with warehouse.connect(read_only=True) as con:  # one epoch's pairs as the data mix samples them: their keys only
        placed, purity, stats = epoch_batches.place(con, epoch, params, cfg, world_size=profile.train.nproc)
    with warehouse.connect() as con, wh.wide_sort(con):
        with wh.transaction(con):  # the batches, their purity and what is left over change together
            epoch_batches.write(con, epoch, params, placed, stats, profile.global_batch)
            purity_rows = wh.write(con, "batched", "batch_purity", purity)
        rows, rest_rows = wh.count(con, "batched", "batches"), wh.count(con, "batched", "left_over")
        snapshot, digest = export_snapshot(con, data_dir() / "snapshots")
        yield dg.MaterializeResult(asset_key=BATCHES, metadata=table_metadata(
            con, "batched", "batches", rows=rows, batches=stats.batches, global_batch=profile.global_batch,
            per_device_batch=cfg.per_device_batch, world_size=profile.train.nproc, ratio=cfg.ratio,
            group_by=cfg.group_by, seed=cfg.seed, rows_in=stats.rows_in, rows_batched=stats.rows_batched,
            rows_left_over=stats.rows_left_over, pooled_batches=stats.pooled_batches,
            repeated_texts_masked_in_loss=epoch_batches.repeated_texts(con),
            snapshot_path=dg.MetadataValue.path(str(snapshot)), snapshot_sha256=digest), **run_profile_versions(context, settings.profile, BATCHES))
        yield dg.MaterializeResult(asset_key=PURITY, metadata=table_metadata(
            con, "batched", "batch_purity", rows=purity_rows, mean_purity=stats.mean_purity,
            expected_purity=stats.expected_purity, purity_sd=stats.purity_sd, mixed_per_batch=stats.mixed_per_batch),
            **run_profile_versions(context, settings.profile, PURITY))
        yield dg.MaterializeResult(asset_key=LEFT_OVER, metadata=table_metadata(
            con, "batched", "left_over", rows=rest_rows, rows_in=stats.rows_in, rows_batched=stats.rows_batched),
            **run_profile_versions(context, settings.profile, LEFT_OVER))
    context.log.info(f"{stats.batches} batches of {profile.global_batch} ({stats.pooled_batches} pooled from groups' "
                     f"remainders), purity {stats.mean_purity:.3f} (expected {stats.expected_purity:.3f}), "
                     f"{stats.rows_left_over} of {stats.rows_in} pairs left over, snapshot {snapshot}")


PURITY_CHECK = dg.AssetCheckKey(PURITY, "purity_matches_ratio")
SOURCES_CHECK = dg.AssetCheckKey(BATCHES, "every_source_batched")


@dg.multi_asset_check(specs=[
    dg.AssetCheckSpec(PURITY_CHECK.name, asset=PURITY, blocking=True,
                      description="the realised batch purity follows the semi-homogeneous ratio"),
    dg.AssetCheckSpec(SOURCES_CHECK.name, asset=BATCHES, blocking=True,
                      description="every source with kept training pairs has pairs in the batches: none vanishes "
                                  "at batching"),
], can_subset=True)
def batch_checks(context: dg.AssetCheckExecutionContext, warehouse: WarehouseResource, settings: SettingsResource):
    """Both checks of the batched layer in one step (a step costs ~0.1 s of Dagster's bookkeeping, more than
    either check); each runs only when selected."""
    wanted = context.selected_asset_check_keys
    with warehouse.connect(read_only=True) as con:
        if PURITY_CHECK in wanted:
            yield purity_matches_ratio(context, con, get_profile(settings.profile).batch.purity_tolerance)
        if SOURCES_CHECK in wanted:
            yield every_source_batched(con)


def every_source_batched(con) -> dg.AssetCheckResult:
    """Sources the mix samples (a weight of 0 leaves one out on purpose) each have pairs in the batches."""
    counts = con.execute(
        f"""select m.source, m.sampled as kept, count(b.pair_id) as batched
            from {table('marts', 'data_mix')} m
            left join {table('batched', 'batches')} b using (source)
            where m.sampled > 0
            group by m.source, m.sampled order by m.source""").fetchall()
    missing = [s for s, _, batched in counts if batched == 0]
    return dg.AssetCheckResult(
        asset_key=BATCHES, check_name=SOURCES_CHECK.name, passed=not missing,
        metadata={"sources": len(counts), "sources_without_batches": ", ".join(missing) or "none",
                  "batched_per_source": dg.MetadataValue.json({s: {"kept": k, "batched": b} for s, k, b in counts})},
        description=f"sources with kept pairs but none in the batches: {', '.join(missing)}" if missing else None)


def purity_matches_ratio(context: dg.AssetCheckExecutionContext, con, tol: float) -> dg.AssetCheckResult:
    meta = context.instance.get_latest_materialization_event(PURITY).asset_materialization.metadata
    realised, expected = con.execute(
        f"select avg(purity), avg(expected_purity) from {table('batched', 'batch_purity')}").fetchall()[0]
    sd = meta["purity_sd"].value
    return dg.AssetCheckResult(asset_key=PURITY, check_name=PURITY_CHECK.name,
                               passed=purity_ok(realised, expected, sd, tol),
                               metadata={"realised_purity": realised, "expected_purity": expected, "tolerance": tol,
                                         "sampling_sd": sd, "allowed_gap": allowed_purity_gap(expected, sd, tol)})


def build(catalog: Catalog) -> tuple[list, list]:
    data_mix, mix_check = build_data_mix(catalog)
    return [data_mix, batches], [mix_check, batch_checks]
