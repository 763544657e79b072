"""all_gather that keeps the gradient for the local shard (cross-device negatives, KaLM §3.3).

torch.distributed.all_gather returns tensors without autograd history; putting the local tensor back in its
slot lets gradients flow to this rank's own embeddings, while the other ranks' embeddings act as constants.
"""

from __future__ import annotations

import torch
import torch.distributed as dist


def distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def gather_with_grad(x: torch.Tensor) -> torch.Tensor:
    """(B, D) on each of W ranks -> (W * B, D), rank-major; gradients reach only the local slice."""
    if not distributed():
        return x
    parts = [torch.empty_like(x) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, x.detach().contiguous())
    parts[dist.get_rank()] = x
    return torch.cat(parts, dim=0)
