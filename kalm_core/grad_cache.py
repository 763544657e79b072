"""Embedding a batch without wasted padding, and GradCache (Gao et al. 2021, arXiv 2101.06983).

`prepare` sorts texts by length and pads each chunk only to its own longest text. `grad_cache_backward`
decouples the contrastive batch size from memory:
  1. a representation pass without gradients, chunk by chunk, keeping each chunk's RNG state;
  2. the loss on the cached representations, backpropagated into the representations only;
  3. a second pass per chunk with gradients, under the same RNG state, backpropagating the cached gradient.
The resulting parameter gradients equal the full-batch ones. Chunks whose activations fit in memory can keep their
graph from step 1 and skip step 3's forward (`keep_tokens`; `kalm_core/memory_budget.py` sizes it on a GPU).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable

import numpy as np
import torch


def pad(rows: list[list[int]], pad_id: int, left: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Token id lists -> input_ids (B, T), attention_mask (B, T), padded on the right (or the left). Through numpy:
    ~6x faster than the tokenizer's `pad`, which a GPU would otherwise wait for between batches."""
    width = max(len(r) for r in rows)
    if left:
        ids = [[pad_id] * (width - len(r)) + r for r in rows]
        mask = [[0] * (width - len(r)) + [1] * len(r) for r in rows]
    else:
        ids = [r + [pad_id] * (width - len(r)) for r in rows]
        mask = [[1] * len(r) + [0] * (width - len(r)) for r in rows]
    return torch.from_numpy(np.array(ids, dtype=np.int64)), torch.from_numpy(np.array(mask, dtype=np.int64))


def length_chunks(ids: list[list[int]], chunk: int, max_tokens: int | None = None) -> list[list[int]]:
    """Indices sorted by length, cut into chunks of at most `chunk` texts (similar lengths pad little) and, with
    `max_tokens`, at most that many padded tokens: short texts share one large chunk, long ones get small chunks, so
    every forward call is about the same size."""
    order = sorted(range(len(ids)), key=lambda i: len(ids[i]))
    if not max_tokens:
        return [order[s:s + chunk] for s in range(0, len(order), chunk)]
    out: list[list[int]] = [[]]
    for i in order:  # ascending lengths: the text being added is its chunk's longest
        if out[-1] and (len(out[-1]) >= chunk or (len(out[-1]) + 1) * len(ids[i]) > max_tokens):
            out.append([])
        out[-1].append(i)
    return out


class ChunkedEncoder(torch.nn.Module):
    """Runs the embedder over pre-padded chunks and puts rows back in input order: one module call per step,
    which is what DistributedDataParallel expects."""

    def __init__(self, embedder: torch.nn.Module):
        super().__init__()
        self.embedder = embedder

    def forward(self, chunks: list[tuple[torch.Tensor, torch.Tensor]], order: list[int]) -> torch.Tensor:
        reps = torch.cat([self.embedder(input_ids=i, attention_mask=m) for i, m in chunks])  # (N, D), sorted
        out = torch.empty_like(reps)
        out[torch.tensor(order, device=reps.device)] = reps
        return out


def prepare(ids: list[list[int]], pad_id: int, chunk: int, device, max_tokens: int | None = None
            ) -> tuple[list, list[int], int]:
    """(padded chunks, the sorted order, real tokens) for a list of token id lists."""
    groups = length_chunks(ids, chunk, max_tokens)
    chunks = [tuple(t.to(device) for t in pad([ids[i] for i in g], pad_id)) for g in groups]
    return chunks, [i for g in groups for i in g], sum(len(x) for x in ids)


class _RandContext:
    """Captures the RNG state at construction and replays it inside `with` (dropout masks repeat exactly)."""

    def __init__(self, device: torch.device):
        self.cpu = torch.get_rng_state()
        self.cuda = torch.cuda.get_rng_state(device) if device.type == "cuda" else None
        self.device = device

    def __enter__(self):
        self._fork = torch.random.fork_rng(devices=[self.device] if self.cuda is not None else [])
        self._fork.__enter__()
        torch.set_rng_state(self.cpu)
        if self.cuda is not None:
            torch.cuda.set_rng_state(self.cuda, self.device)

    def __exit__(self, *exc):
        self._fork.__exit__(*exc)


def kept_chunks(sizes: list[int], keep_tokens: int, distributed: bool = False) -> set[int]:
    """Which chunks (by padded size, in pass order) keep their graph from the representation pass: the first ones
    within `keep_tokens`. Under DDP the last chunk is always re-run, because its backward is the one that syncs."""
    kept, used = set(), 0
    for k, size in enumerate(sizes[:-1] if distributed else sizes):
        if used + size > keep_tokens:
            break
        kept.add(k)
        used += size
    return kept


def grad_cache_backward(encoder: torch.nn.Module, q_chunks: list, q_order: list[int], p_chunks: list,
                        p_order: list[int], loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
                        device: torch.device, no_sync: Callable[[], contextlib.AbstractContextManager] | None = None,
                        keep_tokens: int = 0) -> torch.Tensor:
    """GradCache over chunked queries and passages; gradients accumulate in the parameters. Returns the loss.

    The chunks within `keep_tokens` padded tokens run their representation pass with gradients and keep the graph,
    so their second forward is skipped: each kept token costs 6 N FLOPs instead of 8 N, for the memory of its
    activations. `keep_tokens=0` is plain GradCache; a budget over the whole batch is the plain full-batch backward.
    """
    inner = getattr(encoder, "module", encoder)
    jobs = [(ids, mask) for ids, mask in (*q_chunks, *p_chunks)]
    kept = kept_chunks([ids.numel() for ids, _ in jobs], keep_tokens, distributed=no_sync is not None)
    # 1. representation pass: kept chunks with their graph (DDP must not sync on them), the others without one,
    #    remembering each one's RNG state for the replay
    states, graphs, reps = {}, {}, []
    for k, (ids, mask) in enumerate(jobs):
        if k in kept:
            with no_sync() if no_sync is not None else contextlib.nullcontext():
                graphs[k] = encoder([(ids, mask)], list(range(ids.size(0))))
            reps.append(graphs[k].detach())
        else:
            states[k] = _RandContext(device)
            with torch.no_grad():
                reps.append(inner.embedder(input_ids=ids, attention_mask=mask))
    n_q = len(q_chunks)
    q_sorted, p_sorted = torch.cat(reps[:n_q]), torch.cat(reps[n_q:])
    q = torch.empty_like(q_sorted)
    q[torch.tensor(q_order, device=device)] = q_sorted
    p = torch.empty_like(p_sorted)
    p[torch.tensor(p_order, device=device)] = p_sorted
    # 2. loss on cached representations; gradients into the representations only
    q = q.detach().requires_grad_()
    p = p.detach().requires_grad_()
    loss = loss_fn(q, p)
    loss.backward()
    grads = torch.cat([q.grad[torch.tensor(q_order, device=device)],  # back to sorted order, chunk by chunk
                       p.grad[torch.tensor(p_order, device=device)]]).split([ids.size(0) for ids, _ in jobs])
    # 3. backward through the kept graphs first (that frees their memory), then a second pass with gradients for
    #    the rest; DDP syncs only on the last chunk, which is never kept under DDP
    for k in sorted(kept):
        graphs.pop(k).backward(gradient=grads[k])
    rerun = [k for k in range(len(jobs)) if k not in kept]
    for k in rerun:
        ids, mask = jobs[k]
        last = k == rerun[-1]
        ctx = no_sync() if (no_sync is not None and not last) else contextlib.nullcontext()
        with ctx, states[k]:
            rep = encoder([(ids, mask)], list(range(ids.size(0))))
            rep.backward(gradient=grads[k])
    return loss.detach()
