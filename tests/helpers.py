"""Small recipes over data the tests write, shared by the train, checkpoint and CLI tests."""

from __future__ import annotations

import hashlib
import random
import struct
from pathlib import Path

import yaml

from conftest import sentence, write_cs224n


def learnable_sst(root: Path, n_train: int = 256, n_dev: int = 64) -> None:
    """sst files whose label is 4 when 'great' appears and 0 otherwise: learnable in a few dozen steps."""
    rng = random.Random(1)
    folder = root / "cs224n"
    for split, n in (("train", n_train), ("dev", n_dev)):
        rows = ["\tid\tsentence\tsentiment"]
        for i in range(n):
            positive = i % 2 == 0
            words = sentence(rng).replace("great", "fine").split()
            words.insert(rng.randrange(len(words) + 1), "great" if positive else "awful")
            rows.append(f"{i}\t{split}{i}\t{' '.join(words)}\t{4 if positive else 0}")
        (folder / f"ids-sst-{split}.csv").write_text("\n".join(rows) + "\n")


def write_recipe(tmp_path: Path, tokenizer_dir: Path, *, tasks: dict | None = None, train: dict | None = None,
                 **top) -> Path:
    data_dir = tmp_path / "data"
    if not (data_dir / "cs224n").exists():
        write_cs224n(data_dir)
        learnable_sst(data_dir)
    recipe = {
        "name": "test", "seed": 0, "data_dir": str(data_dir), "output_dir": str(tmp_path / "ckpt"),
        "model": {"init": "random", "tokenizer": str(tokenizer_dir), "max_length": 32,
                  "size": {"hidden_size": 32, "num_layers": 2, "num_heads": 2, "intermediate_size": 64}},
        "tasks": tasks if tasks is not None else {"sst": {}, "quora": {}, "sts": {"pair_encoding": "siamese"}},
        "train": {"epochs": 1, "batch_size": 16, "lr": 3.0e-3, "warmup_ratio": 0.0, "log_every": 5,
                  **(train or {})},
        **top,
    }
    path = tmp_path / "recipe.yaml"
    path.write_text("# mtbert train recipe.yaml\n" + yaml.safe_dump(recipe, sort_keys=False))
    return path


def png_size(path: Path) -> tuple[int, int]:
    """Width and height from a PNG's IHDR chunk, after checking the signature."""
    head = Path(path).read_bytes()[:24]
    assert head[:8] == b"\x89PNG\r\n\x1a\n", f"{path} is not a PNG"
    assert head[12:16] == b"IHDR"
    return struct.unpack(">II", head[16:24])


def objective_context(tmp_path: Path, tokenizer_dir: Path, overrides=(), **top):
    """What objectives are built from (objectives/base.py's ObjectiveContext), for the small test recipe: its
    tasks, tokenised data, task streams and tiny model, on the CPU."""
    import torch

    from mtbert.config import load_recipe
    from mtbert.data.streams import TaskStream
    from mtbert.objectives.base import ObjectiveContext
    from mtbert.training.setup import build_model, load_run_data

    recipe = load_recipe(write_recipe(tmp_path, tokenizer_dir, **top), list(overrides))
    data = load_run_data(recipe)
    torch.manual_seed(0)
    streams = {name: TaskStream(data.train[name], task.batch_size, seed=0, stream_id=i, pad_id=0)
               for i, (name, task) in enumerate(data.tasks.items())}
    return ObjectiveContext(recipe=recipe, tasks=data.tasks, streams=streams, train=data.train,
                            tokenizer=data.tokenizer, model=build_model(recipe, data.tasks, data.tokenizer),
                            device=torch.device("cpu"), say=lambda line: None)


def random_checkpoint(tmp_path: Path, tokenizer_dir: Path, tasks: dict) -> Path:
    """A model folder as mtbert train exports it, for a recipe over `tasks`, with large random weights (so
    predictions differ between examples and classes); returns the folder, tmp_path / "ckpt"."""
    import torch

    from mtbert.config import dump_recipe, load_recipe
    from mtbert.data.loading import load_tokenizer
    from mtbert.exported import export_model
    from mtbert.tasks import resolve_tasks
    from mtbert.training.setup import build_model

    recipe = load_recipe(write_recipe(tmp_path, tokenizer_dir, tasks=tasks))
    tokenizer = load_tokenizer(recipe.model.tokenizer)
    torch.manual_seed(0)
    model = build_model(recipe, resolve_tasks(recipe), tokenizer).eval()
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(torch.randn_like(parameter) * 0.5)
    export_model(model, tokenizer, tmp_path / "ckpt", recipe=dump_recipe(recipe), metrics={})
    return tmp_path / "ckpt"


def digest(tensors: dict) -> str:
    """SHA-256 of the weights themselves (names and bytes, in name order), not of the file: the figure the
    multi-machine tests print (run them with -rP to see it) for the docs."""
    h = hashlib.sha256()
    for name in sorted(tensors):
        h.update(name.encode() + b"\0" + tensors[name].contiguous().numpy().tobytes())
    return h.hexdigest()
