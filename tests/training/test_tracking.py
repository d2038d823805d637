"""The JSONL run log and the Accelerate trackers fed from it (mtbert/training/tracking.py, RunLog)."""

import json

import pytest
from typer.testing import CliRunner

from mtbert.cli import app
from mtbert.config import load_recipe
from mtbert.errors import MtbertError
from mtbert.training import tracking
from mtbert.training.loop import train

from helpers import write_recipe


def read_log(folder):
    return [json.loads(line) for line in (folder / "train_log.jsonl").read_text().splitlines()]


def test_tracker_values_flatten_both_kinds_of_record():
    logged = {"step": 4, "lr": 1e-3, "loss": {"sst": 1.5, "sts": 3.0}, "tokens_per_s": 900.0, "elapsed_s": 2.0}
    assert tracking.tracker_values(logged) == {"train/lr": 1e-3, "train/loss/sst": 1.5, "train/loss/sts": 3.0,
                                               "train/tokens_per_s": 900.0, "train/elapsed_s": 2.0}
    evaluated = {"step": 4, "dev": {"sst": {"accuracy": 0.5, "f1": 0.4, "main": 0.5}, "overall": 0.5}}
    assert tracking.tracker_values(evaluated) == {"dev/sst/accuracy": 0.5, "dev/sst/f1": 0.4, "dev/sst/main": 0.5,
                                                  "dev/overall": 0.5}


def test_hyperparameters_are_flat_scalars(tmp_path, tokenizer_dir):
    values = tracking.hyperparameters(load_recipe(write_recipe(tmp_path, tokenizer_dir)))
    assert values["train.lr"] == 3.0e-3 and values["tasks.sts.pair_encoding"] == "siamese"
    assert values["train.betas"] == "[0.9, 0.999]" and values["train.max_steps"] == "None"
    assert all(isinstance(v, (str, int, float, bool)) for v in values.values())


def test_log_holds_one_record_per_logged_step_and_per_evaluation(tmp_path, tokenizer_dir):
    recipe = load_recipe(write_recipe(tmp_path, tokenizer_dir, eval={"every_steps": 3}),
                         ["train.max_steps=7", "train.log_every=2"])
    train(recipe)
    records = read_log(tmp_path / "ckpt")
    assert [(r["step"], "dev" if "dev" in r else "loss") for r in records] == [
        (2, "loss"), (3, "dev"), (4, "loss"), (6, "loss"), (6, "dev"), (7, "loss"), (7, "dev")]
    for record in records:
        if "loss" in record:
            assert set(record) == {"step", "lr", "loss", "tokens_per_s", "elapsed_s"}
            assert record["tokens_per_s"] > 0 and set(record["loss"]) <= {"sst", "quora", "sts"}
        else:
            assert set(record["dev"]) == {"sst", "quora", "sts", "overall"}


def test_tensorboard_gets_the_same_records(tmp_path, tokenizer_dir):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    recipe = load_recipe(write_recipe(tmp_path, tokenizer_dir, eval={"every_steps": 3},
                                      tracking={"trackers": ["tensorboard"], "project": "tb"}),
                         ["train.max_steps=6", "train.log_every=2"])
    train(recipe)
    folder = tmp_path / "ckpt" / "tracking" / "tb"
    assert list(folder.glob("events.out.tfevents.*")), "no tensorboard event file"
    events = EventAccumulator(str(folder))
    events.Reload()
    records = read_log(tmp_path / "ckpt")
    logged = [r for r in records if "loss" in r]
    evaluated = [r for r in records if "dev" in r]
    assert [e.step for e in events.Scalars("train/lr")] == [r["step"] for r in logged]
    assert [e.step for e in events.Scalars("train/tokens_per_s")] == [r["step"] for r in logged]
    overall = events.Scalars("dev/overall")
    assert [e.step for e in overall] == [r["step"] for r in evaluated]
    assert [e.value for e in overall] == pytest.approx([r["dev"]["overall"] for r in evaluated], rel=1e-6)
    assert {f"train/loss/{t}" for t in ("sst", "quora", "sts")} <= set(events.Tags()["scalars"])


def test_unknown_tracker_is_a_recipe_error(tmp_path, tokenizer_dir):
    with pytest.raises(MtbertError, match=r"tracking\.trackers\.0: .*did you mean 'tensorboard'"):
        load_recipe(write_recipe(tmp_path, tokenizer_dir), ["tracking.trackers=[tensorbord]"])


def test_missing_tracker_package_stops_before_training(tmp_path, tokenizer_dir, monkeypatch):
    monkeypatch.setitem(tracking.TRACKER_PACKAGES, "wandb", (("no_such_module_for_mtbert",), "pip install wandb"))
    with pytest.raises(MtbertError, match="tracking.trackers: wandb is not installed; pip install wandb"):
        tracking.check_trackers(["wandb"])
    result = CliRunner().invoke(app, ["train", str(write_recipe(tmp_path, tokenizer_dir)),
                                      "tracking.trackers=[wandb]"])
    assert result.exit_code == 2 and "wandb is not installed" in result.output
    assert not (tmp_path / "ckpt").exists()
