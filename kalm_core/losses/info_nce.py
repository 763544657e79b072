"""InfoNCE over the positive, the query's own hard negatives and every other passage in the batch."""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F

from kalm_core.losses.gather import distributed, gather_with_grad


class InfoNCELoss(torch.nn.Module):
    """Contrastive loss of KaLM-Embedding (arXiv 2501.01028, §3.3): for query i, softmax over its scores against all
    passages of the (global) batch at temperature tau; the target is query i's positive.

    Args:
        temperature: tau; KaLM uses 0.01 for Qwen2, 0.05 suits MiniLM (which was trained at scale 20).
        cross_device: gather queries and passages from every rank (all_gather keeping local gradients), so each
            query also sees the other devices' passages as negatives.
        false_negative_margin: None (off), or mask out of a query's softmax every candidate whose cosine exceeds
            its positive's by more than this (0.1 in Qwen3-Embedding); `last_masked` counts them.

    References:
        KaLM-Embedding, arXiv 2501.01028, recipe (1) "in-batch + hard negatives"; van den Oord et al. 2018 (InfoNCE).

    Inputs:
        q: (B, D) query embeddings; p: (B * G, D) passages, group-major: row i*G is query i's positive and rows
        i*G+1 .. i*G+G-1 its hard negatives. Embeddings should be L2-normalised (scores are dot products).

    Relations:
        MatryoshkaLoss wraps it: it gathers once at full dimension, then scores each truncated dimension.

    Example:
        >>> loss = InfoNCELoss(temperature=0.05)
        >>> q = torch.nn.functional.normalize(torch.randn(4, 8), dim=-1)
        >>> p = torch.nn.functional.normalize(torch.randn(8, 8), dim=-1)  # group size 2
        >>> loss.compute_loss_from_embeddings(q, p).shape
        torch.Size([])
    """

    def __init__(self, temperature: float = 0.01, cross_device: bool = True,
                 false_negative_margin: float | None = None):
        super().__init__()
        if temperature <= 0:
            raise ValueError(f"temperature must be positive, got {temperature}")
        self.temperature = temperature
        self.cross_device = cross_device
        self.false_negative_margin = false_negative_margin
        self.last_masked: torch.Tensor | None = None  # candidates masked in the last call (a tensor: no sync)
        # (N, N * G) bool for the next batch: candidates identical to a query's positive or to the query itself
        # (kalm_core/losses/same_text.py), set per step by the trainer; None: every text in the batch is distinct
        self.same_text: torch.Tensor | None = None

    def gather(self, q: torch.Tensor, p: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Every rank's queries and passages, local slices keeping their gradient."""
        if self.cross_device and distributed():
            return gather_with_grad(q), gather_with_grad(p)
        return q, p

    def score(self, q: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
        """The loss of gathered q (N, D) against gathered p (N * G, D); mean over the N queries."""
        n, group = q.size(0), p.size(0) // q.size(0)
        if p.size(0) != n * group:
            raise ValueError(f"{p.size(0)} passages do not split into groups for {n} queries")
        # fp32 even under bf16 autocast: at tau = 0.01 a bf16 cosine near 0.8 is off by up to ~0.002, i.e. 0.2 in the
        # logit, the size of the differences the loss learns from
        with torch.autocast(q.device.type, enabled=False):
            scores = q.float() @ p.float().T  # (N, N * G) cosines
            target = torch.arange(n, device=q.device) * group  # (N,) each query's positive
            if self.same_text is not None:
                if self.same_text.shape != scores.shape:
                    raise ValueError(f"same_text mask {tuple(self.same_text.shape)} does not match the scores "
                                     f"{tuple(scores.shape)}")
                scores = scores.masked_fill(self.same_text.to(scores.device), float("-inf"))
            if self.false_negative_margin is not None:
                scores = self.mask_false_negatives(scores, target)
            loss = F.cross_entropy(scores / self.temperature, target)
        if self.cross_device and distributed():
            # Every rank computes the same global loss but backpropagates only into its own shard; DDP averages
            # gradients over ranks, so scaling by the world size gives exactly the global-batch gradient.
            loss = loss * dist.get_world_size()
        return loss

    def mask_false_negatives(self, scores: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Qwen3-Embedding's and gte's rule: a candidate that scores above the query's positive by more than the
        margin is most likely another answer to the query, not a negative; it leaves the query's softmax."""
        rows = torch.arange(scores.size(0), device=scores.device)
        positive = scores[rows, target].detach()  # (N,)
        masked = scores.detach() > (positive + self.false_negative_margin)[:, None]  # (N, N * G)
        masked[rows, target] = False
        self.last_masked = masked.sum()
        return scores.masked_fill(masked, float("-inf"))

    def compute_loss_from_embeddings(self, q: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
        return self.score(*self.gather(q, p))

    def forward(self, model, q_features: dict, p_features: dict) -> torch.Tensor:
        return self.compute_loss_from_embeddings(model(**q_features), model(**p_features))

    def get_config_dict(self) -> dict:
        return {"temperature": self.temperature, "cross_device": self.cross_device,
                "false_negative_margin": self.false_negative_margin}

    @property
    def citation(self) -> str:
        return ("@article{hu2025kalm, title={KaLM-Embedding: Superior Training Data Brings A Stronger Embedding "
                "Model}, author={Hu, Xinshuo and others}, journal={arXiv preprint arXiv:2501.01028}, year={2025}}")
