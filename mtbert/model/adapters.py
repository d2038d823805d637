"""Per-task adapters on a sharing plan's encoder (mtbert/model/plan.py's `Adapter`): LoRA through peft, and
projected attention layers (PALs) built here. One adapter per task group (its *owner*, the group's tasks
joined by '+'); the encoder activates the task's own before each forward.

**LoRA** (Hu et al. 2021, arXiv:2106.09685): beside each chosen projection W of every encoder layer a
low-rank update, y = W x + b + (alpha / r) B A dropout(x), A (r, in), B (out, r) zero at the start. peft
injects it (`inject_adapter_in_model`, one named adapter per owner) into the copies' `nn.Linear` layers;
what peft changes is undone where mtbert depends on it:

- injection freezes every other parameter of the module it is given: the plan's own requires_grad
  (frozen copies off, shared and individual ones on) is put back afterwards;
- `set_adapter` turns requires_grad off on every other adapter, and a parameter whose flag is off when
  backward runs gets no gradient (an `all_tasks` step runs several tasks' forwards before one backward):
  `activate` puts every flag back at once, so whatever trains keeps training (and DDP, which registered
  the trainable parameters when it wrapped the model, sees the same set every step);
- the wrapped layer's own weight moves to `<name>.base_layer.weight`: state-dict hooks on each wrapped
  layer keep the checkpoint key `<name>.weight` (adapters add `<name>.lora_A.<owner>.weight` and
  `lora_B`), so a model's files read the same with or without adapters.

**PALs** (Stickland & Murray 2019, "BERT and PALs", ICML, arXiv:1902.02671; the formulas as in the authors'
code, github.com/AsaCooperStickland/Bert-n-Pals, `modeling.py`): per owner an encoder V_E (H -> d_s) and a
decoder V_D (d_s -> H) shared by all layers, and in every layer l a multi-head self-attention in d_s
dimensions without output projection. The PAL runs in parallel with the whole layer on the layer's input
h and is added to the residual sum inside the layer's last LayerNorm:

    TS_l(h) = GELU(V_D(SelfAttention_l(V_E(h))))
    layer(h) = LN(a + Dropout(FFN(a)) + TS_l(h)),     a = the attention block's output, as without PALs

It reaches the layer through `BertLayer.parallel` (mtbert/model/bert.py), a plain callable. d_s is 204 for
BERT-base (H = 768) with 6 heads in that code; for another width it scales with H (102 for MiniLM's 384:
half the width and half the head size, as MiniLM halves BERT-base's). One deviation: V_D starts at zero, so
a PAL starts as no change (GELU(0) = 0) and adding PALs to a trained or pretrained encoder starts from
exactly its outputs; the authors' code initialises V_D like every other linear layer.
"""

from __future__ import annotations

import dataclasses
import re
import warnings
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import nn

from mtbert.model.bert import BertConfig, BertSelfAttention, PackedMask
from mtbert.model.plan import Adapter, SharingPlan

LORA_MODULES = {"query": "attention.self.query", "key": "attention.self.key", "value": "attention.self.value",
                "attention_output": "attention.output.dense", "ffn_in": "intermediate.dense",
                "ffn_out": "output.dense"}
"Each LoRA target's module inside a BertLayer (Hugging Face names)."


# ---------------------------------------------------------------------------------------------
# Building


def attach(encoder: nn.Module, plan: SharingPlan, config: BertConfig) -> None:
    """Add the plan's adapters to a BranchedEncoder (its `copies` built, weights in place); no-op without one."""
    adapter = plan.adapter
    if adapter is None:
        return
    if adapter.kind == "lora":
        _inject_lora(encoder, plan, adapter)
    else:
        encoder.pals = ProjectedAttentionLayers(config, adapter)
        for index in range(config.num_hidden_layers):
            for part in encoder.copies.values():
                layer = part.encoder.layer[str(index)] if str(index) in part.encoder.layer else None
                if layer is not None:
                    layer.parallel = _LayerPal(encoder.pals, index)


def lora_module_names(plan: SharingPlan, adapter: Adapter, group: tuple[str, ...]) -> list[str]:
    """The modules (names inside a BranchedEncoder) that carry `group`'s LoRA: the chosen projections of every
    encoder layer of every copy the group's tasks run through (relational layers have none)."""
    names = []
    for index in range(len(plan.layers)):
        for owner in dict.fromkeys(plan.path(task).layers[index] for task in group):
            names += [f"copies.{owner}.encoder.layer.{index}.{LORA_MODULES[t]}" for t in adapter.targets]
    return names


def _inject_lora(encoder: nn.Module, plan: SharingPlan, adapter: Adapter) -> None:
    from peft import LoraConfig, inject_adapter_in_model

    trainable = {name: p.requires_grad for name, p in encoder.named_parameters()}
    for group in adapter.groups:
        names = lora_module_names(plan, adapter, group)
        config = LoraConfig(r=adapter.r, lora_alpha=adapter.alpha, lora_dropout=adapter.dropout, bias="none",
                            target_modules="|".join(re.escape(n) for n in names))  # a full match on each name
        with warnings.catch_warnings():  # one named adapter per owner is what mtbert wants
            warnings.filterwarnings("ignore", message=".*multiple adapters.*")
            inject_adapter_in_model(config, encoder, adapter_name="+".join(group))
    for name, param in encoder.named_parameters():
        if is_lora_parameter(name):
            param.requires_grad_(True)
        else:
            param.requires_grad_(trainable[name.replace(".base_layer.", ".")])
    for module in lora_layers(encoder):
        module.register_state_dict_post_hook(_checkpoint_names)
        module.register_load_state_dict_pre_hook(_wrapped_names)
    encoder.active_adapter = None


def lora_layers(module: nn.Module) -> Iterator[nn.Module]:
    """peft's LoRA layers inside `module`."""
    from peft.tuners.lora import LoraLayer

    return (m for m in module.modules() if isinstance(m, LoraLayer))


def is_lora_parameter(name: str) -> bool:
    return ".lora_" in name or name.startswith("lora_")


_WRAPPED = ("base_layer.weight", "base_layer.bias")


def _checkpoint_names(module, state_dict, prefix, local_metadata) -> None:
    """A wrapped layer's own weight and bias under its plain names (`query.weight`, not `query.base_layer.weight`)."""
    for key in _WRAPPED:
        if prefix + key in state_dict:
            state_dict[prefix + key.removeprefix("base_layer.")] = state_dict.pop(prefix + key)


def _wrapped_names(module, state_dict, prefix, *args) -> None:
    """The reverse of _checkpoint_names as a state dict loads."""
    for key in _WRAPPED:
        plain = prefix + key.removeprefix("base_layer.")
        if plain in state_dict:
            state_dict[prefix + key] = state_dict.pop(plain)


# ---------------------------------------------------------------------------------------------
# Switching


def activate(encoder: nn.Module, plan: SharingPlan, task: str) -> None:
    """Make `task`'s adapter the one its next forward runs through; every requires_grad flag stays as it was."""
    owner = plan.adapter_owner(task)
    if owner is None or getattr(encoder, "active_adapter", None) == owner:
        return
    if plan.adapter.kind == "pals":
        encoder.pals.active = owner
    else:
        from peft.functional import set_adapter

        flags = [(p, p.requires_grad) for name, p in encoder.named_parameters() if is_lora_parameter(name)]
        set_adapter(encoder, owner)
        for param, flag in flags:
            param.requires_grad_(flag)
    encoder.active_adapter = owner


# ---------------------------------------------------------------------------------------------
# PALs


class ProjectedAttention(nn.Module):
    """One owner's PALs: V_E and V_D shared by the layers, and one small self-attention per layer."""

    def __init__(self, config: BertConfig, width: int, heads: int) -> None:
        super().__init__()
        self.down = nn.Linear(config.hidden_size, width)  # V_E
        self.up = nn.Linear(width, config.hidden_size)  # V_D
        small = dataclasses.replace(config, hidden_size=width, num_attention_heads=heads)
        self.attention = nn.ModuleList(BertSelfAttention(small) for _ in range(config.num_hidden_layers))
        for module in (self.down, *(m for a in self.attention for m in (a.query, a.key, a.value))):
            nn.init.normal_(module.weight, std=config.initializer_range)  # BERT's initialisation
            nn.init.zeros_(module.bias)
        nn.init.zeros_(self.up.weight)  # starts as no change (see the module docstring)
        nn.init.zeros_(self.up.bias)

    def forward(self, index: int, hidden: torch.Tensor, mask: torch.Tensor | PackedMask | None,
                first_token_only: bool = False) -> torch.Tensor:
        """Layer `index`'s PAL on the layer's input: padded (B, T, H) or packed (N, H) -> the same layout, or
        (B, 1, H) with first_token_only (keys and values from every token, as the layer's own attention)."""
        small = self.down(hidden)  # (B, T, d_s) or (N, d_s)
        attended = self.attention[index](small, mask, first_token_only)  # as small, or (B, 1, d_s)
        return F.gelu(self.up(attended))  # (B, T, H), (N, H) or (B, 1, H)


class ProjectedAttentionLayers(nn.ModuleDict):
    """Every owner's PALs, keyed by owner; `active` is the owner the encoder's layers add."""

    def __init__(self, config: BertConfig, adapter: Adapter) -> None:
        width = adapter.width(config.hidden_size)
        super().__init__({"+".join(group): ProjectedAttention(config, width, adapter.heads)
                          for group in adapter.groups})
        self.active: str | None = None


class _LayerPal:
    """What a BertLayer calls as its `parallel` branch: layer `index`'s PAL of the active owner. A plain object,
    not a module: the PALs' parameters are registered once, under the encoder's `pals`."""

    def __init__(self, pals: ProjectedAttentionLayers, index: int) -> None:
        self.pals, self.index = pals, index

    def __call__(self, hidden: torch.Tensor, mask, first_token_only: bool) -> torch.Tensor:
        return self.pals[self.pals.active](self.index, hidden, mask, first_token_only)


# ---------------------------------------------------------------------------------------------
# What belongs to which adapter


def adapter_parameters(encoder: nn.Module, plan: SharingPlan) -> dict[str, list[nn.Parameter]]:
    """Owner -> its adapter's parameters (empty without an adapter)."""
    adapter = plan.adapter
    if adapter is None:
        return {}
    owners = ["+".join(group) for group in adapter.groups]
    if adapter.kind == "pals":
        return {owner: list(encoder.pals[owner].parameters()) for owner in owners}
    found: dict[str, list[nn.Parameter]] = {owner: [] for owner in owners}
    for name, param in encoder.named_parameters():
        if is_lora_parameter(name):
            found[_lora_owner(name)].append(param)
    return found


def _lora_owner(name: str) -> str:
    """`copies.shared.encoder.layer.0.attention.self.query.lora_A.quora+sts.weight` -> `quora+sts`."""
    return name.split(".lora_", 1)[1].split(".")[1]


def is_adapter_parameter(name: str) -> bool:
    """Whether a BranchedEncoder parameter name belongs to an adapter (LoRA or PALs)."""
    return is_lora_parameter(name) or name.startswith("pals.")

