"""Exact inner-product top-k search: faiss (a GPU index when faiss-gpu and a GPU are present), chunked so
memory stays bounded, and a torch matmul+topk reference with the same contract."""

from __future__ import annotations

import importlib.util

import numpy as np
import torch


def faiss_gpu_available() -> bool:
    try:
        import faiss
    except ImportError:
        return False
    return hasattr(faiss, "StandardGpuResources") and faiss.get_num_gpus() > 0


def topk_faiss(queries: np.ndarray, corpus: np.ndarray, k: int, chunk: int = 4096,
               use_gpu: bool | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(Q, D), (C, D) -> scores (Q, k) descending, ids (Q, k); exact (IndexFlatIP)."""
    import faiss

    k = min(k, corpus.shape[0])
    index = faiss.IndexFlatIP(corpus.shape[1])
    if use_gpu if use_gpu is not None else faiss_gpu_available():
        index = faiss.index_cpu_to_gpu(faiss.StandardGpuResources(), 0, index)
    index.add(np.ascontiguousarray(corpus, dtype=np.float32))
    scores = np.empty((queries.shape[0], k), dtype=np.float32)
    ids = np.empty((queries.shape[0], k), dtype=np.int64)
    for s in range(0, queries.shape[0], chunk):
        scores[s:s + chunk], ids[s:s + chunk] = index.search(np.ascontiguousarray(queries[s:s + chunk],
                                                                                  dtype=np.float32), k)
    return scores, ids


def _device() -> torch.device:
    return torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")


SCORES_PER_BLOCK = 2**24  # a (queries x corpus) score block holds at most this many floats (64 MB)


def _rows(chunk: int, corpus_size: int) -> int:
    """Queries scored at once: `chunk`, fewer for a corpus so large that the block would pass SCORES_PER_BLOCK, so
    the memory of a search does not grow with the corpus."""
    return max(1, min(chunk, SCORES_PER_BLOCK // max(corpus_size, 1)))


def topk_torch(queries: np.ndarray, corpus: np.ndarray, k: int, chunk: int = 4096) -> tuple[np.ndarray, np.ndarray]:
    """The reference and fallback (no faiss installed): chunked matmul + topk on the GPU when there is one, same
    contract as topk_faiss."""
    k = min(k, corpus.shape[0])
    dev = _device()
    c = torch.from_numpy(np.ascontiguousarray(corpus, dtype=np.float32)).to(dev)
    chunk = _rows(chunk, c.shape[0])
    scores, ids = [], []
    for s in range(0, queries.shape[0], chunk):
        q = torch.from_numpy(np.ascontiguousarray(queries[s:s + chunk], dtype=np.float32)).to(dev)
        top = (q @ c.T).topk(k, dim=1)  # (q, C) -> (q, k)
        scores.append(top.values.cpu().numpy())
        ids.append(top.indices.cpu().numpy())
    return np.concatenate(scores), np.concatenate(ids).astype(np.int64)


def faiss_available() -> bool:
    return importlib.util.find_spec("faiss") is not None


def topk(queries: np.ndarray, corpus: np.ndarray, k: int, chunk: int = 4096) -> tuple[np.ndarray, np.ndarray]:
    """faiss when installed (the `cpu` or `gpu` extra), torch otherwise."""
    return topk_faiss(queries, corpus, k, chunk) if faiss_available() else topk_torch(queries, corpus, k, chunk)


def count_above(queries: np.ndarray, corpus: np.ndarray, thresholds: np.ndarray, chunk: int = 4096,
                eps: float = 1e-5) -> np.ndarray:
    """For each query, how many corpus items score above its threshold by more than eps (an exact rank; eps keeps
    an item from outranking itself through float rounding between two kernels)."""
    dev = _device()
    c = torch.from_numpy(np.ascontiguousarray(corpus, dtype=np.float32)).to(dev)
    exact = torch.float32 if c.shape[0] < 2**24 else torch.float64  # counts a float sum holds exactly
    chunk = _rows(chunk, c.shape[0])
    out = []
    for s in range(0, queries.shape[0], chunk):
        sim = torch.from_numpy(np.ascontiguousarray(queries[s:s + chunk], dtype=np.float32)).to(dev) @ c.T  # (q, C)
        limit = torch.from_numpy(thresholds[s:s + chunk] + eps).to(dev).unsqueeze(1)
        # 1.0/0.0 in place, then a float sum: on the CPU, summing a boolean tensor is ~6x slower
        out.append(sim.gt_(limit).sum(1, dtype=exact).round().cpu().numpy().astype(np.int64))
    return np.concatenate(out) if out else np.zeros(0, dtype=np.int64)
