"""Benchmark: our trainer vs sentence-transformers' trainer, same model, dims, batch, data and steps, same run.

    .venv/bin/python benchmarks/bench_train.py [--steps 8] [--batch 32] [--runs 3] [--warmup 2]

Both train MiniLM with InfoNCE/MNRL inside Matryoshka (384/256/128/64, weights 1/0.3/0.2/0.1) on real docstring
pairs with one hard negative each, at the same precision. Both sides are timed the same way (benchmarks/timing.py):
per-step end stamps, the steady state after `--warmup` steps, the median of `--runs` runs. Last line:
`RATIO train pairs/s ours/sentence-transformers = X.XX` (goal >= 1.5).
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402

from benchmarks.common import demo_profile, docstring_rows, training_args, write_snapshot  # noqa: E402
from benchmarks.timing import median_rate, steady_rate  # noqa: E402
from kalm_core.config import PROFILES, bf16_supported, resolve_model_path  # noqa: E402
from kalm_core.trainer import train  # noqa: E402

DIMS, WEIGHTS = (384, 256, 128, 64), (1.0, 0.3, 0.2, 0.1)


def ours(snapshot: Path, steps: int, bf16: bool, out: Path, warmup: int) -> float:
    records = []
    train(demo_profile(steps, bf16, dims=DIMS, dim_weights=WEIGHTS), snapshot, out, log=records.append)
    step_records = [r for r in records if r["event"] == "step"]
    return steady_rate([r["t"] for r in step_records], [r["pairs"] for r in step_records], warmup)


def sentence_transformers(rows, steps: int, batch: int, bf16: bool, out: Path, warmup: int) -> float:
    from datasets import Dataset
    from sentence_transformers import (SentenceTransformer, SentenceTransformerTrainer,
                                       SentenceTransformerTrainingArguments)
    from sentence_transformers.losses import MatryoshkaLoss, MultipleNegativesRankingLoss
    from transformers import TrainerCallback

    stamps: list[float] = []

    class StepStamps(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            stamps.append(time.perf_counter())

    model = SentenceTransformer(resolve_model_path(PROFILES["demo"].model.base_model), device="cpu")
    model.max_seq_length = PROFILES["demo"].model.passage_max_len
    data = Dataset.from_dict({"anchor": rows["query"].to_list(), "positive": rows["positive"].to_list(),
                              "negative": [n[0] for n in rows["negatives"].to_list()]})
    loss = MatryoshkaLoss(model, MultipleNegativesRankingLoss(model, scale=20.0), DIMS, list(WEIGHTS))
    args = SentenceTransformerTrainingArguments(
        output_dir=str(out), per_device_train_batch_size=batch, max_steps=steps, learning_rate=5e-5,
        warmup_steps=0, logging_steps=1000, save_strategy="no", report_to=[], bf16=bf16, use_cpu=True,
        dataloader_drop_last=True, seed=0)
    trainer = SentenceTransformerTrainer(model=model, args=args, train_dataset=data, loss=loss, callbacks=[StepStamps()])
    trainer.train()
    return steady_rate(stamps, [batch] * len(stamps), warmup)


def main() -> None:
    args = training_args(__doc__).parse_args()
    torch.set_num_threads(torch.get_num_threads())
    bf16 = bf16_supported()
    rows = docstring_rows(args.steps * args.batch, args.batch)
    ours_runs, st_runs = [], []
    with tempfile.TemporaryDirectory() as tmp:
        snap = write_snapshot(rows, Path(tmp) / "batches.parquet")
        for r in range(args.runs):  # interleaved, so a noisy minute hurts both sides alike
            ours_runs.append(ours(snap, args.steps, bf16, Path(tmp) / f"ours{r}", args.warmup))
            st_runs.append(sentence_transformers(rows, args.steps, args.batch, bf16, Path(tmp) / f"st{r}", args.warmup))
    ours_ps, st_ps = median_rate(ours_runs), median_rate(st_runs)
    print(json.dumps({"steps": args.steps, "warmup_steps": args.warmup, "runs": args.runs, "batch": args.batch,
                      "bf16": bf16, "group_size": 2}))
    print(f"ours                 : {ours_ps:6.2f} pairs/s (median; runs {', '.join(f'{x:.2f}' for x in ours_runs)})")
    print(f"sentence-transformers: {st_ps:6.2f} pairs/s (median; runs {', '.join(f'{x:.2f}' for x in st_runs)})")
    print(f"RATIO train pairs/s ours/sentence-transformers = {ours_ps / st_ps:.2f}")


if __name__ == "__main__":
    main()
