"""The data mix (#23 item 1): temperature sampling with weights, exact totals, deterministic samples, upsampled
copies in different batches."""

import duckdb
import polars as pl
import pytest

from kalm_core.batching import semi_homogeneous
from kalm_core.config import BatchConfig, MixConfig
from kalm_core.mixing import MixError, mix_table, plan, sample

SIZES = {"small": 100, "medium": 1_000, "large": 10_000}


def test_temperature_one_is_every_pair_once_and_large_temperature_is_uniform():
    assert plan(SIZES, {}, MixConfig()) == SIZES
    flat = plan(SIZES, {}, MixConfig(temperature=1000.0, total=3_000))
    assert sum(flat.values()) == 3_000 and all(abs(n - 1_000) <= 10 for n in flat.values())


def test_temperature_two_follows_the_square_root_and_weights_scale_a_source():
    got = plan(SIZES, {}, MixConfig(temperature=2.0, total=11_100))
    roots = {s: n ** 0.5 for s, n in SIZES.items()}
    assert sum(got.values()) == 11_100
    assert all(abs(got[s] - 11_100 * r / sum(roots.values())) <= 1 for s, r in roots.items())
    weighted = plan(SIZES, {"small": 10.0, "large": 0.0}, MixConfig(total=1_000))
    assert weighted == {"small": 500, "medium": 500, "large": 0}  # 10 x 100 = 1 x 1,000; weight 0 is out
    with pytest.raises(MixError, match="temperature"):
        plan(SIZES, {}, MixConfig(temperature=0))


def _pairs(con, sizes: dict[str, int]) -> None:
    rows = [{"pair_id": f"{s}-{i:05d}", "source": s, "task_type": "retrieval", "language": "en",
             "query": f"{s} query {i}", "positive": f"{s} passage {i}", "negatives": [f"{s} other {i}"]}
            for s, n in sizes.items() for i in range(n)]
    con.register("_pairs_frame", pl.DataFrame(rows).to_arrow())
    con.execute("create or replace table pairs as select * from _pairs_frame")


def _mix(con, weights: dict[str, float], cfg: MixConfig) -> pl.DataFrame:
    mix = mix_table(con, "pairs", weights, cfg)
    con.register("_mix_frame", mix.to_arrow())
    con.execute("create or replace table mix as select * from _mix_frame")
    return mix


def test_a_sample_is_deterministic_spread_and_upsampling_repeats_whole_passes():
    con = duckdb.connect()
    _pairs(con, {"small": 10, "large": 3_000})
    mix = _mix(con, {"small": 1.0, "large": 1.0, "absent": 1.0}, MixConfig(temperature=1e9, total=1_000))
    assert dict(zip(mix["source"], mix["sampled"])) == {"absent": 0, "large": 500, "small": 500}
    assert dict(zip(mix["source"], mix["repeats"])) == {"absent": 0, "large": 1, "small": 50}
    out = sample(con, "pairs", "mix", seed=0)
    assert out.height == 1_000 and out.group_by("source").len().sort("source")["len"].to_list() == [500, 500]
    small = out.filter(pl.col("source") == "small")
    assert small.group_by("pair_id").len()["len"].to_list() == [50] * 10  # every copy a whole pass
    large = out.filter(pl.col("source") == "large")
    thirds = large["pair_id"].str.slice(6).cast(pl.Int64) // 1_000  # three "shards" of 1,000 rows each
    assert all(130 <= n <= 200 for n in thirds.value_counts()["count"])  # a sample of all, not the first rows
    assert sample(con, "pairs", "mix", seed=0).equals(out)
    assert not sample(con, "pairs", "mix", seed=1)["pair_id"].equals(out["pair_id"])


def test_copies_of_a_pair_are_never_in_one_batch():
    con = duckdb.connect()
    _pairs(con, {"tiny": 40, "big": 400})
    _mix(con, {}, MixConfig(temperature=1e9, total=800))
    out, _, stats = semi_homogeneous(sample(con, "pairs", "mix"), BatchConfig(per_device_batch=32,
                                                                             group_by="source", ratio=1.0))
    tiny = out.filter(pl.col("source") == "tiny")
    assert tiny.height >= 300 and stats.rows_batched + stats.rows_left_over == 800
    assert tiny.group_by("batch_id", "pair_id").len()["len"].max() == 1
