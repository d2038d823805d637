"""Supervised losses by task kind, and the matching turn of model outputs into predictions."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def cross_entropy(outputs: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(outputs.float(), labels.long())


def bce_with_logits(outputs: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    return F.binary_cross_entropy_with_logits(outputs.float(), labels.float())


def mse(outputs: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    return F.mse_loss(outputs.float(), labels.float())


LOSSES = {"cross_entropy": cross_entropy, "bce_with_logits": bce_with_logits, "mse": mse}


def predictions(kind: str, outputs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(prediction, class probabilities or None): a class index per example, or a score."""
    outputs = outputs.float()
    if kind == "classes":
        probs = outputs.softmax(-1)
        return probs.argmax(-1), probs
    if kind == "binary":
        p = outputs.sigmoid()
        return (p > 0.5).long(), torch.stack([1 - p, p], dim=-1)
    return outputs, None
