"""Poolers: token vectors (B, T, H) and the padding mask (B, T) -> one vector per example (B, H).

`cls` (BERT's pooler: dense + tanh on [CLS]) is the encoder's own layer; the rest live here.
Every pooler ignores padding: appending pad tokens to an input leaves its pooled vector unchanged.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from mtbert.model.routing import Routing


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


class MeanMaxPooler(nn.Module):
    """Sum of the real tokens' vectors next to the real token vector of largest L2 norm, then dense + tanh.

    cf. mean-max pooling (Zhang et al. 2018, Mean-Max Attention Autoencoder), here with a sum and one whole
    token chosen by its norm instead of a per-dimension maximum.
    """

    def __init__(self, hidden_size: int):
        super().__init__()
        self.dense = nn.Linear(2 * hidden_size, hidden_size)
        self.activation = nn.Tanh()

    def forward(self, hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        real = mask.bool()  # (B, T)
        # A sum, not a mean: the length stays visible to the dense layer.
        total = (hidden * real.unsqueeze(-1).to(hidden.dtype)).sum(1)  # (B, H)
        # Pads can never win: their norm is -inf.
        norms = hidden.norm(dim=-1).masked_fill(~real, float("-inf"))  # (B, T)
        index = norms.argmax(dim=1)  # (B,)
        largest = hidden[torch.arange(hidden.shape[0], device=hidden.device), index]  # (B, H)
        return self.activation(self.dense(torch.cat([total, largest], dim=-1)))  # (B, 2H) -> (B, H)


class SwapPooler(nn.Module):
    """Softmax-weighted average: per dimension, a softmax over the real tokens weights their values.

    SWAP, softmax-weighted average pooling (Jain & Elias 2020): near max pooling in the forward pass, while
    every real token gets gradient, not only the maximum.
    """

    def forward(self, hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        real = mask.bool().unsqueeze(-1)  # (B, T, 1)
        # The most negative finite number rather than -inf: an example with no real token then gives no NaN.
        logits = hidden.masked_fill(~real, torch.finfo(hidden.dtype).min)  # (B, T, H)
        # Softmax over tokens (dim 1), separately for each dimension. Multiplying by the mask makes the pad
        # weights exactly 0 (and all weights 0 for an example with no real token), so pads get no gradient.
        weights = logits.softmax(dim=1) * real.to(hidden.dtype)  # (B, T, H)
        return (weights * hidden).sum(1)  # (B, H)


class StochasticPooler(nn.Module):
    """Training: per example and dimension, the value of one real token drawn with probability proportional
    to its activation (relu; uniform over the real tokens when all are 0). Eval: the probability-weighted
    average, which is deterministic.

    Stochastic pooling (Zeiler & Fergus 2013, Stochastic Pooling for Regularization of Deep CNNs).
    """

    def forward(self, hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        real = mask.bool().unsqueeze(-1)  # (B, T, 1)
        # Unnormalised probabilities in float32: half-precision cumulative sums lose too much.
        weights = hidden.float().relu() * real  # (B, T, H)
        total = weights.sum(1, keepdim=True)  # (B, 1, H)
        # A dimension with no positive activation over the real tokens: uniform over them.
        weights = torch.where(total > 0, weights, real.float().expand_as(weights))  # (B, T, H)
        total = weights.sum(1, keepdim=True)  # (B, 1, H); 0 only for an example with no real token
        if not self.training:
            probs = weights / total.clamp(min=torch.finfo(weights.dtype).tiny)  # (B, T, H)
            return (probs.to(hidden.dtype) * hidden).sum(1)  # (B, H)
        # Inverse-CDF sampling, equivalent to torch.multinomial per (example, dimension): it draws one uniform
        # number per (example, dimension) whatever T is, so with a fixed seed appended pads (weight 0, the
        # cumulative sum flat) change nothing, and no (B*H, T) copy is needed.
        cdf = weights.cumsum(1)  # (B, T, H)
        u = torch.rand_like(total) * total  # (B, 1, H), in [0, total)
        # The first position whose cdf exceeds u: its weight is > 0, so it is a real token.
        index = (cdf <= u).sum(1, keepdim=True)  # (B, 1, H)
        # Rounding can make u reach total; fall back to the last token with weight.
        positions = torch.arange(hidden.shape[1], device=hidden.device).view(1, -1, 1)  # (1, T, 1)
        last = (positions * (weights > 0)).amax(1, keepdim=True)  # (B, 1, H)
        index = torch.minimum(index, last)  # (B, 1, H)
        # Gather keeps the graph: gradient flows to the sampled values only.
        picked = hidden.gather(1, index).squeeze(1)  # (B, 1, H) -> (B, H)
        # An example with no real token gives 0, as in eval mode.
        return picked * real.any(1).to(hidden.dtype)  # (B, H)


class RoutingPooler(nn.Module):
    """The real tokens routed to `outputs` vectors of `size` (model/routing.py, Heinsen 2022), concatenated;
    a Linear maps the concatenation to the hidden size when outputs x size is not it."""

    def __init__(self, hidden_size: int, outputs: int = 4, size: int | None = None, iterations: int = 2):
        super().__init__()
        size = size or max(1, hidden_size // outputs)
        self.routing = Routing(hidden_size, outputs, size, iterations)
        self.project = nn.Identity() if outputs * size == hidden_size else nn.Linear(outputs * size, hidden_size)

    def forward(self, hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        routed = self.routing(hidden, mask)  # (B, outputs, size)
        return self.project(routed.flatten(1))  # (B, outputs x size) -> (B, H)


# `cls` is BERT's own pooler (dense + tanh on [CLS]): its weights belong to the encoder checkpoint, so
# MultiTaskModel applies `encoder.pooler` itself rather than registering the same weights twice.
# Each entry takes the hidden size (poolers without parameters ignore it) and the recipe's options, if any
# (`routing:`'s outputs, size, iterations).
POOLERS: dict[str, Callable[..., nn.Module]] = {
    "cls_raw": lambda hidden_size: ClsRawPooler(),
    "mean": lambda hidden_size: MeanPooler(),
    "max": lambda hidden_size: MaxPooler(),
    "mean_max": MeanMaxPooler,
    "swap": lambda hidden_size: SwapPooler(),
    "stochastic": lambda hidden_size: StochasticPooler(),
    "routing": RoutingPooler,
}
POOLER_NAMES = ("cls", *POOLERS)


def build_pooler(name: str, hidden_size: int, options: dict | None = None) -> nn.Module | None:
    """The pooler module for `name` (with `options`, e.g. routing's sizes); None for `cls`, which is the
    encoder's own pooling layer."""
    if name not in POOLER_NAMES:
        raise ValueError(f"unknown pooler {name!r}; known: {', '.join(POOLER_NAMES)}")
    return None if name == "cls" else POOLERS[name](hidden_size, **(options or {}))
