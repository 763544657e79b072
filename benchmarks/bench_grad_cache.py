"""Benchmark: what GradCache's second forward costs, and what kept graphs give back, in our trainer on this machine.

    .venv/bin/python benchmarks/bench_grad_cache.py [--steps 8] [--batch 32] [--runs 3] [--warmup 2]

The demo profile's model (MiniLM) on real docstring pairs with one hard negative, three ways, interleaved:
- plain backward (one forward per chunk, 6 N FLOPs per token): the anchor;
- GradCache over chunks of 8 texts (`grad_cache_chunk`): a second forward per chunk, 8 N;
- the same GradCache with every chunk keeping its graph (`keep_graph_tokens` over the whole batch): back to 6 N.
Timed as every training benchmark is (benchmarks/timing.py). The GPU numbers of the lever come from
bench_gpu_train.py; this one shows the mechanism where it can run. Last line:
`RATIO train pairs/s GradCache kept graphs/GradCache = X.XX` (the FLOP count predicts about 8/6 = 1.33).
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.common import demo_profile, docstring_rows, training_args, write_snapshot  # noqa: E402
from benchmarks.timing import median_rate, steady_rate  # noqa: E402
from kalm_core.config import bf16_supported  # noqa: E402
from kalm_core.trainer import train  # noqa: E402

WAYS = {
    "plain backward": dict(grad_cache_chunk=None),
    "GradCache": dict(grad_cache_chunk=8, keep_graph_tokens=0),
    "GradCache, kept graphs": dict(grad_cache_chunk=8, keep_graph_tokens=10**9),
}


def run(way: dict, snapshot: Path, steps: int, bf16: bool, out: Path, warmup: int) -> tuple[float, float]:
    records: list[dict] = []
    train(demo_profile(steps, bf16, **way), snapshot, out, log=records.append, save=False)
    steps_ = [r for r in records if r["event"] == "step"]
    return steady_rate([r["t"] for r in steps_], [r["pairs"] for r in steps_], warmup), steps_[0]["loss"]


def main() -> None:
    args = training_args(__doc__).parse_args()
    bf16 = bf16_supported()
    rates: dict[str, list[float]] = {name: [] for name in WAYS}
    first_loss: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as tmp:
        snap = write_snapshot(docstring_rows(args.steps * args.batch, args.batch), Path(tmp) / "batches.parquet")
        for r in range(args.runs):  # interleaved, so a noisy minute hurts every way alike
            for name, way in WAYS.items():
                rate, first_loss[name] = run(way, snap, args.steps, bf16, Path(tmp) / f"{r}-{len(rates[name])}",
                                             args.warmup)
                rates[name].append(rate)
    print(json.dumps({"steps": args.steps, "warmup_steps": args.warmup, "runs": args.runs, "batch": args.batch,
                      "bf16": bf16, "group_size": 2}))
    median = {name: median_rate(r) for name, r in rates.items()}
    for name, r in rates.items():  # the same chunks and seed: step 1's loss agrees across the ways
        print(f"{name:24s}: {median[name]:6.2f} pairs/s (median; runs {', '.join(f'{x:.2f}' for x in r)}), "
              f"step-1 loss {first_loss[name]:.5f}")
    print(f"RATIO train pairs/s GradCache/plain = {median['GradCache'] / median['plain backward']:.2f}")
    print(f"RATIO train pairs/s GradCache kept graphs/GradCache = "
          f"{median['GradCache, kept graphs'] / median['GradCache']:.2f}")


if __name__ == "__main__":
    main()
