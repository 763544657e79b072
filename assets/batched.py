"""Layer batched: semi-homogeneous global batches, their purity, and the parquet snapshot training reads."""

import dagster as dg

from assets.common import table_metadata
from assets.resources import SettingsResource, WarehouseResource
from assets.versions import run_profile_versions
from kalm_core import warehouse as wh
from kalm_core.batching import allowed_purity_gap, purity_ok, repeated_texts, semi_homogeneous
from kalm_core.config import data_dir, get_profile
from kalm_core.identifiers import table
from kalm_core.snapshot import write_snapshot

BATCHES = dg.AssetKey(["batched", "batches"])
PURITY = dg.AssetKey(["batched", "batch_purity"])


@dg.multi_asset(
    specs=[
        dg.AssetSpec(BATCHES, deps=[dg.AssetKey(["marts", "training_pairs"])], group_name="batched",
                     kinds={"duckdb"}, description="One row per pair in a global batch (batch_id, position)."),
        dg.AssetSpec(PURITY, deps=[dg.AssetKey(["marts", "training_pairs"])], group_name="batched",
                     kinds={"duckdb"}, description="One row per batch: majority group and its share."),
    ],
)
def batches(context: dg.AssetExecutionContext, warehouse: WarehouseResource, settings: SettingsResource):
    profile = get_profile(settings.profile)
    cfg = profile.batch
    with warehouse.connect(read_only=True) as con:
        pairs = con.sql(f"select * from {table('marts', 'training_pairs')} order by pair_id").pl()
    out, purity, stats = semi_homogeneous(pairs, cfg, world_size=profile.train.nproc)
    snapshot, digest = write_snapshot(out, data_dir() / "snapshots")
    with warehouse.connect() as con:
        with wh.transaction(con):  # the batches and their purity change together
            rows = wh.write(con, "batched", "batches", out)
            purity_rows = wh.write(con, "batched", "batch_purity", purity)
        yield dg.MaterializeResult(asset_key=BATCHES, metadata=table_metadata(
            con, "batched", "batches", rows=rows, batches=stats.batches, global_batch=profile.global_batch,
            per_device_batch=cfg.per_device_batch, world_size=profile.train.nproc, ratio=cfg.ratio,
            group_by=cfg.group_by, seed=cfg.seed, rows_in=stats.rows_in, rows_batched=stats.rows_batched,
            rows_left_over=stats.rows_left_over, repeated_texts_masked_in_loss=repeated_texts(out), snapshot_path=dg.MetadataValue.path(str(snapshot)),
            snapshot_sha256=digest), **run_profile_versions(context, settings.profile, BATCHES))
        yield dg.MaterializeResult(asset_key=PURITY, metadata=table_metadata(
            con, "batched", "batch_purity", rows=purity_rows, mean_purity=stats.mean_purity,
            expected_purity=stats.expected_purity, purity_sd=stats.purity_sd, mixed_per_batch=stats.mixed_per_batch),
            **run_profile_versions(context, settings.profile, PURITY))
    context.log.info(f"{stats.batches} batches of {profile.global_batch}, purity {stats.mean_purity:.3f} "
                     f"(expected {stats.expected_purity:.3f}), snapshot {snapshot}")


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
    counts = con.execute(
        f"""select t.source, count(*) as kept, count(b.pair_id) as batched
            from {table('marts', 'training_pairs')} t
            left join {table('batched', 'batches')} b using (pair_id)
            group by t.source order by t.source""").fetchall()
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


def build() -> tuple[list, list]:
    return [batches], [batch_checks]
