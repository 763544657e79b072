"""Shared data for the model benchmarks: real docstring pairs with a hard negative each, and their snapshot."""

from __future__ import annotations

from pathlib import Path

import polars as pl

from kalm_core.python_docs import harvest


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
