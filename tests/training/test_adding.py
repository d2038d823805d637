"""Adding a task to a trained model (`model.add_to`, mtbert/training/adding.py): only the new task's adapter and
head train; every earlier weight, and so every earlier task's predictions, stay bit-identical."""

from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from mtbert.config import load_recipe
from mtbert.data.loading import load_split
from mtbert.errors import MtbertError
from mtbert.exported import load_model
from mtbert.inference import eval_loader, run_inference
from mtbert.training.loop import train

from helpers import write_recipe

SHORT = ["train.max_steps=3", "eval.every_steps=3", "train.log_every=1"]
NEW_TASK = {"format": "cs224n", "train_file": "cs224n/ids-sst-train.csv", "dev_file": "cs224n/ids-sst-dev.csv",
            "text_columns": ["sentence"], "label_column": "sentiment", "kind": "classes", "num_labels": 5,
            "pooler": "mean"}


def adding_recipe(root: Path, trained: Path, name: str, **extra) -> Path:
    """A recipe that adds task `mood` (the sst files, another head) to the model in `trained`."""
    base = yaml.safe_load((root / "recipe.yaml").read_text())
    recipe = {"name": "adding", "seed": 3, "data_dir": base["data_dir"], "output_dir": str(root / name),
              "model": {"add_to": str(trained), **extra.pop("model", {})}, "tasks": {"mood": NEW_TASK},
              "train": {"max_steps": 4, "batch_size": 8, "lr": 1.0e-2, "warmup_ratio": 0.0}, **extra}
    path = root / f"{name}.yaml"
    path.write_text(yaml.safe_dump(recipe, sort_keys=False))
    return path


def predictions(folder: Path) -> dict[str, torch.Tensor]:
    loaded = load_model(folder)
    found = {}
    for name, task in loaded.tasks.items():
        _, data = load_split(task, "dev", loaded.recipe.data_dir, loaded.tokenizer, loaded.recipe.model.max_length,
                             progress=False)
        found[name] = torch.as_tensor(run_inference(loaded.model, task, eval_loader(data, 16, 0)).predictions)
    return found


@pytest.fixture(scope="module", params=["frozen+lora[r=2,targets=all]", "S2+pals"], ids=["lora", "pals_shared_base"])
def trained(request, tmp_path_factory, tokenizer_dir):
    root = tmp_path_factory.mktemp("adding")
    recipe = write_recipe(root, tokenizer_dir)
    train(load_recipe(recipe, [*SHORT, f"model.sharing={request.param}", f"output_dir={root / 'trained'}"]))
    return root


def test_the_new_task_trains_and_earlier_predictions_stay_bit_identical(trained):
    train(load_recipe(adding_recipe(trained, trained / "trained", "added")))
    before = load_file(trained / "trained" / "model.safetensors")
    after = load_file(trained / "added" / "model.safetensors")
    assert all(torch.equal(before[k], after[k]) for k in before)  # every earlier weight, the shared base's too
    new = set(after) - set(before)
    assert new and all("mood" in k for k in new)
    old_predictions, new_predictions = predictions(trained / "trained"), predictions(trained / "added")
    assert list(new_predictions) == ["sst", "quora", "sts", "mood"]
    for task, values in old_predictions.items():
        assert torch.equal(values, new_predictions[task]), task
    # The new adapter moved away from its start (LoRA's B and the PALs' V_D start at zero).
    moved = [k for k in new if (".lora_B." in k or ".up." in k) and after[k].abs().sum() > 0]
    assert moved
    counts = __import__("json").loads((trained / "added" / "parameters.json").read_text())
    assert [t for t, c in counts["tasks"].items() if c["trainable"]] == ["mood"]


def test_what_cannot_be_added_is_refused(trained, tokenizer_dir):
    with pytest.raises(MtbertError, match="the model in .* already has task 'sst'"):
        train(load_recipe(adding_recipe(trained, trained / "trained", "again", tasks={"sst": {}})))
    with pytest.raises(MtbertError, match="model.max_length: a run with model.add_to takes the model section from the "
                                          "trained model"):
        train(load_recipe(adding_recipe(trained, trained / "trained", "other", model={"max_length": 40})))
    with pytest.raises(MtbertError, match="stages.0.tasks: unknown task 'quora'; the recipe's tasks: mood \\(a run "
                                          "with model.add_to trains only"):
        train(load_recipe(adding_recipe(trained, trained / "trained", "stage", stages=[{"tasks": ["quora", "mood"]}])))
    with pytest.raises(MtbertError, match="is also output_dir"):
        train(load_recipe(adding_recipe(trained, trained / "trained", "trained")))


def test_a_model_without_adapters_or_with_task_owned_layers_takes_none(tmp_path, tokenizer_dir):
    recipe = write_recipe(tmp_path, tokenizer_dir)
    train(load_recipe(recipe, ["train.max_steps=1", "model.sharing=frozen", f"output_dir={tmp_path / 'plain'}"]))
    with pytest.raises(MtbertError, match="has no adapters .* e.g. model.sharing: frozen\\+lora"):
        train(load_recipe(adding_recipe(tmp_path, tmp_path / "plain", "a")))
    train(load_recipe(recipe, ["train.max_steps=1", "model.sharing=F1-I1+lora", f"output_dir={tmp_path / 'own'}"]))
    with pytest.raises(MtbertError, match="gives each task layers of its own"):
        train(load_recipe(adding_recipe(tmp_path, tmp_path / "own", "b")))
