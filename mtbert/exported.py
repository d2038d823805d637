"""The exported model: the folder `mtbert train` writes and `mtbert evaluate`, `predict`, `report`, `submit`
and `export` read (not the resumable checkpoints, mtbert/training/checkpoints.py).

Nothing here ever unpickles, and nothing in the folder ever runs.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import yaml
from safetensors import safe_open

from mtbert import __version__
from mtbert.config import Recipe, parse_recipe
from mtbert.data.loading import check_tokenizer_fits, load_tokenizer
from mtbert.errors import MtbertError, first_line
from mtbert.files import cannot_write, json_text, make_folder, write_tensors_atomically, write_text_atomically
from mtbert.folders import require_folder, unreadable
from mtbert.model.bert import BertConfig
from mtbert.model.multitask import MultiTaskConfig, MultiTaskModel
from mtbert.model.sharing import upgrade_unbranched_state_dict
from mtbert.pretrained import SAFETENSORS_FILE, describe_key_problems
from mtbert.tasks import Task, resolve_tasks

# model.safetensors carries everything needed to rebuild and use the model in its metadata (model
# config, resolved recipe, dev metrics), so the one file that matters is replaced in one atomic
# rename. mtbert.json, recipe.yaml and metrics.json beside it are readable copies.

MODEL_CONFIG_FILE = "mtbert.json"
RECIPE_FILE = "recipe.yaml"
METRICS_FILE = "metrics.json"


@dataclass
class LoadedModel:
    model: MultiTaskModel
    tokenizer: Any
    recipe: Recipe
    tasks: dict[str, Task]
    metrics: dict


def export_model(model: MultiTaskModel, tokenizer, folder: str | os.PathLike[str], *, recipe: str,
                 metrics: dict, state_dict: Mapping[str, torch.Tensor] | None = None) -> None:
    """Write the model, its tokenizer, the resolved recipe and its dev metrics into `folder`.

    state_dict: the weights to write, when `model` does not hold them all (DeepSpeed ZeRO-3 gathers them).
    A write that fails is an MtbertError naming the file; the files it did not reach are the previous ones."""
    folder = Path(folder)
    make_folder(folder)
    _remove_interrupted_tokenizer_saves(folder)
    config_json = json.dumps(model.config.to_dict(), indent=2)
    metrics_json = json_text(metrics, indent=2)
    weights = model.state_dict() if state_dict is None else state_dict
    tensors = {key: value.detach().cpu().contiguous() for key, value in weights.items()}
    metadata = {"format": "pt", "mtbert_version": __version__, "mtbert_config": config_json,
                "recipe": recipe, "metrics": metrics_json}
    try:
        with tempfile.TemporaryDirectory(dir=folder, prefix=_TOKENIZER_STAGING) as staging:
            tokenizer.save_pretrained(staging)
            for name in os.listdir(staging):
                os.replace(os.path.join(staging, name), folder / name)
    except OSError as error:
        raise cannot_write(folder / "tokenizer.json", error) from None
    write_tensors_atomically(folder / SAFETENSORS_FILE, tensors, metadata=metadata)
    write_text_atomically(folder / MODEL_CONFIG_FILE, config_json + "\n")
    write_text_atomically(folder / RECIPE_FILE, recipe)
    write_text_atomically(folder / METRICS_FILE, metrics_json + "\n")


_TOKENIZER_STAGING = ".tokenizer-"


def _remove_interrupted_tokenizer_saves(folder: Path) -> None:
    """The staging folders an export killed half-way left behind."""
    for leftover in folder.glob(f"{_TOKENIZER_STAGING}*"):
        if leftover.is_dir() and not leftover.is_symlink():
            shutil.rmtree(leftover, ignore_errors=True)


def load_model(folder: str | os.PathLike[str], data_dir: str | None = None) -> LoadedModel:
    """Rebuild an exported model. data_dir overrides the stored recipe's (then MTBERT_DATA_DIR does).

    Everything is checked before it is used: a damaged file, a stored configuration or recipe that does not
    parse or does not fit the weights, a tokenizer that does not fit the model is an MtbertError naming the
    file; the folder's code (if any) never runs."""
    folder = Path(folder)
    require_folder(folder, "checkpoint folder")
    weights = folder / SAFETENSORS_FILE
    problem = unreadable(weights)
    if problem:
        raise MtbertError(f"{weights}: is {problem}")
    if not weights.is_file():
        raise MtbertError(f"{folder}: not a trained mtbert model: {SAFETENSORS_FILE} is missing "
                          f"(mtbert train writes it when it first evaluates)")
    try:
        with safe_open(str(weights), framework="pt") as f:
            metadata = f.metadata() or {}
            tensors = {key: f.get_tensor(key) for key in f.keys()}
    except Exception as e:  # noqa: BLE001 - safetensors raises its own error types for bad files
        raise MtbertError(f"{weights}: unreadable safetensors file ({first_line(e)})") from None
    if "mtbert_config" not in metadata:
        raise MtbertError(f"{weights}: not written by mtbert train (no model configuration in its metadata); "
                          f"to load a Hugging Face encoder, use mtbert.load_encoder")
    stored_config = _stored_json(weights, metadata, "mtbert_config", "model configuration")
    config = _stored_model_config(weights, stored_config)
    try:
        model = MultiTaskModel(config)
    except (KeyError, TypeError, ValueError) as error:
        raise MtbertError(f"{weights}: the stored model configuration cannot be built ({first_line(error)})") from None
    if isinstance(stored_config.get("sharing", "shared"), str):  # saved before sharing plans: one plain encoder
        tensors = upgrade_unbranched_state_dict(tensors, config.sharing)
    _check_weights_fit(model, tensors, weights)
    model.load_state_dict(tensors)
    model.eval()
    recipe = _stored_recipe(weights, metadata, data_dir)
    metrics = _stored_json(weights, metadata, "metrics", "dev metrics") if "metrics" in metadata else {}
    if not any((folder / name).is_file() for name in ("tokenizer.json", "vocab.txt", "tokenizer_config.json")):
        raise MtbertError(f"{folder}: the tokenizer files are missing (tokenizer.json / vocab.txt)")
    tokenizer = load_tokenizer(str(folder))
    check_tokenizer_fits(tokenizer, config.encoder.vocab_size, str(folder))
    try:
        tasks = resolve_tasks(recipe)
    except MtbertError as error:
        raise MtbertError(f"{weights}: the stored recipe: {error}") from None
    return LoadedModel(model, tokenizer, recipe, tasks, metrics)


# What decides the shapes of an encoder's weights: a stored configuration must give each (a default would
# build a model of another size and fail later, naming a tensor instead of the missing key).
_ENCODER_SHAPE_KEYS = ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size",
                       "max_position_embeddings", "type_vocab_size")


def _stored_json(weights: Path, metadata: dict, key: str, what: str) -> Any:
    try:
        return json.loads(metadata[key])
    except (KeyError, TypeError, json.JSONDecodeError) as error:
        raise MtbertError(f"{weights}: the stored {what} (metadata {key!r}) does not parse as JSON ({error})") from None


def _stored_model_config(weights: Path, stored: Any) -> MultiTaskConfig:
    """The stored MultiTaskConfig, every problem named: a missing section or key, a wrong type, sizes that do
    not fit together."""
    where = f"{weights}: the stored model configuration"
    if not isinstance(stored, dict) or not isinstance(stored.get("encoder"), dict) \
            or not isinstance(stored.get("tasks"), dict):
        raise MtbertError(f"{where} needs an 'encoder' and a 'tasks' mapping")
    missing = [key for key in _ENCODER_SHAPE_KEYS if key not in stored["encoder"]]
    if missing:
        raise MtbertError(f"{where} lacks encoder.{', encoder.'.join(missing)}")
    try:
        BertConfig.from_dict(stored["encoder"])  # types and sizes (hidden_size divisible by num_attention_heads)
        return MultiTaskConfig.from_dict(stored)
    except (KeyError, TypeError, ValueError, AttributeError) as error:
        raise MtbertError(f"{where} is damaged: {first_line(error)}") from None


def _check_weights_fit(model: MultiTaskModel, tensors: dict[str, torch.Tensor], weights: Path) -> None:
    expected = model.state_dict()
    missing = sorted(expected.keys() - tensors.keys())
    unexpected = sorted(tensors.keys() - expected.keys())
    if missing or unexpected:
        raise MtbertError(f"{weights}: weights do not match the stored configuration: "
                          f"{describe_key_problems(missing, unexpected)}")
    for key, tensor in tensors.items():
        if tensor.shape != expected[key].shape:
            raise MtbertError(f"{weights}: {key} has shape {tuple(tensor.shape)}, but the stored configuration "
                              f"makes it {tuple(expected[key].shape)}")


def _stored_recipe(weights: Path, metadata: dict, data_dir: str | None) -> Recipe:
    try:
        raw_recipe = yaml.safe_load(metadata.get("recipe", "")) or {}
    except yaml.YAMLError as error:
        raise MtbertError(f"{weights}: the stored recipe (metadata 'recipe') is not YAML: "
                          f"{first_line(error)}") from None
    if not isinstance(raw_recipe, dict):
        raise MtbertError(f"{weights}: the stored recipe (metadata 'recipe') is not a mapping of recipe keys")
    env_dir = os.environ.get("MTBERT_DATA_DIR")
    if data_dir or env_dir:
        raw_recipe["data_dir"] = data_dir or env_dir
    try:
        return parse_recipe(raw_recipe)
    except MtbertError as error:
        raise MtbertError(f"{weights}: the stored recipe: {error}") from None
