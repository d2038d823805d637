"""A training run's output folder (mtbert/training/run_folder.py): which folder a fresh run may write into, and that
an earlier run in it is touched only once the new run produces something."""

import json

import pytest

from mtbert.config import load_recipe
from mtbert.errors import MtbertError
from mtbert.training import faults
from mtbert.training.checkpoints import complete_checkpoints, read_manifest
from mtbert.training.loop import train
from mtbert.training.run_folder import MARKER, claim, take_over

from helpers import write_recipe


def test_claiming_writes_nothing_and_taking_over_marks_the_folder(tmp_path):
    claim(tmp_path / "new" / "run")
    assert not (tmp_path / "new").exists()  # a run that fails before its first output leaves no folder
    take_over(tmp_path / "new" / "run", "quick")
    assert json.loads((tmp_path / "new" / "run" / MARKER).read_text())["recipe"] == "quick"
    (tmp_path / "empty").mkdir()
    claim(tmp_path / "empty")
    take_over(tmp_path / "empty", "quick")
    assert [p.name for p in (tmp_path / "empty").iterdir()] == [MARKER]


def test_an_earlier_runs_folder_is_left_as_it_is(tmp_path):
    take_over(tmp_path, "first")
    (tmp_path / "train_log.jsonl").write_text('{"step": 1}\n')
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    claim(tmp_path)
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before


def test_a_folder_of_other_files_is_refused_naming_it_and_its_files(tmp_path):
    for name in ("recipe.yaml", "metrics.json", "notes.md", "data.csv", "plot.png"):
        (tmp_path / name).write_text("mine\n")
    with pytest.raises(MtbertError, match=rf"output_dir {tmp_path}: holds files mtbert train did not write "
                                          r"\(data.csv, metrics.json, notes.md and 2 more\).*--overwrite"):
        claim(tmp_path)
    assert not (tmp_path / MARKER).exists()
    claim(tmp_path, overwrite=True)
    take_over(tmp_path, "quick")
    assert (tmp_path / MARKER).is_file() and (tmp_path / "recipe.yaml").read_text() == "mine\n"


def test_a_file_or_a_loop_is_not_an_output_folder(tmp_path):
    (tmp_path / "file").write_text("mine\n")
    with pytest.raises(MtbertError, match="exists and is not a folder"):
        claim(tmp_path / "file", overwrite=True)
    (tmp_path / "loop").symlink_to("loop")
    with pytest.raises(MtbertError, match="is a symlink loop"):
        claim(tmp_path / "loop", overwrite=True)


def test_taking_over_removes_the_earlier_runs_checkpoints_only(tmp_path):
    (tmp_path / "checkpoints" / "step-4").mkdir(parents=True)
    (tmp_path / "checkpoints" / "latest").write_text("step-4\n")
    (tmp_path / "model.safetensors").write_bytes(b"the earlier model")
    (tmp_path / ".checkpoints.replaced-123").mkdir()  # what an interrupted take-over left
    take_over(tmp_path, "quick")
    assert sorted(p.name for p in tmp_path.iterdir()) == [MARKER, "model.safetensors"]


# ---------------------------------------------------------------------------------------------
# Through mtbert train


@pytest.fixture
def recipe(tmp_path, tokenizer_dir, monkeypatch):
    monkeypatch.delenv(faults.ENV, raising=False)
    return write_recipe(tmp_path, tokenizer_dir, tasks={"sst": {}}, train={"checkpoint_every": 1, "log_every": 1})


def test_a_fresh_run_replaces_an_earlier_run_without_mixing_the_two(recipe, tmp_path):
    folder = tmp_path / "run"
    train(load_recipe(recipe, [f"output_dir={folder}", "train.max_steps=3"]))
    (folder / "notes.md").write_text("my notes on the first run\n")
    train(load_recipe(recipe, [f"output_dir={folder}", "train.max_steps=2", "train.lr=1e-3"]))
    # Only the second run's checkpoints: the first run's step-3 would resume the old run on the new log.
    assert [step for step, _ in complete_checkpoints(folder / "checkpoints")] == [1, 2]
    saved = read_manifest(folder / "checkpoints" / "step-1")["info"]["recipe"]
    assert "lr: 0.001" in saved
    steps = [json.loads(line)["step"] for line in (folder / "train_log.jsonl").read_text().splitlines()]
    assert max(steps) == 2 and steps[0] == 1  # the second run's log alone
    assert (folder / "notes.md").read_text() == "my notes on the first run\n"


def test_overwrite_trains_into_a_folder_of_other_files_and_leaves_the_others(recipe, tmp_path):
    folder = tmp_path / "results"
    folder.mkdir()
    (folder / "recipe.yaml").write_text("# not a run's recipe\n")
    (folder / "notes.md").write_text("mine\n")
    with pytest.raises(MtbertError, match="holds files mtbert train did not write"):
        train(load_recipe(recipe, [f"output_dir={folder}", "train.max_steps=1"]))
    assert sorted(p.name for p in folder.iterdir()) == ["notes.md", "recipe.yaml"]
    train(load_recipe(recipe, [f"output_dir={folder}", "train.max_steps=1"]), overwrite=True)
    assert "name: test" in (folder / "recipe.yaml").read_text()  # asked for: replaced by the run's
    assert (folder / "notes.md").read_text() == "mine\n"


def test_a_resume_needs_no_overwrite(recipe, tmp_path):
    folder = tmp_path / "run"
    train(load_recipe(recipe, [f"output_dir={folder}", "train.max_steps=2"]))
    (folder / MARKER).unlink()  # a run folder from before the marker existed
    for spec in ("latest", "auto"):
        train(load_recipe(recipe, [f"output_dir={folder}", "train.max_steps=2"]), resume=spec)
    with pytest.raises(MtbertError, match="--overwrite"):  # a fresh run there is another matter
        train(load_recipe(recipe, [f"output_dir={folder}", "train.max_steps=2"]))
