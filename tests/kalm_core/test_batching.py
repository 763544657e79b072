"""Semi-homogeneous batches: purity follows the ratio, texts repeat in a batch only where the data forces it (and
the loss masks them), no source is left out for repeating texts, deterministic for a seed."""

import duckdb
import polars as pl
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kalm_core import epoch_batches
from kalm_core.batching import BatchingError, semi_homogeneous
from kalm_core.config import BatchConfig
from kalm_core.snapshot import SNAPSHOT_COLUMNS, export_snapshot


def pairs(sizes: dict[str, int], shared_negative: bool = False) -> pl.DataFrame:
    rows = []
    for task, n in sizes.items():
        for i in range(n):
            negs = ["a common negative"] if shared_negative else [f"{task} neg {i}"]
            rows.append({"pair_id": f"{task}-{i}", "query": f"{task} q {i}", "positive": f"{task} p {i}",
                         "negatives": negs, "task_type": task, "instruction": f"do {task}", "source": task})
    return pl.DataFrame(rows)


def repeated_texts(out: pl.DataFrame) -> int:
    """The batched asset's count (SQL) over a frame of batches."""
    con = duckdb.connect()
    con.register("batches", out.to_arrow())
    return epoch_batches.repeated_texts(con, "batches")


def in_duckdb(data: pl.DataFrame, cfg: BatchConfig) -> tuple[duckdb.DuckDBPyConnection, object]:
    """The batched asset's path: keys read from an epoch relation, batches and left-over rows written by DuckDB."""
    con = duckdb.connect()
    con.execute("create schema batched")
    con.register("epoch_frame", data.with_columns(copy=pl.lit(0, pl.Int64)).to_arrow())
    epoch = "select * from epoch_frame"
    placed, _, stats = epoch_batches.place(con, epoch, {}, cfg)
    epoch_batches.write(con, epoch, {}, placed, stats, cfg.per_device_batch)
    return con, stats


@settings(max_examples=60, deadline=None, derandomize=True)  # the same examples on every run
@given(ratio=st.sampled_from([0.0, 0.25, 0.5, 0.75, 1.0]), per_device=st.integers(4, 16),
       world=st.integers(1, 2), sizes=st.lists(st.integers(40, 200), min_size=2, max_size=4))
def test_realised_purity_follows_the_ratio(ratio, per_device, world, sizes):
    cfg = BatchConfig(per_device_batch=per_device, ratio=ratio, seed=3)
    data = pairs({f"t{i}": n for i, n in enumerate(sizes)})
    out, purity, stats = semi_homogeneous(data, cfg, world_size=world)
    g = per_device * world
    assert stats.mixed_per_batch == int(g * (1 - ratio))
    assert (purity["size"] == g).all() and out.height == stats.batches * g
    assert stats.rows_batched + stats.rows_left_over == data.height
    assert stats.rows_left_over < g and data.join(out, on="pair_id", how="anti").height == stats.rows_left_over
    assert (purity["kind"] == "pooled").sum() == stats.pooled_batches
    if ratio == 1.0:
        assert (purity.filter(pl.col("kind") == "in_group")["purity"] == 1.0).all()
    assert stats.purity_ok(0.25), stats  # within a quarter of the expected mixing plus 3 sampling SDs
    assert stats.purity_sd <= 0.1 and (stats.purity_sd == 0) == (stats.mixed_per_batch == 0)
    assert out.select("batch_id", "position").is_unique().all()
    assert repeated_texts(out) == 0  # every text of these sources is distinct


def test_deterministic_for_a_seed_and_different_across_seeds():
    data = pairs({"a": 100, "b": 100})
    one, _, _ = semi_homogeneous(data, BatchConfig(per_device_batch=8, ratio=0.5, seed=1))
    two, _, _ = semi_homogeneous(data, BatchConfig(per_device_batch=8, ratio=0.5, seed=1))
    three, _, _ = semi_homogeneous(data, BatchConfig(per_device_batch=8, ratio=0.5, seed=2))
    assert one.equals(two) and not one.equals(three)


def test_a_text_shared_by_many_rows_still_batches_with_its_repeats_left_to_the_loss():
    data = pairs({"a": 30}, shared_negative=True)  # every row carries the same negative
    out, _, stats = semi_homogeneous(data, BatchConfig(per_device_batch=2))
    assert stats.rows_batched == 30 and stats.rows_left_over == 0
    assert repeated_texts(out) == 15  # the shared negative, twice in each of the 15 batches: masked in the loss
    mixed = pl.concat([pairs({"a": 64}), pairs({"b": 64})])  # one clash, which the order of rows avoids
    out, _, _ = semi_homogeneous(mixed.with_columns(
        pl.when(pl.col("pair_id").str.ends_with("-0")).then(pl.lit(["b p 1"])).otherwise(pl.col("negatives"))
        .alias("negatives")), BatchConfig(per_device_batch=8, ratio=1.0, seed=0))
    assert repeated_texts(out) == 0 and out.height == 128


def test_a_label_source_beside_a_retrieval_source_reaches_the_batches_whole():
    """500 texts over 10 label names: before, at most 10 fitted a batch without repeating a positive, and the
    rest were left over without a word."""
    labels = pl.DataFrame([{"pair_id": f"c-{i}", "query": f"text {i}", "positive": f"label {i % 10}",
                            "negatives": [f"label {(i + 1) % 10}"], "task_type": "classification",
                            "instruction": "classify", "source": "cls"} for i in range(512)])
    data = pl.concat([labels, pairs({"retrieval": 256})])
    out, _, stats = semi_homogeneous(data, BatchConfig(per_device_batch=32, ratio=1.0))
    assert stats.rows_left_over == 0 and out.filter(pl.col("source") == "cls").height == 512
    assert repeated_texts(out) > 0  # label names repeat inside classification batches: the loss masks them


def test_a_source_smaller_than_a_batch_trains_in_pooled_batches_and_what_is_left_says_why():
    """Sources of 100, 1,000 and 10,000 pairs grouped by source: the 100-pair source's rows and the others' last
    rows fill mixed batches instead of vanishing; only what is short of one more batch is left over, with a reason."""
    data = pairs({"small": 100, "mid": 1000, "big": 10000})
    cfg = BatchConfig(per_device_batch=256, ratio=0.9, group_by="source", seed=0)
    out, purity, stats = semi_homogeneous(data, cfg)
    per_source = dict(out.group_by("source").len().iter_rows())
    assert per_source["small"] == 100 and stats.pooled_batches >= 1  # the smallest groups' rows pool first
    assert stats.rows_left_over < 256 and stats.rows_batched + stats.rows_left_over == data.height
    con, lake_stats = in_duckdb(data, cfg)  # the asset's path (rows in pair_id order) batches alike, says what is left
    same, _, same_stats = semi_homogeneous(data.sort("pair_id"), cfg)
    assert lake_stats == same_stats and con.sql("select * exclude (copy) from batched.batches").pl().equals(same)
    rest = con.sql("select * from batched.left_over").pl()
    assert rest.height == stats.rows_left_over and rest["reason"].str.contains("short of a global batch").all()
    assert pl.concat([same.select("pair_id"), rest.select("pair_id")]).sort("pair_id").equals(
        data.select("pair_id").sort("pair_id"))  # every pair is in a batch or in the left-over table
    assert stats.purity_ok(cfg.purity_tolerance)
    pooled = purity.filter(pl.col("kind") == "pooled")
    assert (pooled["purity"] == pooled["expected_purity"]).all() and (pooled["groups"] > 1).any()
    alone, _, s2 = semi_homogeneous(pairs({"tiny": 40, "other": 40}), BatchConfig(per_device_batch=64))
    assert alone.height == 64 and s2.pooled_batches == 1  # no group fills a batch alone: together they do


def test_bad_config_is_refused():
    with pytest.raises(BatchingError, match="ratio"):
        semi_homogeneous(pairs({"a": 10}), BatchConfig(ratio=1.5))
    with pytest.raises(BatchingError, match="group_by"):
        semi_homogeneous(pairs({"a": 10}), BatchConfig(group_by="nope"))


def test_snapshot_is_named_by_its_hash(tmp_path):
    out, _, _ = semi_homogeneous(pairs({"a": 40}), BatchConfig(per_device_batch=4))
    con = duckdb.connect()
    con.register("batches", out.to_arrow())
    path, digest = export_snapshot(con, tmp_path, "batches")
    again, digest2 = export_snapshot(con, tmp_path, "batches")
    assert path == again and digest == digest2 and path.name == f"batches-{digest[:16]}.parquet"
    back = pl.read_parquet(path)
    assert set(SNAPSHOT_COLUMNS) <= set(back.columns) and back.height == out.height


@pytest.mark.parametrize("name", ["demo", "kalm-mini"])
def test_the_purity_check_can_fail_in_every_shipped_profile(name):
    """Each shipped profile mixes some rows across groups, so its blocking purity check tests the batcher: purity
    stays 1.0 when the mixing step is skipped, and the check then fails."""
    from dataclasses import replace

    from kalm_core.batching import purity_ok
    from kalm_core.config import PROFILES

    profile = PROFILES[name]
    cfg = profile.batch
    groups = {"a": 30 * profile.global_batch, "b": 30 * profile.global_batch}
    data = pairs(groups).with_columns(pl.col("task_type").alias(cfg.group_by)) if cfg.group_by != "task_type" else \
        pairs(groups)
    _, _, stats = semi_homogeneous(data, cfg, world_size=profile.train.nproc)
    assert stats.mixed_per_batch > 0 and stats.expected_purity < 1.0
    assert stats.purity_ok(cfg.purity_tolerance)
    _, _, unmixed = semi_homogeneous(data, replace(cfg, ratio=1.0), world_size=profile.train.nproc)
    assert unmixed.mean_purity == 1.0
    assert not purity_ok(unmixed.mean_purity, stats.expected_purity, stats.purity_sd, cfg.purity_tolerance)
