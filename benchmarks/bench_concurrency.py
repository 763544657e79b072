"""Benchmark: readers while a run writes. A 1M-row source stages (raw -> staged) into the lake, first alone, then
while 8 `kalm sql` sessions (real processes: `kalm sql - --csv`, queries on stdin, the lake attached once per
session) run queries in a loop.

    .venv/bin/python benchmarks/bench_concurrency.py [--rows 1000000] [--readers 8] [--think 0.5]

Each reader waits `--think` seconds between queries, as a person or a dashboard would; on a 2-core machine
readers that never pause would take the writer's CPU, whatever the storage. Prints the readers' p50/p99 latency,
the failed reads (goal 0) and, last, `RATIO staging time with readers/alone = X` (goal <= 1.3).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_staging import generate  # noqa: E402

from kalm_core import warehouse  # noqa: E402
from kalm_core.catalog import Source  # noqa: E402
from kalm_core.extract import load_file_source  # noqa: E402
from kalm_core.staging import stage_source  # noqa: E402

QUERIES = ("select count(*) from raw.bench;", "select status, count(*) from staged.rejects group by all;",
           "select count(*) from lake.snapshots();")


def stage(lake: Path, data: Path) -> float:
    src = Source(name="bench", uri=str(data))
    t = time.perf_counter()
    with warehouse.connect(lake) as con:
        load_file_source(con, src, data.parent)
        stage_source(con, src)
    return time.perf_counter() - t


class Reader(threading.Thread):
    """One `kalm sql -` session: send a query, read its CSV up to the blank line that ends it, wait, repeat.
    A result without its header line is a failed read (the session printed the error to stderr)."""

    def __init__(self, lake: Path, think: float, stop: threading.Event, offset: int):
        super().__init__(daemon=True)
        env = {**os.environ, "KALM_LAKE": str(lake), "PYTHONPATH": str(ROOT)}
        self.proc = subprocess.Popen([sys.executable, "-m", "dagster_project.cli", "sql", "-", "--csv"], env=env,
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                                     text=True, bufsize=1)
        self.think, self.stop, self.i = think, stop, offset
        self.latencies: list[float] = []
        self.failed = 0

    def query(self, sql: str) -> bool:
        if self.proc.poll() is not None:
            raise RuntimeError(f"a kalm sql session exited with {self.proc.returncode}")
        self.proc.stdin.write(sql + "\n")
        self.proc.stdin.flush()
        lines = []
        while (line := self.proc.stdout.readline()) not in ("\n", ""):
            lines.append(line)
        return bool(lines)

    def run(self) -> None:
        self.query("select 1;")  # the session is up: imports done, lake attached
        self.ready = True
        while not self.stop.is_set():
            t = time.perf_counter()
            ok = self.query(QUERIES[self.i % len(QUERIES)])
            self.latencies.append(time.perf_counter() - t)
            self.failed += not ok
            self.i += 1
            time.sleep(self.think)
        self.proc.stdin.close()
        self.proc.wait(timeout=60)


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
        stop = threading.Event()
        readers = [Reader(lake, args.think, stop, i) for i in range(args.readers)]
        for r in readers:
            r.start()
        try:
            deadline = time.monotonic() + 120
            while not all(getattr(r, "ready", False) for r in readers):
                if time.monotonic() > deadline or any(not r.is_alive() for r in readers):
                    raise RuntimeError("the kalm sql sessions did not start")
                time.sleep(0.1)
            time.sleep(2)  # the readers are querying before the write starts
            with_readers = stage(lake, data)
        finally:
            stop.set()
        for r in readers:
            r.join(timeout=120)
    latencies = sorted(x for r in readers for x in r.latencies)
    failed = sum(r.failed for r in readers)
    p99 = latencies[min(len(latencies) - 1, int(0.99 * len(latencies)))]
    print(f"staging with {args.readers} readers: {with_readers:.2f}s")
    print(f"reads: {len(latencies)}, failed {failed}; latency p50 {statistics.median(latencies) * 1000:.0f} ms, "
          f"p99 {p99 * 1000:.0f} ms (think time {args.think}s)")
    print(f"failed reads = {failed}")
    print(f"RATIO staging time with readers/alone = {with_readers / alone:.2f}")


if __name__ == "__main__":
    main()
