"""Benchmark: Embedder.encode vs SentenceTransformer.encode on the same texts, same model and lengths, same run.

    .venv/bin/python benchmarks/bench_encode.py [--texts 2000]

Last line: `RATIO encode texts/s ours/sentence-transformers = X.XX` (goal >= 1.0).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402
from sentence_transformers import SentenceTransformer  # noqa: E402

from kalm_core.config import ModelConfig, resolve_model_path  # noqa: E402
from kalm_core.model import Embedder  # noqa: E402
from kalm_core.python_docs import harvest  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--texts", type=int, default=2000)
    ap.add_argument("--batch", type=int, default=64)
    args = ap.parse_args()
    h = harvest(["torch", "numpy"]).head(args.texts // 2)
    texts = h["query"].to_list() + h["positives"].list.first().to_list()
    cfg = ModelConfig()
    path = resolve_model_path(cfg.base_model)
    ours = Embedder.from_pretrained(cfg, path)
    st = SentenceTransformer(path, device="cpu")
    st.max_seq_length = cfg.passage_max_len
    ours.encode(texts[:64])
    st.encode(texts[:64])  # warm both up
    t = time.perf_counter()
    a = ours.encode(texts, batch_size=args.batch)
    ours_s = time.perf_counter() - t
    t = time.perf_counter()
    b = st.encode(texts, batch_size=args.batch)
    st_s = time.perf_counter() - t
    print(f"{len(texts)} texts, max {cfg.passage_max_len} tokens, batch {args.batch}; max |diff| "
          f"{np.abs(a - b).max():.2e}")
    print(f"ours                 : {len(texts) / ours_s:7.1f} texts/s")
    print(f"sentence-transformers: {len(texts) / st_s:7.1f} texts/s")
    print(f"RATIO encode texts/s ours/sentence-transformers = {st_s / ours_s:.2f}")


if __name__ == "__main__":
    main()
