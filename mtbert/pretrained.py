"""Pretrained encoders: Hugging Face BERT weights (a local folder or a hub name) read into BertModel.

Nothing here ever unpickles: safetensors files, or `.bin` files read with torch.load(weights_only=True)
(full unpickling only where model.allow_pickle says the user trusts the file).
"""

from __future__ import annotations

import json
import os
import pickle
import re
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

from mtbert.errors import MtbertError, first_line
from mtbert.folders import looks_local, refuse_custom_code, require_folder, unreadable
from mtbert.model.bert import BertConfig, BertModel

CONFIG_FILE = "config.json"
SAFETENSORS_FILE = "model.safetensors"
PICKLE_FILE = "pytorch_model.bin"

# Task-model checkpoints (BertForSequenceClassification, BertForPreTraining, ...) nest the encoder.
_WRAPPER_PREFIXES = ("bert.", "model.")
_ENCODER_PREFIXES = ("embeddings.", "encoder.", "pooler.")
# Index buffers that older transformers versions saved next to the weights.
_BUFFER_SUFFIXES = (".position_ids", ".token_type_ids")
_POOLER_PREFIX = "pooler."
_MAX_KEYS_LISTED = 5


def convert_hf_state_dict(
    state_dict: Mapping[str, torch.Tensor],
) -> dict[str, torch.Tensor]:
    """Map a Hugging Face BERT-family state dict onto BertModel's keys; heads are dropped."""
    converted = {}
    for key, tensor in state_dict.items():
        key = _strip_wrapper_prefix(key)
        key = key.replace("LayerNorm.gamma", "LayerNorm.weight")
        key = key.replace("LayerNorm.beta", "LayerNorm.bias")
        if key.startswith(_ENCODER_PREFIXES) and not key.endswith(_BUFFER_SUFFIXES):
            converted[key] = tensor
    return converted


def _strip_wrapper_prefix(key: str) -> str:
    for prefix in _WRAPPER_PREFIXES:
        if key.startswith(prefix):
            return key[len(prefix) :]
    return key


def load_encoder(name_or_path: str | os.PathLike[str], add_pooling_layer: bool = True,
                 allow_pickle: bool = False) -> BertModel:
    """Load a BERT encoder from a local Hugging Face folder or, failing that, a hub model name.

    The model comes back in eval mode, as Hugging Face's from_pretrained returns it. A `.bin` file that
    needs full unpickling is refused unless allow_pickle (the user trusts the file: it can run code).
    """
    folder = Path(name_or_path)
    if looks_local(folder):
        config_path, weights_path = _local_files(folder)
    else:
        config_path, weights_path = _hub_files(str(name_or_path))
    config = _read_config(config_path)
    state_dict = convert_hf_state_dict(_read_weights(weights_path, allow_pickle))
    model = BertModel(config, add_pooling_layer=add_pooling_layer)
    _load_checked(model, state_dict, source=weights_path)
    return model.eval()


def _local_files(folder: Path) -> tuple[Path, Path]:
    require_folder(folder, "model folder")
    refuse_custom_code(folder)
    for path in (folder / CONFIG_FILE, folder / SAFETENSORS_FILE, folder / PICKLE_FILE):
        problem = unreadable(path)
        if problem:
            raise MtbertError(f"{path}: is {problem}")
    config_path = folder / CONFIG_FILE
    if not config_path.is_file():
        raise MtbertError(f"{folder}: model folder has no {CONFIG_FILE}")
    for name in (SAFETENSORS_FILE, PICKLE_FILE):
        if (folder / name).is_file():
            return config_path, folder / name
    raise MtbertError(f"{folder}: model folder has neither {SAFETENSORS_FILE} nor {PICKLE_FILE}")


def _hub_files(name: str) -> tuple[Path, Path]:
    # Imported here because only hub names need it; local folders load without it.
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import EntryNotFoundError

    def fetch(filename: str) -> Path:
        return Path(hf_hub_download(repo_id=name, filename=filename))

    # Every hub failure (offline, unknown repo, invalid name, HTTP error) means the same thing
    # to the user, so all of them become one readable error.
    try:
        config_path = fetch(CONFIG_FILE)
        try:
            weights_path = fetch(SAFETENSORS_FILE)
        except EntryNotFoundError:
            # Older repos only ship the pickle file; offline, the cache may hold only that one.
            weights_path = fetch(PICKLE_FILE)
    except Exception as error:
        raise MtbertError(
            f"model {name!r} is neither a local folder nor reachable on the Hugging Face hub "
            f"({type(error).__name__}: {first_line(error)})"
        ) from error
    return config_path, weights_path


def _read_config(path: Path) -> BertConfig:
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise MtbertError(f"{path}: cannot read model config: {error}") from error
    if not isinstance(raw, dict):
        raise MtbertError(f"{path}: model config must be a JSON object")
    if raw.get("auto_map"):  # also for hub downloads: the config, not the folder, asks for the code
        raise MtbertError(f"{path}: asks for custom code (auto_map); mtbert never runs code from a model folder")
    try:
        return BertConfig.from_dict(raw)
    except ValueError as error:
        raise MtbertError(f"{path}: {error}") from error


def _read_weights(path: Path, allow_pickle: bool = False) -> Mapping[str, torch.Tensor]:
    if path.name.endswith(".safetensors"):
        state_dict = _read_safetensors(path)
    else:
        state_dict = _read_pickle_checkpoint(path, allow_pickle)
    if not isinstance(state_dict, Mapping) or not all(isinstance(value, torch.Tensor) for value in state_dict.values()):
        raise MtbertError(f"{path}: expected a flat mapping of parameter names to tensors")
    return state_dict


def _read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    try:
        return load_file(path, device="cpu")
    except (SafetensorError, OSError) as error:
        raise MtbertError(f"{path}: cannot read safetensors weights: {error}") from error


def _read_pickle_checkpoint(path: Path, allow_pickle: bool = False) -> Any:
    # weights_only refuses to run code hidden in the pickle; a file that needs more is rejected
    # rather than trusted, since a downloaded checkpoint can execute anything when unpickled.
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        needed_global = re.search(r"GLOBAL (\S+)", str(error))
        if needed_global and allow_pickle:
            warnings.warn(f"{path}: fully unpickled because model.allow_pickle is true", stacklevel=3)
            try:
                return torch.load(path, map_location="cpu", weights_only=False)
            except Exception as unpickle_error:  # noqa: BLE001 - whatever the pickle raises, the file is unusable
                raise MtbertError(f"{path}: cannot be unpickled: {first_line(unpickle_error)}") from None
        if needed_global:
            raise MtbertError(
                f"{path}: this checkpoint needs full unpickling (it stores "
                f"{needed_global.group(1)}), which can run arbitrary code, and is refused; "
                f"re-save it as {SAFETENSORS_FILE} or as a plain state dict of tensors, or, "
                f"for a file you trust, set model.allow_pickle=true"
            ) from error
        raise MtbertError(
            f"{path}: cannot be read as a plain PyTorch state dict; the file is corrupt or "
            f"uses pickle features that safe loading refuses"
        ) from error
    except (RuntimeError, OSError, EOFError) as error:
        raise MtbertError(f"{path}: cannot read PyTorch weights: {error}") from error


def _load_checked(model: BertModel, state_dict: dict[str, torch.Tensor], source: Path) -> None:
    expected = model.state_dict()
    if model.pooler is None:
        # The caller asked for no pooler, so the checkpoint's pooler weights are simply unused.
        state_dict = {k: v for k, v in state_dict.items() if not k.startswith(_POOLER_PREFIX)}
    missing = sorted(expected.keys() - state_dict.keys())
    unexpected = sorted(state_dict.keys() - expected.keys())
    pooler_missing = [key for key in missing if key.startswith(_POOLER_PREFIX)]
    if pooler_missing and len(pooler_missing) == len(missing):
        warnings.warn(
            f"{source}: checkpoint has no pooler weights; the pooler stays randomly initialised",
            stacklevel=3,
        )
        missing = []
    if missing or unexpected:
        raise MtbertError(
            f"{source}: checkpoint does not match the BERT encoder: " + describe_key_problems(missing, unexpected)
        )
    for key, tensor in state_dict.items():
        if tensor.shape != expected[key].shape:
            raise MtbertError(
                f"{source}: {key} has shape {tuple(tensor.shape)} in the checkpoint but "
                f"{tuple(expected[key].shape)} in the model built from its config"
            )
    # Every key is accounted for above; strict=False only lets an absent pooler keep its init.
    model.load_state_dict(state_dict, strict=False)


def describe_key_problems(missing: list[str], unexpected: list[str]) -> str:
    parts = []
    for label, keys in (("missing", missing), ("unexpected", unexpected)):
        if keys:
            shown = ", ".join(keys[:_MAX_KEYS_LISTED])
            more = f" and {len(keys) - _MAX_KEYS_LISTED} more" if len(keys) > _MAX_KEYS_LISTED else ""
            parts.append(f"{len(keys)} {label} key(s): {shown}{more}")
    return "; ".join(parts)
