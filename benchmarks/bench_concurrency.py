"""Benchmark: readers while a run writes. A 1M-row source stages (raw -> staged) into the lake, first alone, then
while 8 reader processes run `kalm sql` queries in a loop (through the CLI's own sandboxed path).

    .venv/bin/python benchmarks/bench_concurrency.py [--rows 1000000] [--readers 8] [--think 0.5]

Each reader waits `--think` seconds between queries, as a person or a dashboard would; on a 2-core machine
readers that never pause would take the writer's CPU, whatever the storage. Prints the readers' p50/p99 latency,
the failed reads (goal 0) and, last, `RATIO staging time with readers/alone = X` (goal <= 1.3).
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_staging import generate  # noqa: E402

from kalm_core import warehouse  # noqa: E402
from kalm_core.catalog import Source  # noqa: E402
from kalm_core.extract import load_file_source  # noqa: E402
from kalm_core.staging import stage_source  # noqa: E402

QUERIES = ("select count(*) from raw.bench", "select status, count(*) from staged.rejects group by all",
           "select count(*) from lake.snapshots()")


def stage(lake: Path, data: Path) -> float:
    src = Source(name="bench", uri=str(data))
    t = time.perf_counter()
    with warehouse.connect(lake) as con:
        load_file_source(con, src, data.parent)
        stage_source(con, src)
    return time.perf_counter() - t


def reader(lake: str, think: float, stop, out) -> None:
    import contextlib
    import io

    from dagster_project.cli import main

    os.environ["KALM_LAKE"] = lake
    latencies, failed, i = [], 0, 0
    while not stop.is_set():
        t = time.perf_counter()
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            code = main(["sql", QUERIES[i % len(QUERIES)], "--csv"])
        latencies.append(time.perf_counter() - t)
        failed += code != 0
        i += 1
        time.sleep(think)
    out.put((latencies, failed))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--readers", type=int, default=8)
    ap.add_argument("--think", type=float, default=0.5, help="seconds each reader waits between queries")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        data = tmp / "pairs.jsonl"
        generate(data, args.rows)
        small = tmp / "small.jsonl"
        generate(small, 1000)
        alone = stage(tmp / "lake_alone", data)
        print(f"staging {args.rows:,d} rows alone: {alone:.2f}s")

        lake = tmp / "lake"
        stage(lake, small)  # the readers' tables exist from the start
        ctx = mp.get_context("spawn")
        stop, out = ctx.Event(), ctx.Queue()
        procs = [ctx.Process(target=reader, args=(str(lake), args.think, stop, out)) for _ in range(args.readers)]
        for p in procs:
            p.start()
        try:
            time.sleep(5)  # the readers are importing and querying before the write starts
            with_readers = stage(lake, data)
        finally:
            stop.set()
        results = [out.get(timeout=120) for _ in procs]
        for p in procs:
            p.join()
    latencies = sorted(x for lat, _ in results for x in lat)
    failed = sum(f for _, f in results)
    p99 = latencies[min(len(latencies) - 1, int(0.99 * len(latencies)))]
    print(f"staging with {args.readers} readers: {with_readers:.2f}s")
    print(f"reads: {len(latencies)}, failed {failed}; latency p50 {statistics.median(latencies) * 1000:.0f} ms, "
          f"p99 {p99 * 1000:.0f} ms (think time {args.think}s)")
    print(f"failed reads = {failed}")
    print(f"RATIO staging time with readers/alone = {with_readers / alone:.2f}")


if __name__ == "__main__":
    main()
