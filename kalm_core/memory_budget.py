"""How a GradCache step fits the card: how many of its tokens keep their graph, and how big its chunks are.

GradCache (kalm_core/grad_cache.py) spends 8 N FLOPs per token where a plain backward spends 6 N: its second pass
repeats every forward. On a card with memory to spare, the chunks whose activations fit keep their graph from the
first pass (`keep_tokens`). With "auto", the first step runs as plain GradCache and measures
  - activations per padded token: the step's peak over what the weights and the finished gradients hold, per
    token of its largest chunk (from the second chunk on, every chunk's forward runs beside all the gradients);
  - what the weights, gradients and optimizer state hold;
and from then on keeps as many tokens as fit in `fraction` of the card.
A step that runs out of memory anyway gives memory back and runs again: first half the kept tokens (none below one
chunk), then half the chunk size (down to one text per chunk), so a profile sized for an 80 GB card also trains on
a smaller one. A single process only: under DDP the other ranks could be inside a collective.
"""

from __future__ import annotations

import torch


def fit_tokens(total: int, held: int, grads: int, per_token: float, fraction: float) -> int:
    """Padded tokens whose activations fit beside the weights and optimizer state (`held`) and the gradients that
    the kept graphs' backward fills, within `fraction` of `total` bytes."""
    if per_token <= 0:
        return 0
    return max(0, int((fraction * total - held - grads) / per_token))


class MemoryBudget:
    """`keep`: padded tokens that keep their graph, or "auto" (measured on a CUDA device; 0 elsewhere, where the
    memory is host RAM nobody has measured). `chunk_tokens`: the padded tokens per chunk (None: a count of texts)."""

    def __init__(self, keep: int | str, device: torch.device, chunk_tokens: int | None = None,
                 fraction: float = 0.85, distributed: bool = False):
        if keep != "auto" and (not isinstance(keep, int) or keep < 0):
            raise ValueError(f"keep_graph_tokens must be 'auto' or a number of tokens >= 0, not {keep!r}")
        self.device, self.fraction, self.distributed = device, fraction, distributed
        self.keep_tokens = 0 if keep == "auto" else keep
        self.chunk_tokens = chunk_tokens
        self.pending = keep == "auto" and device.type == "cuda"  # measure on the next step
        self._start = self._after_backward = self._peak = 0

    def step_started(self) -> None:
        if self.pending:
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self._start = torch.cuda.memory_allocated(self.device)

    def backward_done(self) -> None:
        if self.pending:
            self._peak = torch.cuda.max_memory_allocated(self.device)
            self._after_backward = torch.cuda.memory_allocated(self.device)

    def step_done(self, largest_chunk: int) -> dict | None:
        """After the optimizer step and zero_grad: size the kept tokens once; returns what was measured (a log
        record)."""
        if not self.pending:
            return None
        self.pending = False
        held = torch.cuda.memory_allocated(self.device)
        grads = max(0, self._after_backward - self._start)
        per_token = (self._peak - self._after_backward) / max(largest_chunk, 1)
        total = torch.cuda.get_device_properties(self.device).total_memory
        self.keep_tokens = fit_tokens(total, held, grads, per_token, self.fraction)
        if self.distributed:  # every rank keeps the same chunks: the smallest budget
            budget = torch.tensor([self.keep_tokens], device=self.device)
            torch.distributed.all_reduce(budget, op=torch.distributed.ReduceOp.MIN)
            self.keep_tokens = int(budget.item())
        return {"event": "memory_budget", "keep_graph_tokens": self.keep_tokens,
                "activation_bytes_per_token": round(per_token), "held_gib": round(held / 2**30, 2),
                "grads_gib": round(grads / 2**30, 2), "card_gib": round(total / 2**30, 2)}

    def shrink(self, error: BaseException, chunk_sizes: list[int], longest_text: int) -> dict:
        """After an out-of-memory step (`chunk_sizes`: its chunks' padded tokens): halve the kept tokens while a
        chunk keeps its graph, else halve the chunk size while a chunk holds more than one text; else, or under
        DDP, re-raise."""
        if self.distributed:
            raise torch.OutOfMemoryError(f"{error}\nkalm: under DDP a step is not retried with less memory; lower "
                                         f"keep_graph_tokens or chunk_tokens ({self.chunk_tokens})") from error
        if self.keep_tokens >= min(chunk_sizes):
            self.keep_tokens = self.keep_tokens // 2 if self.keep_tokens // 2 >= min(chunk_sizes) else 0
        elif self.chunk_tokens and max(chunk_sizes) > longest_text:
            self.chunk_tokens = max(self.chunk_tokens // 2, longest_text)
        else:
            raise torch.OutOfMemoryError(f"{error}\nkalm: a step does not fit even with one text per chunk and no "
                                         "kept graphs; turn on gradient_checkpointing or lower the max lengths"
                                         ) from error
        return {"event": "memory_budget", "keep_graph_tokens": self.keep_tokens, "chunk_tokens": self.chunk_tokens,
                "reason": "out of memory"}
