"""A run's resumable state: its named parts, the standard ones (progress, random states), and the check that
a checkpoint's run is the one being resumed. mtbert/training/checkpoints.py writes and reads the folders.
"""

from __future__ import annotations

import dataclasses
import os
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml

from mtbert.errors import MtbertError
from mtbert.training.checkpoints import (
    Part,
    Processes,
    Stateful,
    check_part_name,
    load_checkpoint,
    read_manifest,
    save_checkpoint,
)


class TrainingState:
    """The named parts a checkpoint saves and a resume restores, in the order they were added.

    Restoring follows that order, so add the random states last: whatever else is restored must not
    draw random numbers after them.
    """

    def __init__(self) -> None:
        self.parts: dict[str, Part] = {}

    def add(self, name: str, obj: Stateful, *, per_process: bool = False) -> None:
        """Track `obj` (anything with state_dict/load_state_dict) under `name`.

        per_process: every process saves and restores its own copy (random states, sharded optimizer
        state); otherwise the main process's copy stands for all of them.
        """
        check_part_name(name)
        if name in self.parts:
            raise ValueError(f"training state part {name!r} is already tracked")
        self.parts[name] = Part(obj, per_process)

    def save(self, root: str | os.PathLike[str], step: int, processes: Processes, info: dict) -> Path:
        """Write checkpoint `root/step-<step>` (every process must call this), update `latest`, and
        return the folder. `info` is stored in the manifest (the run's recipe and launch, for checks)."""
        return save_checkpoint(root, step, self.parts, processes, info)

    def load(self, folder: str | os.PathLike[str], processes: Processes) -> dict:
        """Restore every part from checkpoint `folder`; return its manifest."""
        return load_checkpoint(folder, self.parts, processes)

class RandomState:
    """This process's random number generators: Python's, NumPy's global one, torch's CPU and CUDA ones."""

    def state_dict(self) -> dict:
        state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
        if torch.cuda.is_available():
            state["cuda"] = torch.cuda.get_rng_state_all()
        return state

    def load_state_dict(self, state: dict) -> None:
        random.setstate(state["python"])
        np.random.set_state(state["numpy"])
        torch.set_rng_state(state["torch"])
        if "cuda" in state:
            torch.cuda.set_rng_state_all(state["cuda"])

@dataclass
class Progress:
    """Where the run stands, as a checkpoint saves it."""

    step: int = 0
    "Optimizer steps done."
    best: dict | None = None
    "Dev metrics (and step) of the model exported so far."
    log_bytes: int = 0
    "Length of train_log.jsonl at the checkpoint; a resume cuts off what was logged after it."
    skipped_steps: list[int] = field(default_factory=list)
    "Steps skipped for a non-finite loss (train.on_nonfinite: skip)."
    dev_scores: dict = field(default_factory=dict)
    "Each task's latest dev metrics and the step they were measured at: {task: {step, metrics}} (tasks.*.eval_every)."

    def state_dict(self) -> dict:
        return dataclasses.asdict(self)

    def load_state_dict(self, state: dict) -> None:
        for f in dataclasses.fields(self):
            # dev_scores is newer than the other fields: a checkpoint written before it has none yet.
            setattr(self, f.name, state[f.name] if f.name != "dev_scores" else state.get(f.name, {}))

def training_state(launch_parts: list[tuple[str, Stateful, bool]], *, scheduler: Stateful,
                   streams: Stateful, progress: Progress, losses: Stateful,
                   objective_parts: dict[str, Stateful]) -> TrainingState:
    """Everything a checkpoint must hold for a resumed run to continue exactly: the model's and optimizer's
    parts as the launch keeps them (launch.model_parts), the schedule, the task streams, the progress, the
    losses since the last log record, the objectives' parts, and this process's random states (last)."""
    state = TrainingState()
    for name, obj, per_process in launch_parts:
        state.add(name, obj, per_process=per_process)
    state.add("scheduler", scheduler)
    state.add("streams", streams)
    state.add("progress", progress)
    state.add("losses", losses)
    for name, part in objective_parts.items():  # triplet streams, SMART's teacher, ...
        state.add(name, part)
    state.add("rng", RandomState(), per_process=True)  # last: nothing restored after it may draw numbers
    return state

# ---------------------------------------------------------------------------------------------
# What may change between a run and its resume

RESUME_MAY_CHANGE = frozenset({
    "output_dir", "data_dir", "train.log_every", "train.checkpoint_every", "train.keep_checkpoints",
    "train.on_nonfinite", "eval.batch_size",
})
"Recipe keys that do not change what is trained: a resume may give them new values."

def check_resumable(folder: Path, run_info: dict) -> None:
    """Refuse to resume from a checkpoint whose run differs from this one in a way that matters."""
    saved = read_manifest(folder)["info"]
    difference = first_difference(yaml.safe_load(saved["recipe"]), yaml.safe_load(run_info["recipe"]))
    if difference:
        key, before, now = difference
        raise MtbertError(f"--resume {folder}: recipe key {key} was {before!r} in that run and is {now!r} now; "
                          f"resume with the same recipe (only {', '.join(sorted(RESUME_MAY_CHANGE))} may change)")
    for section in ("launch", "train_examples"):
        difference = first_difference(saved.get(section), run_info[section], section)
        if difference:
            key, before, now = difference
            what = "launch configuration" if section == "launch" else "training data"
            raise MtbertError(f"--resume {folder}: {key} was {before!r} in that run and is {now!r} now; "
                              f"resume with the same {what}")

def first_difference(saved: Any, current: Any, path: str = "") -> tuple[str, Any, Any] | None:
    """(dotted key, saved value, current value) of the first difference that matters, or None."""
    if path in RESUME_MAY_CHANGE:
        return None
    if isinstance(saved, dict) and isinstance(current, dict):
        for key in list(saved) + [k for k in current if k not in saved]:
            found = first_difference(saved.get(key), current.get(key), f"{path}.{key}" if path else str(key))
            if found:
                return found
        return None
    return None if saved == current else (path, saved, current)
