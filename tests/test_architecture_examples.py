"""The worked examples of docs/architecture.md, read from the page and run: a new objective trains and resumes
through the unchanged loop, a new pooler (built by name in a model) ignores padding, a new task validates and
trains, a new command runs."""

import ast
import copy
import re
import shutil
import sys
import types
from pathlib import Path

import torch
import yaml
from safetensors.torch import load_file
from typer.testing import CliRunner

import mtbert.cli
import mtbert.config
import mtbert.model.pooling
import mtbert.objectives.registry
from mtbert.commands.validate import validate_recipe
from mtbert.config import load_recipe
from mtbert.model.bert import BertConfig
from mtbert.model.multitask import MultiTaskConfig, MultiTaskModel, TaskHeadSpec
from mtbert.training.loop import train

from helpers import write_recipe

PAGE = Path(__file__).resolve().parents[1] / "docs" / "architecture.md"
BLOCK = re.compile(r"^```(\w+) file=(\S+)\n(.*?)^```", re.M | re.S)


def examples() -> dict[str, str]:
    """The page's code blocks by the file they belong to."""
    return {file: code for _, file, code in BLOCK.findall(PAGE.read_text(encoding="utf-8"))}


def test_the_page_has_every_example():
    assert set(examples()) == {"mtbert/objectives/precision.py", "mtbert/objectives/registry.py",
                               "mtbert/config.py", "mtbert/model/pooling.py", "recipe.yaml",
                               "mtbert/commands/params.py", "mtbert/cli.py"}


def new_module(file: str, monkeypatch) -> types.ModuleType:
    """The example of a file the package does not have, imported as that module for this test."""
    name = file.removesuffix(".py").replace("/", ".")
    module = types.ModuleType(name)
    module.__file__ = str(PAGE)
    exec(compile(examples()[file], f"{PAGE}:{file}", "exec"), vars(module))
    parent, _, leaf = name.rpartition(".")
    monkeypatch.setitem(sys.modules, name, module)
    monkeypatch.setattr(sys.modules[parent], leaf, module, raising=False)
    return module


def into_module(module: types.ModuleType, file: str, monkeypatch) -> None:
    """Run the example written for an existing module inside it, as if added to it; undone after the test:
    the names it defines go, the registries it adds to are restored."""
    code = examples()[file]
    for node in ast.parse(code).body:
        for target in getattr(node, "targets", []) + [node] * isinstance(node, (ast.ClassDef, ast.FunctionDef)):
            if isinstance(target, ast.Subscript):  # REGISTRY[name] = ...: a copy to add to
                registry = target.value.id
                monkeypatch.setattr(module, registry, copy.copy(getattr(module, registry)))
            elif isinstance(target, (ast.Name, ast.ClassDef, ast.FunctionDef)):
                name = target.id if isinstance(target, ast.Name) else target.name
                monkeypatch.setattr(module, name, getattr(module, name, None), raising=False)
    exec(compile(code, f"{PAGE}:{file}", "exec"), vars(module))


def test_a_new_objective_trains_logs_and_resumes_through_the_unchanged_loop(tmp_path, tokenizer_dir, monkeypatch):
    new_module("mtbert/objectives/precision.py", monkeypatch)
    into_module(mtbert.objectives.registry, "mtbert/objectives/registry.py", monkeypatch)
    into_module(mtbert.config, "mtbert/config.py", monkeypatch)
    path = write_recipe(tmp_path, tokenizer_dir, stages=[{"objective": "precision", "max_steps": 4}],
                        train={"log_every": 1, "checkpoint_every": 2, "keep_checkpoints": 5, "lr": 0.05})
    first = tmp_path / "first"
    train(load_recipe(path, [f"output_dir={first}"]))
    records = [yaml.safe_load(line) for line in (first / "train_log.jsonl").read_text().splitlines()]
    variances = [r["log_variance"] for r in records if "log_variance" in r]
    assert len(variances) == 4 and variances[0] != variances[-1]  # learned: the optimizer moves them
    # Resumed from step 2 (its `precision` part restored), the run ends where the uninterrupted one did.
    again = tmp_path / "again"
    shutil.copytree(first, again)
    shutil.rmtree(again / "checkpoints" / "step-4")
    (again / "checkpoints" / "latest").write_text("step-2\n")
    train(load_recipe(path, [f"output_dir={again}"]), resume="latest")
    for folder in (first, again):
        assert (folder / "checkpoints" / "step-4" / "precision.json").is_file()
    ours, theirs = (load_file(f / "checkpoints" / "step-4" / "precision.safetensors") for f in (first, again))
    assert torch.equal(ours["log_variance"], theirs["log_variance"])


def test_a_new_pooler_pools_real_tokens_only(monkeypatch):
    into_module(mtbert.model.pooling, "mtbert/model/pooling.py", monkeypatch)
    monkeypatch.setattr(mtbert.model.pooling, "POOLER_NAMES", ("cls", *mtbert.model.pooling.POOLERS))
    encoder = BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                         intermediate_size=32, max_position_embeddings=32)
    torch.manual_seed(0)
    model = MultiTaskModel(MultiTaskConfig(encoder, {"t": TaskHeadSpec(kind="classes", num_outputs=3,
                                                                       pooler="first_last")}, "shared")).eval()
    ids = torch.tensor([[2, 7, 8, 3, 0, 0], [2, 9, 10, 11, 12, 3]])
    batch = {"input_ids": ids, "attention_mask": (ids != 0).long(), "token_type_ids": torch.zeros_like(ids)}
    hidden = torch.randn(2, 6, 16)
    pooled = mtbert.model.pooling.POOLERS["first_last"](16)(hidden, batch["attention_mask"])
    assert torch.equal(pooled[0], (hidden[0, 0] + hidden[0, 3]) / 2)  # its last real token is at 3
    assert torch.equal(pooled[1], (hidden[1, 0] + hidden[1, 5]) / 2)
    padded = {k: torch.cat([v, torch.zeros(2, 3, dtype=v.dtype)], 1) for k, v in batch.items()}
    with torch.no_grad():
        assert torch.allclose(model("t", batch), model("t", padded), atol=1e-6)  # padding changes nothing


def topic_data(root: Path) -> None:
    words = {"sport": "goal match team score", "science": "atom cell energy theory",
             "politics": "vote law party senate"}
    for split, n in (("train", 48), ("dev", 12)):
        rows = ["text\ttopic"]
        for i in range(n):
            topic = list(words)[i % 3]
            rows.append(f"{' '.join(words[topic].split()[(i // 3) % 4:])} {i}\t{topic}")
        (root / "topic").mkdir(parents=True, exist_ok=True)
        (root / "topic" / f"{split}.tsv").write_text("\n".join(rows) + "\n")


def test_a_new_task_needs_only_the_recipe(tmp_path, tokenizer_dir):
    topic_data(tmp_path / "data")
    base = yaml.safe_load(write_recipe(tmp_path, tokenizer_dir).read_text())
    recipe = base | yaml.safe_load(examples()["recipe.yaml"]) | {"output_dir": str(tmp_path / "topic-run")}
    path = tmp_path / "topic.yaml"
    path.write_text(yaml.safe_dump(recipe))
    summary = validate_recipe(load_recipe(path))
    assert "- topic: classes (3 labels), single sentence" in summary and "48 examples" in summary
    best = train(load_recipe(path, ["train.max_steps=3"]))
    assert set(best["topic"]) >= {"accuracy", "f1", "main"}


def test_a_new_command_runs_from_the_command_line(tmp_path, tokenizer_dir, monkeypatch):
    new_module("mtbert/commands/params.py", monkeypatch)
    app = copy.copy(mtbert.cli.app)  # the real commands, and the new one, without changing mtbert's
    app.registered_commands = list(mtbert.cli.app.registered_commands)
    monkeypatch.setattr(mtbert.cli, "app", app)
    into_module(mtbert.cli, "mtbert/cli.py", monkeypatch)
    run = tmp_path / "run"
    train(load_recipe(write_recipe(tmp_path, tokenizer_dir), [f"output_dir={run}", "train.max_steps=2"]))
    result = CliRunner().invoke(app, ["params", str(run)])
    assert result.exit_code == 0, result.output
    assert result.output.startswith("sharing: ") and "parameters: total " in result.output
    missing = CliRunner().invoke(app, ["params", str(tmp_path / "nothing")])
    assert missing.exit_code == 2 and "error: " in missing.output
