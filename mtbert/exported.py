"""Reading and writing model weights on disk: Hugging Face encoder weights, and the exported model.

Nothing here ever unpickles: safetensors files, or `.bin` files read with torch.load(weights_only=True).
"""

from __future__ import annotations

import json
import os
import pickle
import re
import shutil
import tempfile
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import yaml
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file

from mtbert.config import Recipe, parse_recipe
from mtbert.errors import MtbertError
from mtbert.files import (
    WriteError,
    cannot_write,
    json_text,
    make_folder,
    write_tensors_atomically,
    write_text_atomically,
)
from mtbert.folders import looks_local, refuse_custom_code, require_folder, unreadable
from mtbert.model.bert import BertConfig, BertModel
from mtbert.model.multitask import MultiTaskConfig, MultiTaskModel
from mtbert.model.sharing import upgrade_unbranched_state_dict
from mtbert.tasks import Task, resolve_tasks

# ======================================================================================
# Encoder weights: Hugging Face format
# ======================================================================================

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
            f"({type(error).__name__}: {_first_line(error)})"
        ) from error
    return config_path, weights_path


def _first_line(error: BaseException) -> str:
    lines = str(error).strip().splitlines()
    return lines[0] if lines else ""


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
                raise MtbertError(f"{path}: cannot be unpickled: {_first_line(unpickle_error)}") from None
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
            f"{source}: checkpoint does not match the BERT encoder: " + _describe_key_problems(missing, unexpected)
        )
    for key, tensor in state_dict.items():
        if tensor.shape != expected[key].shape:
            raise MtbertError(
                f"{source}: {key} has shape {tuple(tensor.shape)} in the checkpoint but "
                f"{tuple(expected[key].shape)} in the model built from its config"
            )
    # Every key is accounted for above; strict=False only lets an absent pooler keep its init.
    model.load_state_dict(state_dict, strict=False)


def _describe_key_problems(missing: list[str], unexpected: list[str]) -> str:
    parts = []
    for label, keys in (("missing", missing), ("unexpected", unexpected)):
        if keys:
            shown = ", ".join(keys[:_MAX_KEYS_LISTED])
            more = f" and {len(keys) - _MAX_KEYS_LISTED} more" if len(keys) > _MAX_KEYS_LISTED else ""
            parts.append(f"{len(keys)} {label} key(s): {shown}{more}")
    return "; ".join(parts)


def save_encoder(model: BertModel, folder: str | os.PathLike[str]) -> None:
    """Write config.json and model.safetensors that both load_encoder and transformers can read."""
    folder = Path(folder)
    make_folder(folder)
    tensors = {key: value.detach().cpu().contiguous() for key, value in model.state_dict().items()}
    # Weights first, so a freshly written folder never has a config.json without its weights.
    write_tensors_atomically(folder / SAFETENSORS_FILE, tensors, metadata={"format": "pt"})
    write_text_atomically(folder / CONFIG_FILE, json.dumps(model.config.to_dict(), indent=2, sort_keys=True) + "\n")


# ---------------------------------------------------------------------------------------------
# The exported multi-task model: what `mtbert evaluate` and `mtbert predict` read
#
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
    from mtbert import __version__

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
    from mtbert.data.loading import check_tokenizer_fits, load_tokenizer

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
        raise MtbertError(f"{weights}: unreadable safetensors file ({_first_line(e)})") from None
    if "mtbert_config" not in metadata:
        raise MtbertError(f"{weights}: not written by mtbert train (no model configuration in its metadata); "
                          f"to load a Hugging Face encoder, use mtbert.BertModel.from_pretrained")
    stored_config = _stored_json(weights, metadata, "mtbert_config", "model configuration")
    config = _stored_model_config(weights, stored_config)
    try:
        model = MultiTaskModel(config)
    except (KeyError, TypeError, ValueError) as error:
        raise MtbertError(f"{weights}: the stored model configuration cannot be built ({_first_line(error)})") from None
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
        raise MtbertError(f"{where} is damaged: {_first_line(error)}") from None


def _check_weights_fit(model: MultiTaskModel, tensors: dict[str, torch.Tensor], weights: Path) -> None:
    expected = model.state_dict()
    missing = sorted(expected.keys() - tensors.keys())
    unexpected = sorted(tensors.keys() - expected.keys())
    if missing or unexpected:
        raise MtbertError(f"{weights}: weights do not match the stored configuration: "
                          f"{_describe_key_problems(missing, unexpected)}")
    for key, tensor in tensors.items():
        if tensor.shape != expected[key].shape:
            raise MtbertError(f"{weights}: {key} has shape {tuple(tensor.shape)}, but the stored configuration "
                              f"makes it {tuple(expected[key].shape)}")


def _stored_recipe(weights: Path, metadata: dict, data_dir: str | None) -> Recipe:
    try:
        raw_recipe = yaml.safe_load(metadata.get("recipe", "")) or {}
    except yaml.YAMLError as error:
        raise MtbertError(f"{weights}: the stored recipe (metadata 'recipe') is not YAML: "
                          f"{_first_line(error)}") from None
    if not isinstance(raw_recipe, dict):
        raise MtbertError(f"{weights}: the stored recipe (metadata 'recipe') is not a mapping of recipe keys")
    env_dir = os.environ.get("MTBERT_DATA_DIR")
    if data_dir or env_dir:
        raw_recipe["data_dir"] = data_dir or env_dir
    try:
        return parse_recipe(raw_recipe)
    except MtbertError as error:
        raise MtbertError(f"{weights}: the stored recipe: {error}") from None


# ---------------------------------------------------------------------------------------------
# Export to Hugging Face format
#
# `mtbert export` turns one task of an exported multi-task model into a folder that plain
# transformers loads: the encoder alone (AutoModel -> BertModel), or with --with-head a
# BertForSequenceClassification whose logits give mtbert's predictions. The folder is staged beside
# its target and renamed into place, so a failed export never leaves half a folder behind.

EXPORT_MARKER = ".mtbert-export.json"
_SEQUENCE_CLASSIFICATION = "BertForSequenceClassification"


def encoder_for(model: MultiTaskModel, task: str) -> BertModel:
    """The encoder `task` runs on: its branch of the sharing plan, relational layers included."""
    return model.encoder_for(task)


def export_hf(ckpt: str | os.PathLike[str], task: str, to: str | os.PathLike[str], with_head: bool = False,
              push_to_hub: str | None = None) -> Path:
    """Write `task`'s encoder (and with_head, its classifier) from an mtbert model as a Hugging Face folder."""
    loaded = load_model(ckpt)
    model = loaded.model
    if task not in model.config.tasks:
        raise MtbertError(f"task {task!r} is not in this checkpoint ({ckpt}); its tasks: "
                          f"{', '.join(model.config.tasks)}")
    target = Path(to)
    _check_export_target(target)
    encoder = encoder_for(model, task)
    if with_head:
        label_names = loaded.tasks[task].label_names if task in loaded.tasks else None
        config, tensors = _sequence_classification(model, task, encoder, label_names)
    marker = {"source": str(Path(ckpt).resolve()), "task": task, "with_head": with_head}

    def write(folder: Path) -> None:
        if with_head:
            write_tensors_atomically(folder / SAFETENSORS_FILE, tensors, metadata={"format": "pt"})
            write_text_atomically(folder / CONFIG_FILE, json.dumps(config, indent=2, sort_keys=True) + "\n")
        else:
            save_encoder(encoder, folder)
        loaded.tokenizer.save_pretrained(str(folder))
        write_text_atomically(folder / EXPORT_MARKER, json.dumps(marker, indent=2) + "\n")

    previous = target.is_dir() and (target / EXPORT_MARKER).is_file()
    try:
        _write_folder_atomically(target, write)
    except (OSError, WriteError) as error:  # named as the export, not as the staging folder beside it
        reason = cannot_write(target, error).reason
        raise MtbertError(f"{target}: cannot write the export ({reason}); "
                          + ("the previous export is as it was" if previous else "nothing was written")) from None
    if push_to_hub:
        _push_to_hub(target, push_to_hub)
    return target


def _check_export_target(target: Path) -> None:
    """A new or empty folder, or a previous export (which holds EXPORT_MARKER); else one line saying why not."""
    problem = unreadable(target)
    if problem:
        raise MtbertError(f"{target}: is {problem}")
    if target.exists() and not target.is_dir():
        raise MtbertError(f"{target}: exists and is not a folder")
    for parent in target.parents:
        if parent.exists():
            if not parent.is_dir():
                raise MtbertError(f"{target}: {parent} is not a folder")
            break
    _recover_interrupted_export(target)
    if target.is_dir() and any(target.iterdir()) and not (target / EXPORT_MARKER).is_file():
        raise MtbertError(f"{target}: folder is not empty and was not written by mtbert export; "
                          f"choose a new or empty folder")


def _sequence_classification(model: MultiTaskModel, task: str, encoder: BertModel,
                             label_names: list[str] | None) -> tuple[dict, dict[str, torch.Tensor]]:
    """config.json and weights of a BertForSequenceClassification computing the task's head."""
    spec = model.config.tasks[task]
    problems = []
    if spec.encoding == "siamese":
        problems.append("its siamese encoding (two sentences encoded apart) has no single-sequence form")
    if spec.pooler != "cls":
        problems.append(f"its pooler is {spec.pooler!r}, but BertForSequenceClassification pools with "
                        f"BERT's pooler on [CLS] (pooler 'cls')")
    if spec.head.type != "linear" or task not in model.heads:
        problems.append(f"its head is {spec.head.type if task in model.heads else 'a scaled cosine'}, "
                        f"but BertForSequenceClassification has one linear layer (head type 'linear')")
    if problems:
        raise MtbertError(f"task {task!r} cannot be exported --with-head as {_SEQUENCE_CLASSIFICATION}: "
                          f"{'; '.join(problems)}. Export the encoder alone without --with-head")
    linear = model.heads[task][-1]
    weight, bias = linear.weight.detach().cpu(), linear.bias.detach().cpu()
    if spec.kind == "binary":
        # One logit z -> logits [0, z]: softmax gives [1 - sigmoid(z), sigmoid(z)], argmax is z > 0.
        weight = torch.cat([torch.zeros_like(weight), weight])
        bias = torch.cat([torch.zeros_like(bias), bias])
    num_labels = weight.shape[0]
    names = list(label_names) if label_names and len(label_names) == num_labels else None
    id2label = {str(i): names[i] if names else f"LABEL_{i}" for i in range(num_labels)}
    config = {**encoder.config.to_dict(), "architectures": [_SEQUENCE_CLASSIFICATION],
              "num_labels": num_labels, "id2label": id2label,
              "label2id": {label: int(i) for i, label in id2label.items()},
              "problem_type": "regression" if spec.kind == "regression" else "single_label_classification",
              "classifier_dropout": spec.head.dropout}
    tensors = {f"bert.{key}": value.detach().cpu().contiguous() for key, value in encoder.state_dict().items()}
    tensors["classifier.weight"] = weight.contiguous()
    tensors["classifier.bias"] = bias.contiguous()
    return config, tensors


def _staging_folders(target: Path) -> list[Path]:
    """Folders _write_folder_atomically makes beside `target` (mkdtemp's 8 random characters)."""
    pattern = re.compile(rf"^\.{re.escape(target.name)}\.[a-z0-9_]{{8}}\.(tmp|old)$")
    if not target.parent.is_dir():
        return []
    return sorted(p for p in target.parent.iterdir()
                  if pattern.match(p.name) and p.is_dir() and not p.is_symlink())


def _recover_interrupted_export(target: Path) -> None:
    """Undo what an export killed half-way left: its staging folder goes; a previous export it had moved
    aside (`.old`) and not yet replaced is put back where it was."""
    for leftover in _staging_folders(target):
        absent = not target.exists() or (target.is_dir() and not any(target.iterdir()))
        if leftover.name.endswith(".old") and absent and (leftover / EXPORT_MARKER).is_file():
            if target.is_dir():
                target.rmdir()
            os.replace(leftover, target)
        else:
            shutil.rmtree(leftover, ignore_errors=True)


def _write_folder_atomically(target: Path, write: Callable[[Path], object]) -> None:
    """Fill a staging folder beside target, then rename it into place (replacing a previous export)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp"))
    try:
        write(staging)
        os.chmod(staging, 0o755)  # mkdtemp makes owner-only folders
        if target.is_dir() and any(target.iterdir()):
            old = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}.", suffix=".old"))
            os.replace(target, old)  # old is empty, so the rename may replace it
            try:
                os.replace(staging, target)
            except BaseException:
                os.replace(old, target)
                raise
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(staging, target)  # target is absent or an empty folder
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def _push_to_hub(folder: Path, repo: str) -> None:
    from huggingface_hub import HfApi

    try:
        HfApi().upload_folder(repo_id=repo, folder_path=str(folder), ignore_patterns=[EXPORT_MARKER])
    except Exception as error:  # noqa: BLE001 - network, auth and repo errors all mean the same to the user
        raise MtbertError(f"{folder} was written, but pushing it to the hub repo {repo!r} failed "
                          f"({type(error).__name__}: {_first_line(error)})") from error
