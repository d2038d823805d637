"""Poolers: token vectors (B, T, H) and the padding mask (B, T) -> one vector per example (B, H).

`cls` (BERT's pooler: dense + tanh on [CLS]) is the encoder's own layer; the rest live here.
Every pooler ignores padding: appending pad tokens to an input leaves its pooled vector unchanged.
"""

from __future__ import annotations

import torch
from torch import nn


class ClsRawPooler(nn.Module):
    """The [CLS] vector as it leaves the last layer."""

    def forward(self, hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return hidden[:, 0]


class MeanPooler(nn.Module):
    """Mean of the real tokens' vectors."""

    def forward(self, hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        weights = mask.unsqueeze(-1).to(hidden.dtype)  # (B, T, 1)
        return (hidden * weights).sum(1) / weights.sum(1).clamp(min=1.0)


class MaxPooler(nn.Module):
    """Per-dimension maximum over the real tokens."""

    def forward(self, hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        masked = hidden.masked_fill(~mask.bool().unsqueeze(-1), torch.finfo(hidden.dtype).min)  # (B, T, H)
        return masked.max(dim=1).values


# `cls` is BERT's own pooler (dense + tanh on [CLS]): its weights belong to the encoder checkpoint, so
# MultiTaskModel applies `encoder.pooler` itself rather than registering the same weights twice.
POOLERS = {"cls_raw": ClsRawPooler, "mean": MeanPooler, "max": MaxPooler}
POOLER_NAMES = ("cls", *POOLERS)


def build_pooler(name: str) -> nn.Module | None:
    """The pooler module for `name`; None for `cls`, which is the encoder's own pooling layer."""
    if name not in POOLER_NAMES:
        raise ValueError(f"unknown pooler {name!r}; known: {', '.join(POOLER_NAMES)}")
    return None if name == "cls" else POOLERS[name]()
