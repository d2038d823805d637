"""Model FLOPs of the encoder, and this machine's measured matmul peak: the two halves of model FLOP
utilisation (MFU = model FLOPs per second / peak FLOPs per second).

Counting follows the usual convention for transformers (Kaplan et al. 2020, "Scaling laws", section 2.1;
Chowdhery et al. 2022, PaLM, appendix B): a multiply-add is 2 FLOPs, only matrix products count
(embedding lookups, LayerNorm, softmax, activations and dropout are left out), and a training step costs
3 forward passes (the backward pass computes gradients for inputs and weights: twice the forward).
Per layer of width H and feed-forward width I, one sequence of L tokens costs

    query, key, value and attention-output projections   4 x 2 L H H
    feed-forward, widening and narrowing                 2 x 2 L H I
    attention scores Q K^T and the weighted sum of V     2 x 2 L L H   (all heads together)

"Model" FLOPs count real tokens only: L is each sequence's own length, whatever it is padded to, so
work spent on padding does not count as useful. The pooler and task heads (under 0.1% at BERT sizes) are
left out.
"""

from __future__ import annotations

import time
from collections.abc import Iterable

import torch

from mtbert.model.bert import BertConfig

TRAINING_MULTIPLIER = 3
"A training step: one forward pass and a backward pass of twice its cost."


def layer_forward_flops(config: BertConfig, length: int) -> int:
    """Forward FLOPs of one layer on one sequence of `length` tokens."""
    h, i, n = config.hidden_size, config.intermediate_size, length
    projections = 4 * 2 * n * h * h
    feed_forward = 2 * 2 * n * h * i
    attention = 2 * 2 * n * n * h
    return projections + feed_forward + attention


def encoder_forward_flops(config: BertConfig, lengths: Iterable[int]) -> int:
    """Forward FLOPs of all layers on sequences of the given real lengths."""
    return config.num_hidden_layers * sum(layer_forward_flops(config, int(n)) for n in lengths)


def sequence_lengths(batch: dict[str, torch.Tensor]) -> list[int]:
    """Real length of every sequence the encoder sees in a batch (both sides of a siamese pair)."""
    return [n for key, mask in batch.items() if key.startswith("attention_mask") for n in mask.sum(1).tolist()]


def measure_matmul_peak(dtype: torch.dtype = torch.float32, device: torch.device | str = "cpu",
                        sizes: Iterable[int] | None = None, repeats: int = 5) -> dict:
    """The best rate of square matrix products on this machine, in FLOP/s: for each size n, `repeats` timed
    products of two n x n matrices (2 n^3 FLOPs each) after one untimed one; the fastest wins. Uses the
    threads torch uses for the model, so it is the ceiling the model's matrix products can reach."""
    device = torch.device(device)
    if sizes is None:
        sizes = (4096, 8192) if device.type == "cuda" else (1024, 2048)
    best = {"flops_per_s": 0.0, "size": None}
    for n in sizes:
        a = torch.randn(n, n, device=device).to(dtype)
        b = torch.randn(n, n, device=device).to(dtype)
        torch.matmul(a, b)
        for _ in range(repeats):
            _sync(device)
            start = time.perf_counter()
            torch.matmul(a, b)
            _sync(device)
            rate = 2 * n**3 / (time.perf_counter() - start)
            if rate > best["flops_per_s"]:
                best = {"flops_per_s": rate, "size": n}
    return {"dtype": str(dtype).removeprefix("torch."), "device": device.type, "threads": torch.get_num_threads(),
            **best}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
