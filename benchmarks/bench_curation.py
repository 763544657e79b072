"""Benchmark the curation layer against its anchors, all measured in this run.

    .venv/bin/python benchmarks/bench_curation.py [--pairs 1500]

1. faiss exact search vs the torch matmul+topk fallback (random unit vectors, top-100).
2. Re-encoded texts after changing 1 of 5 sources vs a full run (goal ~0.2): the embedding cache at work.
3. The whole filter + mine pass vs a bare encode of the same texts (goal <= 1.15): search and sampling must be
   nearly free next to encoding. Printed last: `RATIO curation/encode = X.XX`.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import polars as pl

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from kalm_core.config import FilterConfig, ModelConfig, resolve_model_path  # noqa: E402
from kalm_core.embedding_cache import EmbeddingCache  # noqa: E402
from kalm_core.filtering import CachedEncoder, filter_source  # noqa: E402
from kalm_core.model import Embedder  # noqa: E402
from kalm_core.python_docs import harvest  # noqa: E402
from kalm_core.search import topk_faiss, topk_torch  # noqa: E402


def docstring_pairs(n: int) -> pl.DataFrame:
    h = harvest(["torch"]).head(n)
    return pl.DataFrame({"pair_id": [f"p{i}" for i in range(h.height)], "query": h["query"],
                         "positive": h["positives"].list.first(), "negatives": [[] for _ in range(h.height)]},
                        schema_overrides={"negatives": pl.List(pl.Utf8)})


def bench_search() -> float:
    rng = np.random.default_rng(0)
    corpus = rng.normal(size=(50_000, 384)).astype(np.float32)
    corpus /= np.linalg.norm(corpus, axis=1, keepdims=True)
    queries = corpus[rng.choice(len(corpus), 5_000)] + 0.1 * rng.normal(size=(5_000, 384)).astype(np.float32)
    t = time.perf_counter()
    topk_faiss(queries, corpus, 100)
    f = time.perf_counter() - t
    t = time.perf_counter()
    topk_torch(queries, corpus, 100)
    tt = time.perf_counter() - t
    print(f"search 5k x 50k x 384, top-100: faiss {f:.2f}s, torch {tt:.2f}s")
    print(f"RATIO search faiss/torch time = {f / tt:.2f}")
    return f / tt


def bench_partial(embedder: Embedder, pairs: pl.DataFrame, cfg: FilterConfig, model: str) -> float:
    sources = [pairs[i::5] for i in range(5)]
    with tempfile.TemporaryDirectory() as tmp:
        enc = CachedEncoder(embedder, EmbeddingCache(tmp, model), batch_size=cfg.batch_size)
        for s in sources:
            filter_source(s, enc, cfg)
        full = enc.encoded
        changed = sources[0].with_columns(pl.col("query") + " (revised)", pl.col("positive") + "\nRevised.")
        enc.encoded = 0
        for s in [changed, *sources[1:]]:
            filter_source(s, enc, cfg)
        again = enc.encoded
    print(f"partial rebuild, 1 of 5 sources changed: {again} of {full} texts re-encoded")
    print(f"RATIO partial re-encode/full = {again / full:.2f}")
    return again / full


def bench_filter(embedder: Embedder, pairs: pl.DataFrame, cfg: FilterConfig, model: str) -> float:
    queries = list(dict.fromkeys(pairs["query"].to_list()))
    corpus = list(dict.fromkeys(pairs["positive"].to_list()))
    t = time.perf_counter()
    embedder.encode(queries, is_query=True, batch_size=cfg.batch_size)
    embedder.encode(corpus, batch_size=cfg.batch_size)
    bare = time.perf_counter() - t
    with tempfile.TemporaryDirectory() as tmp:  # a cold cache: the pass encodes everything itself
        enc = CachedEncoder(embedder, EmbeddingCache(tmp, model), batch_size=cfg.batch_size)
        t = time.perf_counter()
        _, stats = filter_source(pairs, enc, cfg)
        full = time.perf_counter() - t
    print(f"{pairs.height} pairs, {len(queries) + len(corpus)} texts: bare encode {bare:.1f}s, "
          f"filter + mine {full:.1f}s (kept {stats.kept}, median rank {stats.median_pos_rank})")
    return full / bare


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pairs", type=int, default=1500)
    args = ap.parse_args()
    cfg = FilterConfig(n_negatives=7)
    model = resolve_model_path(ModelConfig().base_model)
    embedder = Embedder.from_pretrained(ModelConfig(), model)
    pairs = docstring_pairs(args.pairs)
    bench_search()
    bench_partial(embedder, pairs, cfg, model)
    ratio = bench_filter(embedder, pairs, cfg, model)
    print(f"RATIO curation/encode = {ratio:.2f}")


if __name__ == "__main__":
    main()
