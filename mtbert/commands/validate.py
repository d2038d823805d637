"""`mtbert validate`: resolve a recipe and read every split of its data, without training."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

from mtbert.config import Recipe, encoder_layer_count, sharing_spec
from mtbert.data.loading import load_tokenizer
from mtbert.data.reading import read_split, split_path
from mtbert.errors import MtbertError
from mtbert.model.plan import resolve_plan
from mtbert.tasks import SPLITS, resolve_tasks


def is_local_path(name: str) -> bool:
    """A path, not a hub name: hub names are `name` or `owner/name`, never absolute, relative-dotted or deeper."""
    return name.startswith(("/", ".", "~")) or name.count("/") > 1 or "\\" in name


def validate_recipe(recipe: Recipe) -> str:
    """A summary of what the recipe will train on; raises MtbertError on the first problem."""
    tasks = resolve_tasks(recipe)
    init = recipe.model.init
    if init != "random" and is_local_path(init) and not Path(init).expanduser().exists():
        raise MtbertError(f"model.init: folder {init} not found")
    tokenizer = load_tokenizer(recipe.model.tokenizer or init)
    lines = [f"recipe {recipe.name}: {len(tasks)} task(s), data_dir {recipe.data_dir}, model {init}, "
             f"tokenizer {type(tokenizer).__name__} ({len(tokenizer)} tokens)"]
    for name, task in tasks.items():
        lines.append(f"- {name}: {task.kind}" + (f" ({task.num_labels} labels)" if task.kind != "regression" else "")
                     + f", {'pair' if task.is_pair else 'single sentence'}, main score {'+'.join(task.main_metric)}"
                     + (f", prompt {task.prompt.question!r}" if task.prompt else ""))
        for split in SPLITS:
            path = split_path(task, split, recipe.data_dir)
            if split == "test" and (path is None or not path.exists()):
                continue
            data = read_split(task, split, recipe.data_dir)
            detail = f"{len(data.dataset):,} examples from {data.source}"
            if data.labelled and task.kind != "regression":
                counts = Counter(data.dataset["label"])
                detail += ", labels " + " ".join(f"{k}:{counts[k]}" for k in sorted(counts))
            elif not data.labelled:
                detail += ", unlabelled"
            lines.append(f"    {split}: {detail}")
            if data.skip_report():
                lines.append(f"    note: {data.skip_report()}")
    layers = encoder_layer_count(recipe.model)
    if layers is not None:  # load_recipe already checked the plan against this count
        lines.append("sharing: " + resolve_plan(sharing_spec(recipe.model.sharing), layers, list(tasks)).describe())
    lines.append("ok")
    return "\n".join(lines)
