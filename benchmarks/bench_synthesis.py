"""Benchmark: the synthesis client against the loopback chat-completions server with a fixed latency.

    .venv/bin/python benchmarks/bench_synthesis.py [--latency 0.2] [--requests 320]

Measures requests/s at concurrency 1 and 32 through run_stage (client, validation-free store commits included).
Ideal at concurrency 32 is 32 / latency. Last line: `RATIO synthesis concurrency-32/ideal = X.XX` (goal >= 0.8).
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import polars as pl  # noqa: E402

from kalm_core import warehouse  # noqa: E402
from kalm_core.synthesis.backends import BackendConfig, make_backend  # noqa: E402
from kalm_core.synthesis.generate import GENERATE, SynthesisConfig, generation_requests, run_stage  # noqa: E402
from kalm_core.synthesis.store import GenerationStore  # noqa: E402
from tests.llm_server import ScriptedLLM  # noqa: E402


def measure(url: str, concurrency: int, n: int, tmp: Path) -> float:
    instructions = pl.DataFrame({"instruction": [f"Retrieve item {i} for c{concurrency}." for i in range(n)],
                                 "task_type": ["short-long"] * n, "persona_id": ["p"] * n, "brainstorm_key": ["k"] * n})
    requests = generation_requests(instructions, SynthesisConfig(sts_examples=0, bitext_examples=0))
    backend = make_backend(BackendConfig(kind="openai", model="loopback", base_url=url, concurrency=concurrency))
    with warehouse.connect(tmp / f"lake{concurrency}") as con:
        stats = run_stage(backend, GenerationStore(con), GENERATE, requests)
    assert stats.ok == n, stats
    return stats.requests_per_s


def serve(latency: float, urls: mp.Queue, stop: mp.Event) -> None:
    """The server lives in its own process, as a real LLM server would: it must not share the client's GIL."""
    with ScriptedLLM(latency=latency) as server:
        urls.put(server.url)
        stop.wait()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--latency", type=float, default=0.2)
    ap.add_argument("--requests", type=int, default=320)
    args = ap.parse_args()
    urls, stop = mp.Queue(), mp.Event()
    proc = mp.Process(target=serve, args=(args.latency, urls, stop), daemon=True)
    proc.start()
    url = urls.get(timeout=30)
    try:
        with tempfile.TemporaryDirectory() as tmp:
            one = measure(url, 1, 10, Path(tmp))
            many = measure(url, 32, args.requests, Path(tmp))
    finally:
        stop.set()
        proc.join(timeout=10)
    ideal = 32 / args.latency
    print(f"latency {args.latency * 1000:.0f} ms: concurrency 1 {one:6.1f} req/s (ideal {1 / args.latency:.1f}), "
          f"concurrency 32 {many:6.1f} req/s (ideal {ideal:.1f})")
    print(f"RATIO synthesis concurrency-32/ideal = {many / ideal:.2f}")


if __name__ == "__main__":
    main()
