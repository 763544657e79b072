"""Shared fixtures: small hand-written sources, a catalogue over them and a warehouse in tmp_path."""

from __future__ import annotations

import json
from pathlib import Path

import polars as pl
import pytest
import yaml

from kalm_core import warehouse
from kalm_core.config import PROFILES, BatchConfig, FilterConfig, Profile


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
    filter=FilterConfig(n_negatives=1, batch_size=8),
    batch=BatchConfig(per_device_batch=2, group_by="source"),
)


@pytest.fixture
def env(tmp_path: Path, small_catalog: Path, monkeypatch) -> dict:
    """Point kalm at the small catalogue, the tiny profile and a fresh warehouse + Dagster home in tmp_path."""
    wh = tmp_path / "data" / "warehouse.duckdb"
    monkeypatch.setitem(PROFILES, "tiny", TINY)
    monkeypatch.setenv("KALM_PROFILE", "tiny")
    monkeypatch.setenv("KALM_CATALOG", str(small_catalog))
    monkeypatch.setenv("KALM_WAREHOUSE", str(wh))
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "dagster_home"))
    return {"catalog": small_catalog, "warehouse": wh, "dir": tmp_path}


@pytest.fixture
def con(tmp_path: Path):
    c = warehouse.connect(tmp_path / "unit.duckdb")
    yield c
    c.close()
