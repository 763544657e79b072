"""Embedding a batch without wasted padding, and GradCache (Gao et al. 2021, arXiv 2101.06983).

`embed_chunked` sorts texts by length and pads each chunk only to its own longest text. `grad_cache_backward`
decouples the contrastive batch size from memory:
  1. a representation pass without gradients, chunk by chunk, keeping each chunk's RNG state;
  2. the loss on the cached representations, backpropagated into the representations only;
  3. a second pass per chunk with gradients, under the same RNG state, backpropagating the cached gradient.
The resulting parameter gradients equal the full-batch ones.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable

import torch


def pad(ids: list[list[int]], pad_id: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-pad token id lists -> input_ids (B, T), attention_mask (B, T)."""
    width = max(len(x) for x in ids)
    input_ids = torch.full((len(ids), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(ids), width), dtype=torch.long)
    for i, x in enumerate(ids):
        input_ids[i, :len(x)] = torch.tensor(x, dtype=torch.long)
        mask[i, :len(x)] = 1
    return input_ids.to(device), mask.to(device)


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
    chunks = [pad([ids[i] for i in g], pad_id, device) for g in groups]
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


def grad_cache_backward(encoder: torch.nn.Module, q_chunks: list, q_order: list[int], p_chunks: list,
                        p_order: list[int], loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
                        device: torch.device, no_sync: Callable[[], contextlib.AbstractContextManager] | None = None
                        ) -> torch.Tensor:
    """GradCache over chunked queries and passages; gradients accumulate in the parameters. Returns the loss."""
    inner = getattr(encoder, "module", encoder)
    # 1. representation pass, no graph; remember each chunk's RNG state
    states, reps = [], []
    with torch.no_grad():
        for chunks in (q_chunks, p_chunks):
            part = []
            for ids, mask in chunks:
                states.append(_RandContext(device))
                part.append(inner.embedder(input_ids=ids, attention_mask=mask))
            reps.append(torch.cat(part))
    q_sorted, p_sorted = reps
    q = torch.empty_like(q_sorted)
    q[torch.tensor(q_order, device=device)] = q_sorted
    p = torch.empty_like(p_sorted)
    p[torch.tensor(p_order, device=device)] = p_sorted
    # 2. loss on cached representations; gradients into the representations only
    q = q.detach().requires_grad_()
    p = p.detach().requires_grad_()
    loss = loss_fn(q, p)
    loss.backward()
    q_grad = q.grad[torch.tensor(q_order, device=device)]  # back to sorted order, chunk by chunk
    p_grad = p.grad[torch.tensor(p_order, device=device)]
    # 3. second pass with gradients; DDP syncs only on the last chunk
    jobs = []
    for chunks, grad in ((q_chunks, q_grad), (p_chunks, p_grad)):
        offset = 0
        for ids, mask in chunks:
            jobs.append((ids, mask, grad[offset:offset + ids.size(0)]))
            offset += ids.size(0)
    for k, ((ids, mask, g), state) in enumerate(zip(jobs, states)):
        last = k == len(jobs) - 1
        ctx = no_sync() if (no_sync is not None and not last) else contextlib.nullcontext()
        with ctx, state:
            rep = encoder([(ids, mask)], list(range(ids.size(0))))
            rep.backward(gradient=g)
    return loss.detach()
