"""`mtbert export` for a task with an adapter (mtbert/model/adapters.py): its LoRA adapter as a peft adapter
folder beside the base encoder in Hugging Face format, or with --merge folded into a plain encoder.

    DIR/adapter_config.json, adapter_model.safetensors     the task's LoRA adapter, as peft writes one
    DIR/base/config.json, model.safetensors, tokenizer     the task's branch without its adapter

    base = transformers.AutoModel.from_pretrained("DIR/base")
    model = peft.PeftModel.from_pretrained(base, "DIR")    # the task's encoder, as mtbert runs it

The adapter's keys are peft's own (`base_model.model.<module>.lora_A.weight`, the adapter name left out,
as `PeftModel.save_pretrained` writes them) and its target modules are listed by name, so peft puts each
update exactly where mtbert had it. PALs have no Hugging Face or peft form: such a task is refused with a
line saying so (its model is the mtbert folder itself).
"""

from __future__ import annotations

from pathlib import Path

import torch

from mtbert.errors import MtbertError
from mtbert.files import write_tensors_atomically
from mtbert.model.adapters import is_lora_parameter, lora_layers
from mtbert.model.bert import BertModel
from mtbert.model.multitask import MultiTaskModel

BASE_FOLDER = "base"
ADAPTER_WEIGHTS = "adapter_model.safetensors"


def plain_encoder(model: MultiTaskModel, task: str, merge: bool) -> BertModel | None:
    """`task`'s branch as a plain BertModel: without its adapter, or with merge its LoRA folded into the weights
    (W + alpha/r B A); None when the task has no adapter."""
    adapter = model.config.sharing.adapter
    if adapter is None:
        if merge:
            raise MtbertError(f"--merge folds a task's LoRA adapter into its encoder, but this model's plan has no "
                              f"adapter ({model.config.sharing.describe()}); export without --merge")
        return None
    if adapter.kind == "pals":
        raise MtbertError(f"task {task!r} runs through projected attention layers (PALs), which neither transformers "
                          f"nor peft implement, so it has no Hugging Face form; its model is the mtbert folder "
                          f"itself (mtbert evaluate / predict read it)")
    branch = model.encoder_for(task)
    owner = model.config.sharing.adapter_owner(task)
    weights = {key: value.detach().clone() for key, value in branch.state_dict().items()
               if not is_lora_parameter(key)}
    if merge:
        with torch.no_grad():
            for name, layer in _adapted(branch, owner):
                weights[f"{name}.weight"] += layer.get_delta_weight(owner).to(weights[f"{name}.weight"].dtype)
    plain = BertModel(branch.config)
    plain.load_state_dict(weights)
    return plain.eval()


def write_adapter(model: MultiTaskModel, task: str, folder: Path, base: Path, with_head: bool) -> None:
    """adapter_config.json and adapter_model.safetensors of `task`'s LoRA into `folder`, for the base written
    into `base` (a BertModel, or with_head a BertForSequenceClassification, whose encoder sits under `bert.`)."""
    from peft import LoraConfig

    adapter, owner = model.config.sharing.adapter, model.config.sharing.adapter_owner(task)
    prefix = "base_model.model." + ("bert." if with_head else "")
    tensors, targets = {}, []
    for name, layer in _adapted(model.encoder_for(task), owner):
        targets.append(name)
        for part in ("lora_A", "lora_B"):
            weight = getattr(layer, part)[owner].weight
            tensors[f"{prefix}{name}.{part}.weight"] = weight.detach().cpu().contiguous()
    write_tensors_atomically(folder / ADAPTER_WEIGHTS, tensors, metadata={"format": "pt"})
    config = LoraConfig(r=adapter.r, lora_alpha=adapter.alpha, lora_dropout=adapter.dropout, bias="none",
                        target_modules=targets, base_model_name_or_path=str(base), inference_mode=True)
    config.save_pretrained(str(folder))


def _adapted(branch: BertModel, owner: str):
    """(module name inside the branch, LoRA layer) for each layer that carries `owner`'s adapter."""
    names = {id(module): name for name, module in branch.named_modules()}
    return [(names[id(layer)], layer) for layer in lora_layers(branch) if owner in layer.lora_A]
