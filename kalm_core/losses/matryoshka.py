"""Matryoshka representation learning: one loss per truncated dimension, weighted and summed."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from kalm_core.losses.info_nce import InfoNCELoss


class MatryoshkaLoss(torch.nn.Module):
    """Trains the first d coordinates of every embedding to work on their own (MRL): truncate to each d,
    re-normalise, score with the inner loss, and sum with weights.

    Args:
        inner: the loss to apply per dimension (it must offer `gather` and `score`, as InfoNCELoss does).
        dims: the dimensions, e.g. (896, 512, 256, 128, 64); each positive and at most the hidden size.
        weights: one weight per dimension, e.g. (1, 0.3, 0.2, 0.1, 0.1).
        hidden_size: when given, dims larger than it are refused up front.

    References:
        Kusupati et al., Matryoshka Representation Learning, arXiv 2205.13147; KaLM-Embedding arXiv 2501.01028
        recipe (5), KaLM-V2 arXiv 2506.20923 (dims and weights).

    Inputs:
        q (B, D) and p (B * G, D) as for InfoNCELoss, at full dimension D.

    Relations:
        Composes through embeddings: it never touches the model, so it wraps any loss with gather/score, and it
        gathers once across devices at full dimension before truncating.

    Example:
        >>> loss = MatryoshkaLoss(InfoNCELoss(0.05), dims=(8, 4), weights=(1.0, 0.3))
        >>> q = torch.nn.functional.normalize(torch.randn(4, 8), dim=-1)
        >>> p = torch.nn.functional.normalize(torch.randn(8, 8), dim=-1)
        >>> float(loss.compute_loss_from_embeddings(q, p)) > 0
        True
    """

    def __init__(self, inner: InfoNCELoss, dims: tuple[int, ...], weights: tuple[float, ...],
                 hidden_size: int | None = None):
        super().__init__()
        dims, weights = tuple(dims), tuple(weights)
        if not dims:
            raise ValueError("dims must name at least one dimension")
        if len(weights) != len(dims):
            raise ValueError(f"weights has {len(weights)} entries but dims has {len(dims)}: one weight per dim")
        if any(d <= 0 for d in dims):
            raise ValueError(f"dims must be positive, got {dims}")
        if len(set(dims)) != len(dims):
            raise ValueError(f"dims must not repeat, got {dims}")
        if hidden_size is not None and max(dims) > hidden_size:
            raise ValueError(f"dim {max(dims)} is larger than the model's hidden size {hidden_size}")
        if any(w < 0 for w in weights) or sum(weights) <= 0:
            raise ValueError(f"weights must be non-negative with a positive sum, got {weights}")
        order = sorted(range(len(dims)), key=lambda i: -dims[i])
        self.inner = inner
        self.last_masked = None  # the inner loss's masked false negatives at full dimension, last call
        self.dims = tuple(dims[i] for i in order)
        self.weights = tuple(weights[i] for i in order)

    def compute_loss_from_embeddings(self, q: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
        q, p = self.inner.gather(q, p)  # once, at full dimension
        total = q.new_zeros((), dtype=torch.float32)
        for d, w in zip(self.dims, self.weights):
            qd = F.normalize(q[:, :d].float(), dim=-1)  # (N, d), fp32 like the scores
            pd = F.normalize(p[:, :d].float(), dim=-1)  # (N * G, d)
            total = total + w * self.inner.score(qd, pd)
            if d == self.dims[0]:
                self.last_masked = getattr(self.inner, "last_masked", None)  # at full dimension
        return total

    def forward(self, model, q_features: dict, p_features: dict) -> torch.Tensor:
        return self.compute_loss_from_embeddings(model(**q_features), model(**p_features))

    def get_config_dict(self) -> dict:
        return {"inner": type(self.inner).__name__, **self.inner.get_config_dict(), "dims": list(self.dims),
                "weights": list(self.weights)}
