"""Losses, one per module: InfoNCE (with cross-device negatives) and the Matryoshka wrapper."""

from kalm_core.losses.info_nce import InfoNCELoss
from kalm_core.losses.matryoshka import MatryoshkaLoss

__all__ = ["InfoNCELoss", "MatryoshkaLoss"]
