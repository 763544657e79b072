"""Benchmark the two shapes of a 70-source DAG (#23 item 5): three assets per source (today) against one asset per
layer partitioned by source (Dagster dynamic partitions), doing the same per-source work.

    .venv/bin/python benchmarks/bench_partitions.py [--sources 70] [--pairs 1500]

Each shape materialises raw -> staged -> filtered for `--sources` sources of `--pairs` rows, where every step of a
source is the same lake write kalm's steps end with (`warehouse.connect()` and one `create or replace table` from
the layer before), so what differs is only what Dagster does around it:
  assets      3 x N assets, one run (today's shape: `kalm run`);
  per-run     3 partitioned assets, one run per source (Dagster's default backfill of a dynamic partition set);
  single-run  3 partitioned assets with `BackfillPolicy.single_run()`: one run whose steps loop over the sources.
For each it prints the time to build the definitions and their asset graph, the full build, and one source rebuilt
(its three assets, or its partition), all in one process against a fresh instance and lake.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import dagster as dg  # noqa: E402
import polars as pl  # noqa: E402

from kalm_core import warehouse  # noqa: E402
from kalm_core.identifiers import table  # noqa: E402

LAYERS = ("raw", "staged", "filtered")


def copy(layer: str, sources: list[str]) -> None:
    """Sources' step: the layer's tables made from the layer before (raw from the seeded marts tables), through one
    writable connection, as a step that loops over its partitions would."""
    before = LAYERS[LAYERS.index(layer) - 1] if layer != "raw" else "marts"
    with warehouse.connect() as con:
        for source in sources:
            con.execute(f"create or replace table {table(layer, source)} as select * from {table(before, source)}")


def per_source_assets(sources: list[str]) -> list[dg.AssetsDefinition]:
    def build(layer: str, source: str) -> dg.AssetsDefinition:
        deps = [dg.AssetKey([LAYERS[LAYERS.index(layer) - 1], source])] if layer != "raw" else []

        @dg.asset(key=[layer, source], deps=deps, group_name=layer)
        def _step() -> None:
            copy(layer, [source])
        return _step

    return [build(layer, s) for s in sources for layer in LAYERS]


def partitioned_assets(single_run: bool) -> tuple[list[dg.AssetsDefinition], dg.DynamicPartitionsDefinition]:
    parts = dg.DynamicPartitionsDefinition(name="sources")
    policy = dg.BackfillPolicy.single_run() if single_run else None

    def build(layer: str) -> dg.AssetsDefinition:
        deps = [dg.AssetKey([LAYERS[LAYERS.index(layer) - 1]])] if layer != "raw" else []

        @dg.asset(key=[layer], deps=deps, partitions_def=parts, backfill_policy=policy, group_name=layer)
        def _step(context) -> None:
            copy(layer, context.partition_keys)
        return _step

    return [build(layer) for layer in LAYERS], parts


def timed(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def run_shape(shape: str, sources: list[str], root: Path) -> None:
    os.environ["KALM_LAKE"] = str(root / "lake")
    rows = int(os.environ["BENCH_PAIRS"])
    with warehouse.connect() as con:
        for s in sources:  # every source's input rows, as raw reads them
            warehouse.write(con, "marts", s, pl.DataFrame({"query": [f"{s} q{i}" for i in range(rows)],
                                                          "positive": [f"{s} p{i}" for i in range(rows)]}))
    instance = dg.DagsterInstance.ephemeral()
    t = time.perf_counter()
    if shape == "assets":
        assets = per_source_assets(sources)
    else:
        assets, parts = partitioned_assets(single_run=shape == "single-run")
        instance.add_dynamic_partitions(parts.name, sources)
    dg.Definitions(assets=assets).resolve_asset_graph()
    define_s = time.perf_counter() - t

    def full() -> None:
        if shape == "assets":
            assert dg.materialize(assets, instance=instance).success
        elif shape == "per-run":
            for s in sources:
                assert dg.materialize(assets, instance=instance, partition_key=s).success
        else:
            assert dg.materialize(assets, instance=instance, tags={
                "dagster/asset_partition_range_start": sources[0],
                "dagster/asset_partition_range_end": sources[-1]}).success

    def one() -> None:
        middle = sources[len(sources) // 2]
        if shape == "assets":
            assert dg.materialize([a for a in assets if a.key.path[-1] == middle], instance=instance).success
        else:
            assert dg.materialize(assets, instance=instance, partition_key=middle).success

    full_s, one_s = timed(full), timed(one)
    print(f"{shape:11s} definitions + graph {define_s:5.2f}s; full build {full_s:6.1f}s "
          f"({full_s / (3 * len(sources)):.2f}s per source-step); one source {one_s:5.1f}s")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sources", type=int, default=70)
    ap.add_argument("--pairs", type=int, default=1500)
    args = ap.parse_args()
    os.environ["BENCH_PAIRS"] = str(args.pairs)
    sources = [f"src{i:02d}" for i in range(args.sources)]
    warnings.simplefilter("ignore")  # BackfillPolicy and dynamic partitions warn as beta
    for shape in ("assets", "per-run", "single-run"):
        with tempfile.TemporaryDirectory() as tmp:
            run_shape(shape, sources, Path(tmp))


if __name__ == "__main__":
    main()
