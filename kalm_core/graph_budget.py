"""How many padded tokens of a GradCache step keep their graph instead of running a second forward.

GradCache (kalm_core/grad_cache.py) spends 8 N FLOPs per token where a plain backward spends 6 N: its second pass
repeats every forward. On a card with memory to spare, the chunks whose activations fit keep their graph from the
first pass. `GraphBudget` sizes that from the first step, which runs as plain GradCache:
  - activations per padded token: the step's peak over what the weights and the finished gradients hold, per
    token of its largest chunk (from the second chunk on, every chunk's forward runs beside all the gradients);
  - what the weights, gradients and optimizer state hold;
and keeps as many tokens as fit in `fraction` of the card. A step that runs out of memory anyway is run again with
half the budget (a single process only: under DDP the other ranks could be inside a collective).
"""

from __future__ import annotations

import torch


def fit_tokens(total: int, held: int, grads: int, per_token: float, fraction: float) -> int:
    """Padded tokens whose activations fit beside the weights and optimizer state (`held`) and the gradients that
    the kept graphs' backward fills, within `fraction` of `total` bytes."""
    if per_token <= 0:
        return 0
    return max(0, int((fraction * total - held - grads) / per_token))


class GraphBudget:
    """`setting`: a number of padded tokens, or "auto" (measured on a CUDA device; 0 elsewhere, where the second
    forward's memory is host RAM nobody has measured)."""

    def __init__(self, setting: int | str, device: torch.device, fraction: float = 0.85, distributed: bool = False):
        if setting != "auto" and (not isinstance(setting, int) or setting < 0):
            raise ValueError(f"keep_graph_tokens must be 'auto' or a number of tokens >= 0, not {setting!r}")
        self.device, self.fraction, self.distributed = device, fraction, distributed
        self.tokens = 0 if setting == "auto" else setting
        self.pending = setting == "auto" and device.type == "cuda"  # measure on the next step
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
        """After the optimizer step and zero_grad: size the budget once; returns what was measured (for the log)."""
        if not self.pending:
            return None
        self.pending = False
        held = torch.cuda.memory_allocated(self.device)
        grads = max(0, self._after_backward - self._start)
        per_token = (self._peak - self._after_backward) / max(largest_chunk, 1)
        total = torch.cuda.get_device_properties(self.device).total_memory
        self.tokens = fit_tokens(total, held, grads, per_token, self.fraction)
        if self.distributed:  # every rank keeps the same chunks: the smallest budget
            budget = torch.tensor([self.tokens], device=self.device)
            torch.distributed.all_reduce(budget, op=torch.distributed.ReduceOp.MIN)
            self.tokens = int(budget.item())
        return {"event": "graph_budget", "keep_graph_tokens": self.tokens,
                "activation_bytes_per_token": round(per_token), "held_gib": round(held / 2**30, 2),
                "grads_gib": round(grads / 2**30, 2), "card_gib": round(total / 2**30, 2)}

    def shrink(self, error: BaseException, smallest_chunk: int) -> dict:
        """After an out-of-memory step: halve the budget (to none once it is below the smallest chunk), or re-raise
        when no chunk kept its graph or when the other ranks could be waiting in a collective."""
        if self.tokens < smallest_chunk or self.distributed:
            raise error
        self.tokens = self.tokens // 2 if self.tokens // 2 >= smallest_chunk else 0
        return {"event": "graph_budget", "keep_graph_tokens": self.tokens, "reason": "out of memory"}
