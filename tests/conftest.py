"""Shared fixtures: small hand-written sources, a catalogue over them and a lake in tmp_path."""

from __future__ import annotations

import json
import os
from pathlib import Path

import polars as pl
import pytest
import yaml

from kalm_core import warehouse
from kalm_core.config import PROFILES, BatchConfig, EvalConfig, FilterConfig, Profile, TrainConfig


def write_jsonl(path: Path, records: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path


PAIRS_A = [
    {"query": "how do I sort a list", "pos": ["use sorted() or list.sort()"], "neg": ["use reversed()"]},
    {"query": "open a file", "pos": ["call open(path) and read it"], "neg": []},
    {"query": "  open a file ", "pos": ["call open(path) and read it"]},  # duplicate after trimming
    {"query": "same", "pos": ["same"]},  # query equals positive
    {"query": "", "pos": ["empty query"]},
]
PAIRS_B = [
    {"question": "what is a tensor", "answer": "a multi-dimensional array", "hard": ["a scalar"]},
    {"question": "what is autograd", "answer": "automatic differentiation", "hard": ["a compiler"]},
]
PAIRS_EVAL = [
    {"query": "read a parquet file", "pos": ["read_parquet loads a parquet file"]},
    {"query": "write a csv file", "pos": ["write_csv writes the frame as csv"]},
]


@pytest.fixture
def small_catalog(tmp_path: Path) -> Path:
    """Three file sources (FlagEmbedding jsonl, a mapped parquet, a held-out jsonl) and their catalogue."""
    data = tmp_path / "sources"
    data.mkdir()
    write_jsonl(data / "a.jsonl", PAIRS_A)
    pl.DataFrame(PAIRS_B).write_parquet(data / "b.parquet")
    write_jsonl(data / "evalset.jsonl", PAIRS_EVAL)
    catalog = {
        "sources": [
            {"name": "alpha", "uri": "sources/a.jsonl"},
            {"name": "beta", "uri": "sources/b.parquet",
             "columns": {"query": "question", "positive": "answer", "negatives": "hard"}},
            {"name": "gamma", "uri": "sources/evalset.jsonl", "held_out": True},
        ]
    }
    path = tmp_path / "sources.yaml"
    path.write_text(yaml.safe_dump(catalog), encoding="utf-8")
    return path


TINY = Profile(
    name="tiny",
    filter=FilterConfig(batch_size=8),  # 1 negative mined: group_size 2
    batch=BatchConfig(per_device_batch=2, group_by="source"),
    train=TrainConfig(group_size=2, dims=(384, 64), dim_weights=(1.0, 0.3), max_steps=2, checkpoint_every=0,
                      lr=1e-5),
    # two held-out pairs score 1.0 for any model: promote without the gain the demo's gate asks for
    eval=EvalConfig(mteb_tasks=("SciFact",), promote_min_gain=-1.0),
)


@pytest.fixture(autouse=True, scope="session")
def _offline():
    """Tests never reach the Hugging Face hub: real MTEB tasks report themselves skipped."""
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["HF_DATASETS_OFFLINE"] = "1"


@pytest.fixture
def env(tmp_path: Path, small_catalog: Path, monkeypatch) -> dict:
    """Point kalm at the small catalogue, the tiny profile and a fresh lake + Dagster home in tmp_path."""
    lake = tmp_path / "data" / "lake"
    monkeypatch.setitem(PROFILES, "tiny", TINY)
    monkeypatch.setenv("KALM_PROFILE", "tiny")
    monkeypatch.setenv("KALM_CATALOG", str(small_catalog))
    monkeypatch.setenv("KALM_LAKE", str(lake))
    monkeypatch.delenv("KALM_LAKE_DATA", raising=False)
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "dagster_home"))
    return {"catalog": small_catalog, "lake": lake, "dir": tmp_path}


@pytest.fixture
def con(tmp_path: Path):
    with warehouse.connect(tmp_path / "unit_lake") as c:
        yield c


@pytest.fixture(scope="session")
def tiny_bert_dir(tmp_path_factory) -> Path:
    from tests.models import tiny_bert

    return tiny_bert(tmp_path_factory.mktemp("tiny_bert"))


@pytest.fixture(scope="session")
def tiny_qwen2_dir(tmp_path_factory) -> Path:
    from tests.models import tiny_qwen2

    return tiny_qwen2(tmp_path_factory.mktemp("tiny_qwen2"))


def batch_snapshot(path: Path, n_batches: int = 6, batch: int = 4, negatives: int = 3, seed: int = 0) -> Path:
    """A valid training snapshot of distinct docstring-like texts."""
    import random

    from tests.models import WORDS

    rng = random.Random(seed)
    rows = []
    for b in range(n_batches):
        for p in range(batch):
            k = b * batch + p
            words = lambda n: " ".join(rng.choice(WORDS) for _ in range(n))  # noqa: E731
            rows.append({"batch_id": b, "position": p, "query": f"q{k} {words(5)}", "instruction": "Find the docs",
                         "positive": f"p{k} {words(20)}", "negatives": [f"n{k}.{j} {words(15)}" for j in range(negatives)],
                         "task_type": "retrieval"})
    pl.DataFrame(rows).write_parquet(path)
    return path
