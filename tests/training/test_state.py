"""A run's resumable state (mtbert/training/state.py): the standard parts, the parts an objective adds, and the
check that a checkpoint comes from the run being resumed."""

import json
import random
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from mtbert.errors import MtbertError
from mtbert.training.checkpoints import MANIFEST, Processes, decode, encode
from mtbert.training.state import (
    RESUME_MAY_CHANGE,
    Progress,
    RandomState,
    check_resumable,
    first_difference,
    training_state,
)


def test_random_state_round_trips():
    saved = RandomState().state_dict()
    expected = (random.random(), np.random.rand(), torch.rand(1).item())
    tree, tensors = encode(saved)
    RandomState().load_state_dict(decode(json.loads(json.dumps(tree)), tensors))
    assert (random.random(), np.random.rand(), torch.rand(1).item()) == expected


def test_first_difference_names_the_dotted_key_and_ignores_harmless_ones():
    saved = {"seed": 0, "output_dir": "a", "train": {"lr": 3e-5, "log_every": 20}, "tasks": {"sst": {}}}
    assert first_difference(saved, {**saved, "output_dir": "b", "train": {"lr": 3e-5, "log_every": 5}}) is None
    assert first_difference(saved, {**saved, "train": {"lr": 1e-5, "log_every": 20}}) == ("train.lr", 3e-5, 1e-5)
    assert first_difference(saved, {**saved, "tasks": {"sst": {}, "sts": {}}}) == ("tasks.sts", None, {})


RECIPE = {"name": "run", "seed": 0, "output_dir": "ckpt/a", "train": {"lr": 3e-5, "log_every": 20},
          "tasks": {"sst": {"batch_size": 8}}}
LAUNCH = {"num_processes": 1, "distributed_type": "NO", "mixed_precision": "no", "device": "cpu", "zero_stage": None}


def checkpoint(tmp_path: Path, recipe=RECIPE, launch=LAUNCH, examples=None) -> Path:
    """A checkpoint folder whose manifest records this run."""
    folder = tmp_path / "step-4"
    folder.mkdir()
    info = {"recipe": yaml.safe_dump(recipe), "launch": launch, "train_examples": examples or {"sst": 100}}
    (folder / MANIFEST).write_text(json.dumps({"format": "mtbert-training-state", "version": 2, "step": 4,
                                               "num_processes": 1, "parts": {}, "info": info, "files": {}}))
    return folder


def run_info(recipe=RECIPE, launch=LAUNCH, examples=None) -> dict:
    return {"recipe": yaml.safe_dump(recipe), "launch": launch, "train_examples": examples or {"sst": 100}}


def test_the_same_run_resumes(tmp_path):
    check_resumable(checkpoint(tmp_path), run_info())


def test_keys_that_do_not_change_what_is_trained_may_change(tmp_path):
    assert {"output_dir", "train.log_every", "data_dir"} <= RESUME_MAY_CHANGE
    changed = {**RECIPE, "output_dir": "ckpt/b", "train": {"lr": 3e-5, "log_every": 1}}
    check_resumable(checkpoint(tmp_path), run_info(changed))


@pytest.mark.parametrize("now, message", [
    (run_info({**RECIPE, "train": {"lr": 1e-5, "log_every": 20}}),
     r"recipe key train\.lr was 3e-05 in that run and is 1e-05 now; resume with the same recipe \(only .*output_dir"),
    (run_info({**RECIPE, "tasks": {"sst": {"batch_size": 16}}}), r"recipe key tasks\.sst\.batch_size was 8"),
    (run_info(launch={**LAUNCH, "num_processes": 2}),
     r"launch\.num_processes was 1 in that run and is 2 now; resume with the same launch configuration"),
    (run_info(examples={"sst": 99}), r"train_examples\.sst was 100 in that run and is 99 now; resume with the same "
                                     r"training data"),
])
def test_a_difference_that_matters_is_refused_naming_the_key(tmp_path, now, message):
    folder = checkpoint(tmp_path)
    with pytest.raises(MtbertError, match=f"^--resume {folder}: {message}"):
        check_resumable(folder, now)


class Box:
    def __init__(self, value=0):
        self.value = value

    def state_dict(self):
        return {"value": self.value}

    def load_state_dict(self, state):
        self.value = state["value"]


def test_the_state_holds_the_parts_in_restoring_order_random_states_last(tmp_path):
    progress = Progress(step=3)
    state = training_state([("model", Box(1), False), ("zero_optimizer", Box(2), True)], scheduler=Box(3),
                           streams=Box(4), progress=progress, losses=Box(5),
                           objective_parts={"smart_teacher": Box(6), "smart_losses": Box(7)})
    assert list(state.parts) == ["model", "zero_optimizer", "scheduler", "streams", "progress", "losses",
                                 "smart_teacher", "smart_losses", "rng"]
    assert state.parts["zero_optimizer"].per_process and state.parts["rng"].per_process
    folder = state.save(tmp_path, 3, Processes(), {"recipe": ""})
    again = training_state([("model", Box(), False), ("zero_optimizer", Box(), True)], scheduler=Box(),
                           streams=Box(), progress=Progress(), losses=Box(),
                           objective_parts={"smart_teacher": Box(), "smart_losses": Box()})
    again.load(folder, Processes())
    assert [again.parts[n].obj.value for n in ("model", "zero_optimizer", "scheduler", "streams", "losses",
                                                "smart_teacher", "smart_losses")] == [1, 2, 3, 4, 5, 6, 7]
    assert again.parts["progress"].obj == progress


def test_a_run_whose_objectives_keep_other_parts_cannot_resume_the_checkpoint(tmp_path):
    state = training_state([], scheduler=Box(), streams=Box(), progress=Progress(), losses=Box(),
                           objective_parts={"smart_losses": Box()})
    folder = state.save(tmp_path, 1, Processes(), {"recipe": ""})
    other = training_state([], scheduler=Box(), streams=Box(), progress=Progress(), losses=Box(),
                           objective_parts={"triplet_streams": Box()})
    with pytest.raises(MtbertError, match="it lacks triplet_streams; it has smart_losses, which this run does not use"):
        other.load(folder, Processes())
