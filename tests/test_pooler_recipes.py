"""The pooler-comparison recipes (recipes/poolers_{sst2,cola,mrpc}.yaml): their opening command sweeps every
pooler at batch sizes 16, 32 and 64, their budget is what their comments say, and they read and train on
small files in the public GLUE layout that the test writes (CoLA and MRPC are not on the development machine).
"""

from __future__ import annotations

import itertools
import random
import re
from pathlib import Path

import pytest
from typer.testing import CliRunner

from mtbert.cli import app
from mtbert.commands.sweep import parse_grid
from mtbert.config import load_recipe
from mtbert.model.pooling import POOLER_NAMES

from conftest import sentence

RECIPES = Path(__file__).parent.parent / "recipes"
TASKS = ("sst2", "cola", "mrpc")
TINY = ["model.init=random", "model.size.hidden_size=16", "model.size.num_layers=1", "model.size.num_heads=2",
        "model.size.intermediate_size=32", "model.max_length=32"]


def write_glue(root: Path, n: int = 24, seed: int = 0) -> Path:
    """SST-2, CoLA and MRPC train/dev/test files under root/glue, laid out as the public GLUE download."""
    rng = random.Random(seed)

    def write(path: Path, lines: list[str], bom: bool = False) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes((("\ufeff" if bom else "") + "\n".join(lines) + "\n").encode("utf-8"))

    glue = root / "glue"
    for split in ("train", "dev"):
        # SST-2: a header, then sentence and label (the sentence comes first).
        write(glue / "SST-2" / f"{split}.tsv",
              ["sentence\tlabel"] + [f"{sentence(rng)} \t{i % 2}" for i in range(n)])
        # CoLA: no header; source, label, original mark (empty or *), sentence.
        write(glue / "CoLA" / f"{split}.tsv",
              [f"gj04\t{i % 2}\t{'' if i % 2 else '*'}\t{sentence(rng)} ." for i in range(n)])
        # MRPC: a header that may begin with a byte-order mark; quality, two ids, two strings.
        write(glue / "MRPC" / f"{split}.tsv",
              ["Quality\t#1 ID\t#2 ID\t#1 String\t#2 String"]
              + [f"{i % 2}\t{100 + i}\t{200 + i}\t{sentence(rng)}\t{sentence(rng)}" for i in range(n)], bom=True)
    write(glue / "SST-2" / "test.tsv", ["index\tsentence"] + [f"{i}\t{sentence(rng)}" for i in range(4)])
    write(glue / "CoLA" / "test.tsv", ["index\tsentence"] + [f"{i}\t{sentence(rng)}" for i in range(4)])
    write(glue / "MRPC" / "test.tsv", ["index\t#1 ID\t#2 ID\t#1 String\t#2 String"]
          + [f"{i}\t{i}\t{i + 9}\t{sentence(rng)}\t{sentence(rng)}" for i in range(4)])
    return root


def opening_command(task: str) -> str:
    return (RECIPES / f"poolers_{task}.yaml").read_text().splitlines()[0]


@pytest.mark.parametrize("task", TASKS)
def test_opening_command_sweeps_every_pooler_at_three_batch_sizes(task):
    command = opening_command(task)
    assert command.startswith(f"# mtbert sweep recipes/poolers_{task}.yaml "), command
    assert "model.init=$(python -c" in command and "--data-dir " in command
    axes = [parse_grid(item) for item in re.findall(r"--grid (\S+)", command)]
    assert [a.key for a in axes] == [f"tasks.{task}.pooler", "train.batch_size"]
    assert [v for v, _ in axes[0].values] == list(POOLER_NAMES)  # every pooler the code knows
    assert [v for v, _ in axes[1].values] == ["16", "32", "64"]
    # Every combination is a valid recipe.
    for pooler, batch in itertools.product(*([v for _, v in a.values] for a in axes)):
        recipe = load_recipe(RECIPES / f"poolers_{task}.yaml", [f"tasks.{task}.pooler={pooler}",
                                                                f"train.batch_size={batch}"])
        assert recipe.tasks[task].pooler == pooler and recipe.train.batch_size == int(batch)


@pytest.mark.parametrize("task", TASKS)
def test_budget_is_the_same_examples_for_every_batch_size(task):
    # What the recipes' comments promise: one epoch over a fixed-size subset, no partial batch, no step cap.
    recipe = load_recipe(RECIPES / f"poolers_{task}.yaml")
    examples = recipe.tasks[task].max_train_examples
    assert recipe.train.max_steps is None and recipe.train.epochs == 1 and examples == 3200
    assert all(examples % batch == 0 for batch in (16, 32, 64))
    assert recipe.eval.max_examples is None  # the whole dev set


@pytest.mark.parametrize("task, line", [
    ("sst2", r"train: 24 examples from .*glue/SST-2/train\.tsv, labels 0:12 1:12"),
    ("cola", r"train: 24 examples from .*glue/CoLA/train\.tsv, labels 0:12 1:12"),
    ("mrpc", r"- mrpc: binary \(2 labels\), pair.*\n +train: 24 examples from .*glue/MRPC/train\.tsv, labels 0:12"),
])
def test_validate_reads_the_glue_layout(task, line, tmp_path, tokenizer_dir):
    data = write_glue(tmp_path / "data")
    result = CliRunner().invoke(app, ["validate", str(RECIPES / f"poolers_{task}.yaml"), "model.init=random",
                                      f"model.tokenizer={tokenizer_dir}", "--data-dir", str(data)])
    assert result.exit_code == 0, result.output
    assert re.search(line, result.output), result.output
    assert f"dev: 24 examples from {data}" in result.output and result.output.rstrip().endswith("ok")


@pytest.mark.parametrize("task, pooler", [("cola", "mean_max"), ("mrpc", "swap")])
def test_recipe_trains_on_the_glue_layout(task, pooler, tmp_path, tokenizer_dir):
    from mtbert.training.loop import train

    data = write_glue(tmp_path / "data")
    recipe = load_recipe(RECIPES / f"poolers_{task}.yaml",
                         [*TINY, f"model.tokenizer={tokenizer_dir}", f"output_dir={tmp_path / 'ckpt'}",
                          f"tasks.{task}.pooler={pooler}", "train.batch_size=8", "train.log_every=1"],
                         data_dir=str(data))
    best = train(recipe)
    metrics = {"cola": {"matthews", "accuracy"}, "mrpc": {"accuracy", "f1"}}[task]
    assert metrics <= set(best[task]) and best["step"] == 3  # 24 training rows at batch 8
    assert (tmp_path / "ckpt" / "model.safetensors").is_file()
