"""Benchmark the curation layer against its anchors, all measured in this run.

    .venv/bin/python benchmarks/bench_curation.py [--pairs 1500]
    python benchmarks/bench_curation.py --model kalm-mini --pairs 100000 --no-partial    # on a GPU machine

1. faiss exact search vs the torch matmul+topk fallback (random unit vectors, top-100; skipped without faiss).
2. Re-encoded texts after changing 1 of 5 sources vs a full run (goal ~0.2): the embedding cache at work.
3. The whole filter + mine pass vs a bare encode of the same texts (goal <= 1.15): search and sampling must be
   nearly free next to encoding. Printed last: `RATIO curation/encode = X.XX`.
The model is loaded as the filtered assets load it (`Embedder.for_inference`: the GPU in bf16 with token-budget
batches when there is one). `--model kalm-mini` is Qwen2-0.5B's shape with random weights and a byte-level
tokenizer (benchmarks/bench_gpu_train.py; `--tiny`: 2 small layers, for a CPU check). Pairs are docstring pairs
of the installed packages, repeated with a variant tag when `--pairs` asks for more than there are.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import polars as pl
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from kalm_core.config import PROFILES, FilterConfig, ModelConfig, resolve_model_path  # noqa: E402
from kalm_core.device import describe, token_budget  # noqa: E402
from kalm_core.embedding_cache import EmbeddingCache  # noqa: E402
from kalm_core.filtering import CachedEncoder, filter_source  # noqa: E402
from kalm_core.model import Embedder  # noqa: E402
from kalm_core.python_docs import harvest  # noqa: E402
from kalm_core.search import faiss_available, topk_faiss, topk_torch  # noqa: E402


def docstring_pairs(n: int) -> pl.DataFrame:
    h = harvest(["torch"])
    if h.height < n:
        h = harvest(["torch", "transformers", "numpy"])
    queries, positives = h["query"].to_list(), h["positives"].list.first().to_list()
    rows = [(queries[i % len(queries)], positives[i % len(queries)], i // len(queries)) for i in range(n)]
    tag = lambda text, v: text if v == 0 else f"{text} (variant {v})"  # noqa: E731  distinct texts, real lengths
    return pl.DataFrame({"pair_id": [f"p{i}" for i in range(n)], "query": [tag(q, v) for q, _, v in rows],
                         "positive": [tag(p, v) for _, p, v in rows], "negatives": [[] for _ in range(n)]},
                        schema_overrides={"negatives": pl.List(pl.Utf8)})


def bench_search() -> float | None:
    if not faiss_available():
        print("search: faiss is not installed, skipped (curation searches with torch)")
        return None
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
    budget = token_budget(embedder.device)  # the batches CachedEncoder uses
    embedder.encode(queries[:256], is_query=True, batch_size=cfg.batch_size, max_tokens=budget)  # warm-up
    _sync()
    t = time.perf_counter()
    embedder.encode(queries, is_query=True, batch_size=cfg.batch_size, max_tokens=budget)
    embedder.encode(corpus, batch_size=cfg.batch_size, max_tokens=budget)
    _sync()
    bare = time.perf_counter() - t
    with tempfile.TemporaryDirectory() as tmp:  # a cold cache: the pass encodes everything itself
        enc = CachedEncoder(embedder, EmbeddingCache(tmp, model), batch_size=cfg.batch_size)
        t = time.perf_counter()
        _, stats = filter_source(pairs, enc, cfg)
        _sync()
        full = time.perf_counter() - t
    print(f"{pairs.height} pairs, {len(queries) + len(corpus)} texts: bare encode {bare:.1f}s, "
          f"filter + mine {full:.1f}s (kept {stats.kept}, median rank {stats.median_pos_rank})")
    return full / bare


def _sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pairs", type=int, default=1500)
    ap.add_argument("--model", choices=["minilm", "kalm-mini"], default="minilm",
                    help="the demo's bundled MiniLM, or kalm-mini's Qwen2-0.5B shape (random weights)")
    ap.add_argument("--tiny", action="store_true", help="with --model kalm-mini: 2 small layers (a CPU check)")
    ap.add_argument("--no-partial", action="store_true", help="skip the partial re-encode measurement")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        if args.model == "kalm-mini":
            from benchmarks.bench_gpu_train import qwen2_05b

            model = str(qwen2_05b(Path(tmp) / "qwen2", tiny=args.tiny))
            mcfg, cfg = PROFILES["kalm-mini"].model, PROFILES["kalm-mini"].filter
        else:
            mcfg, cfg = ModelConfig(), FilterConfig(n_negatives=7)
            model = resolve_model_path(mcfg.base_model)
        embedder = Embedder.for_inference(mcfg, model)
        print(f"model {args.model} on {describe(embedder.device, next(embedder.model.parameters()).dtype)}")
        pairs = docstring_pairs(args.pairs)
        bench_search()
        if not args.no_partial:
            bench_partial(embedder, pairs, cfg, model)
        ratio = bench_filter(embedder, pairs, cfg, model)
    print(f"RATIO curation/encode = {ratio:.2f}")


if __name__ == "__main__":
    main()
