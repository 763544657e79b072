"""Benchmark the curation layer against its anchors, all measured in this run.

    .venv/bin/python benchmarks/bench_curation.py [--pairs 1500]
    python benchmarks/bench_curation.py --model kalm-mini --pairs 100000 --no-partial    # on a GPU machine

1. faiss exact search vs the torch matmul+topk fallback (random unit vectors, top-100; skipped without faiss).
2. Re-encoded texts after changing 1 of 5 sources vs a full run (goal ~0.2): the embedding cache at work.
3. The whole filter + mine pass vs a bare encode of the same texts (goal <= 1.15): search and sampling must be
   nearly free next to encoding. Printed last: `RATIO curation/encode = X.XX`.
4. Quality (`--quality`, skips 1-3), on a planted corpus whose truth is known:
   - false negatives: each of the first third of the queries gets three unlabelled passages that also answer it
     (its positive in lower case with its whitespace collapsed, the positive's first half, its second half), added
     to the corpus as a candidate pool; the share of mined negatives that are these, without the positive-aware
     margin and with the profile's (goal: the margin cuts it by >= 3x), mined from the top ranks where they sit;
   - the filter's precision / recall at k = 50 on the same pairs with 20 % label noise (a query given another
     pair's positive, its own still in the corpus), ranking bare queries and instructed ones.
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
from dataclasses import replace
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


NEGATIVES = PROFILES["kalm-mini"].n_negatives  # the paper's group of 8: 7 mined per pair


def bench_partial(embedder: Embedder, pairs: pl.DataFrame, cfg: FilterConfig, model: str) -> float:
    sources = [pairs[i::5] for i in range(5)]
    with tempfile.TemporaryDirectory() as tmp:
        enc = CachedEncoder(embedder, EmbeddingCache(tmp, model), batch_size=cfg.batch_size)
        for s in sources:
            filter_source(s, enc, cfg, n_negatives=NEGATIVES)
        full = enc.encoded
        changed = sources[0].with_columns(pl.col("query") + " (revised)", pl.col("positive") + "\nRevised.")
        enc.encoded = 0
        for s in [changed, *sources[1:]]:
            filter_source(s, enc, cfg, n_negatives=NEGATIVES)
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
        _, stats = filter_source(pairs, enc, cfg, n_negatives=NEGATIVES)
        _sync()
        full = time.perf_counter() - t
    print(f"{pairs.height} pairs, {len(queries) + len(corpus)} texts: bare encode {bare:.1f}s, "
          f"filter + mine {full:.1f}s (kept {stats.kept}, median rank {stats.median_pos_rank})")
    return full / bare


RETRIEVAL = "Given a summary of a Python function or class, retrieve its documentation"


def planted_false_negatives(pairs: pl.DataFrame, share: float = 1 / 3) -> dict[str, set[str]]:
    """query -> passages that answer it but are no row's positive: the known false negatives."""
    planted = {}
    for q, p in zip(pairs["query"].to_list()[:int(pairs.height * share)], pairs["positive"].to_list()):
        half = len(p) // 2
        variants = {" ".join(p.lower().split()), p[:half].strip(), p[half:].strip()}
        planted[q] = {v for v in variants if v and v != p}
    return planted


def false_negative_share(out: pl.DataFrame, planted: dict[str, set[str]]) -> tuple[float, int]:
    """Share of the planted queries' negatives that are planted false negatives, and how many negatives there were."""
    rows = out.filter(pl.col("query").is_in(list(planted)))
    negatives = [(q, n) for q, ns in zip(rows["query"].to_list(), rows["negatives"].to_list()) for n in ns]
    return sum(n in planted[q] for q, n in negatives) / max(1, len(negatives)), len(negatives)


def with_label_noise(pairs: pl.DataFrame, share: float = 0.2, seed: int = 0) -> tuple[pl.DataFrame, np.ndarray]:
    """Give `share` of the queries another pair's positive (a derangement among them); returns the pairs and a mask of
    the rows that are still right. The swapped-out positives stay in the corpus through the candidate pool."""
    rng = np.random.default_rng(seed)
    noisy = np.sort(rng.choice(pairs.height, int(pairs.height * share), replace=False))
    positives = pairs["positive"].to_list()
    for i, j in zip(noisy, np.roll(noisy, 1)):
        positives[i] = pairs["positive"][int(j)]
    good = np.ones(pairs.height, dtype=bool)
    good[noisy] = False
    return pairs.with_columns(pl.Series("positive", positives)), good


def bench_quality(enc: CachedEncoder, pairs: pl.DataFrame, cfg: FilterConfig, mcfg: ModelConfig) -> None:
    pairs = pairs.with_columns(task_type=pl.lit("retrieval"), instruction=pl.lit(RETRIEVAL))
    planted = planted_false_negatives(pairs)
    pool = sorted({t for ts in planted.values() for t in ts})
    # false negatives sit near the top of a query's ranking: mine from there, as NV-Retriever's top-k mining does
    top = replace(cfg, window=(0, 30), top_k=50)
    shares = {}
    for margin in (None, cfg.margin or 0.95):
        out, _ = filter_source(pairs, enc, replace(top, margin=margin), pool, mcfg.query_template,
                               n_negatives=NEGATIVES)
        shares[margin], n = false_negative_share(out, planted)
        print(f"false negatives among {n} mined negatives of {len(planted)} planted queries, margin {margin}: "
              f"{shares[margin]:.1%}")
    lo, hi = shares[cfg.margin or 0.95], shares[None]
    print(f"RATIO false negatives without/with margin = {hi / lo:.1f}" if lo else
          f"RATIO false negatives without/with margin = inf ({hi:.1%} -> 0)")

    noisy, good = with_label_noise(pairs)
    clean_pool = sorted(set(pairs["positive"].to_list()) - set(noisy["positive"].to_list()))
    for instructed in (False, True):
        out, _ = filter_source(noisy, enc, replace(cfg, top_k=50), clean_pool, mcfg.query_template, instructed,
                               n_negatives=NEGATIVES)
        kept = out["kept"].to_numpy()
        precision = (kept & good).sum() / max(1, kept.sum())
        recall = (kept & good).sum() / good.sum()
        print(f"filter at k=50, {'instructed' if instructed else 'bare'} queries: kept {kept.sum()} of "
              f"{len(kept)} ({(~good).sum()} noisy), precision {precision:.3f}, recall {recall:.3f}")


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
    ap.add_argument("--quality", action="store_true", help="only the quality side on a planted corpus (item 4)")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        if args.model == "kalm-mini":
            from benchmarks.bench_gpu_train import qwen2_05b

            model = str(qwen2_05b(Path(tmp) / "qwen2", tiny=args.tiny))
            mcfg, cfg = PROFILES["kalm-mini"].model, PROFILES["kalm-mini"].filter
        else:
            mcfg, cfg = ModelConfig(), FilterConfig()
            model = resolve_model_path(mcfg.base_model)
        embedder = Embedder.for_inference(mcfg, model)
        print(f"model {args.model} on {describe(embedder.device, next(embedder.model.parameters()).dtype)}")
        pairs = docstring_pairs(args.pairs)
        if args.quality:
            enc = CachedEncoder(embedder, EmbeddingCache(Path(tmp) / "cache", model), batch_size=cfg.batch_size,
                                show_progress=True)
            bench_quality(enc, pairs, cfg, mcfg)
            return
        bench_search()
        if not args.no_partial:
            bench_partial(embedder, pairs, cfg, model)
        ratio = bench_filter(embedder, pairs, cfg, model)
    print(f"RATIO curation/encode = {ratio:.2f}")


if __name__ == "__main__":
    main()
