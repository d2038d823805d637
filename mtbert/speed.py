"""The recipe's `speed` section applied to a model, an optimizer and a precision.

The model only carries plain switches (`BertModel.unpad`); what the hardware supports is decided here,
outside mtbert/model, which knows nothing of devices.
"""

from __future__ import annotations

import warnings

import torch

from mtbert.config import SpeedConfig
from mtbert.model.bert import BertDropout, BertSelfAttention


def bf16_supported(device: torch.device | str) -> bool:
    """Whether bf16 matrix products run natively: CUDA with bf16, or a CPU with AVX512-BF16 or AMX."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    if device.type == "cpu":
        return torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported()
    return False


def use_bf16(speed: SpeedConfig, device: torch.device | str) -> bool:
    """speed.bf16, unless the device cannot run it natively (then fp32, with a warning: emulated bf16 is slow)."""
    if speed.bf16 and not bf16_supported(device):
        warnings.warn(f"speed.bf16: {torch.device(device).type} has no native bf16 support here; running in fp32",
                      stacklevel=2)
        return False
    return speed.bf16


def mixed_precision(speed: SpeedConfig) -> str | None:
    """Accelerate's mixed_precision argument: "bf16" when asked for and supported, else None (its own default)."""
    device = "cuda" if torch.cuda.is_available() else "cpu"
    return "bf16" if use_bf16(speed, device) else None


def set_switches(model: torch.nn.Module, speed: SpeedConfig) -> torch.nn.Module:
    """Set a MultiTaskModel's computation switches (what evaluate and predict use; no compilation)."""
    model.encoder.unpad = speed.unpad
    model.last_layer_cls_only = speed.last_layer_cls_only
    for module in model.modules():
        if isinstance(module, BertSelfAttention):
            module.fused_qkv = speed.fused_qkv
        elif isinstance(module, BertDropout):
            module.cheap_masks = speed.cheap_dropout
    return model


def prepare_model(model: torch.nn.Module, speed: SpeedConfig) -> torch.nn.Module:
    """set_switches, then compile the encoder's layers in place (parameter names unchanged) if asked."""
    set_switches(model, speed)
    if speed.compile:
        for layer in model.encoder.layers():  # every copy's layers, under a sharing plan
            # In place, so parameter names (and checkpoints) stay those of the plain model.
            layer.compile(dynamic=True)
    return model


def optimizer_options(speed: SpeedConfig, optimizer: str) -> dict:
    """Extra keyword arguments for build_optimizer: torch AdamW's fused kernel when asked for."""
    return {"fused": True} if speed.fused_optimizer and optimizer == "adamw" else {}


def real_tokens(batch: dict[str, torch.Tensor]) -> int:
    """Non-padding tokens of a host-side batch (both sides of a siamese pair); reading it needs no device sync."""
    return sum(int(v.sum()) for k, v in batch.items() if k.startswith("attention_mask"))
