"""Shared pieces of the model benchmarks: real docstring pairs with a hard negative each, their snapshot, the demo
profile set up for a timed run, and the command-line options every training benchmark takes."""

from __future__ import annotations

import argparse
from dataclasses import replace
from pathlib import Path

import polars as pl

from kalm_core.config import PROFILES, Profile, resolve_model_path
from kalm_core.python_docs import harvest


def training_args(doc: str) -> argparse.ArgumentParser:
    """--steps, --batch, --runs (the median of at least 3), --warmup (steps left out of the steady state)."""
    ap = argparse.ArgumentParser(description=doc.splitlines()[0])
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--warmup", type=int, default=2)
    return ap


def demo_profile(steps: int, bf16: bool, **train) -> Profile:
    """The demo profile on the bundled MiniLM, one hard negative, `steps` steps at a flat learning rate, no
    checkpoints; `train` overrides more training settings."""
    demo = PROFILES["demo"]
    return replace(demo, model=replace(demo.model, base_model=resolve_model_path(demo.model.base_model)),
                   train=replace(demo.train, group_size=2, max_steps=steps, bf16=bf16, checkpoint_every=0,
                                 warmup_ratio=0.0, **train))


def docstring_rows(n: int, batch: int) -> pl.DataFrame:
    """n docstring pairs (torch's); each row's negative is a positive from half the data away (never in its batch)."""
    h = harvest(["torch", "numpy"]).head(n)
    positives = h["positives"].list.first().to_list()
    half = len(positives) // 2
    return pl.DataFrame({
        "batch_id": [i // batch for i in range(len(positives))],
        "position": [i % batch for i in range(len(positives))],
        "query": h["query"].to_list(),
        "instruction": ["Given a summary of a Python function or class, retrieve its documentation"] * len(positives),
        "positive": positives,
        "negatives": [[positives[(i + half) % len(positives)]] for i in range(len(positives))],
        "task_type": ["retrieval"] * len(positives),
    })


def write_snapshot(rows: pl.DataFrame, path: Path) -> Path:
    full = rows.group_by("batch_id").len().filter(pl.col("len") == rows["position"].max() + 1)["batch_id"]
    rows.filter(pl.col("batch_id").is_in(full.implode())).write_parquet(path)
    return path
