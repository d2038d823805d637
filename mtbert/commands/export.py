"""`mtbert export`: one task of an exported model as a Hugging Face folder, optionally pushed to the hub.

The encoder alone (AutoModel -> BertModel), or with --with-head a BertForSequenceClassification whose
logits give mtbert's predictions. A task with a LoRA adapter: a peft adapter folder with the base beside it,
or with --merge the adapter folded in (commands/export_adapters.py). The folder is staged beside its target
and renamed into place, so a failed export never leaves half a folder behind.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

import torch

from mtbert.commands import export_adapters
from mtbert.errors import MtbertError, first_line
from mtbert.exported import load_model
from mtbert.files import WriteError, cannot_write, make_folder, write_tensors_atomically, write_text_atomically
from mtbert.folders import unreadable
from mtbert.model.bert import BertModel
from mtbert.model.multitask import MultiTaskModel
from mtbert.pretrained import CONFIG_FILE, SAFETENSORS_FILE


def save_encoder(model: BertModel, folder: str | os.PathLike[str]) -> None:
    """Write config.json and model.safetensors that both load_encoder and transformers can read."""
    folder = Path(folder)
    make_folder(folder)
    tensors = {key: value.detach().cpu().contiguous() for key, value in model.state_dict().items()}
    # Weights first, so a freshly written folder never has a config.json without its weights.
    write_tensors_atomically(folder / SAFETENSORS_FILE, tensors, metadata={"format": "pt"})
    write_text_atomically(folder / CONFIG_FILE, json.dumps(model.config.to_dict(), indent=2, sort_keys=True) + "\n")


EXPORT_MARKER = ".mtbert-export.json"
_SEQUENCE_CLASSIFICATION = "BertForSequenceClassification"


def encoder_for(model: MultiTaskModel, task: str) -> BertModel:
    """The encoder `task` runs on: its branch of the sharing plan, relational layers included."""
    return model.encoder_for(task)


def export_hf(ckpt: str | os.PathLike[str], task: str, to: str | os.PathLike[str], with_head: bool = False,
              push_to_hub: str | None = None, merge: bool = False) -> Path:
    """Write `task`'s encoder (and with_head, its classifier) from an mtbert model as a Hugging Face folder; a task
    with a LoRA adapter as a peft adapter folder beside its base in `base/`, or with merge folded in
    (commands/export_adapters.py)."""
    loaded = load_model(ckpt)
    model = loaded.model
    if task not in model.config.tasks:
        raise MtbertError(f"task {task!r} is not in this checkpoint ({ckpt}); its tasks: "
                          f"{', '.join(model.config.tasks)}")
    target = Path(to)
    _check_export_target(target)
    plain = export_adapters.plain_encoder(model, task, merge)
    encoder = plain if plain is not None else encoder_for(model, task)
    if with_head:
        label_names = loaded.tasks[task].label_names if task in loaded.tasks else None
        config, tensors = _sequence_classification(model, task, encoder, label_names)
    marker = {"source": str(Path(ckpt).resolve()), "task": task, "with_head": with_head, "merge": merge}
    beside = plain is not None and not merge  # the adapter in the folder, its base in a sub-folder

    def write(folder: Path) -> None:
        base = folder / export_adapters.BASE_FOLDER if beside else folder
        if with_head:
            make_folder(base)
            write_tensors_atomically(base / SAFETENSORS_FILE, tensors, metadata={"format": "pt"})
            write_text_atomically(base / CONFIG_FILE, json.dumps(config, indent=2, sort_keys=True) + "\n")
        else:
            save_encoder(encoder, base)
        loaded.tokenizer.save_pretrained(str(base))
        if beside:
            export_adapters.write_adapter(model, task, folder, target / export_adapters.BASE_FOLDER, with_head)
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
                          f"({type(error).__name__}: {first_line(error)})") from error
