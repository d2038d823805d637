"""What a run reports: the JSONL log every run writes (RunLog) and, for experiment trackers, its records as
flat scalars and the recipe as hyper-parameters.

When the recipe names trackers (`tracking.trackers`), the log's records go, flattened, to each of them
through Accelerate: one call writes both, so the trackers never see anything the JSONL log lacks. The
trackers' packages are checked here; starting the trackers is the run's set-up (setup.py).
"""

from __future__ import annotations

import dataclasses
import importlib.util
from collections.abc import Callable
from pathlib import Path

from mtbert import files
from mtbert.config import Recipe
from mtbert.errors import MtbertError

# The import name(s) each tracker needs (any one of them), and what to install.
TRACKER_PACKAGES: dict[str, tuple[tuple[str, ...], str]] = {
    "tensorboard": (("tensorboard", "tensorboardX"), 'pip install "mtbert[tracking]" (or tensorboard)'),
    "wandb": (("wandb",), "pip install wandb, then wandb login"),
    "mlflow": (("mlflow",), "pip install mlflow"),
    "comet_ml": (("comet_ml",), "pip install comet_ml"),
    "aim": (("aim",), "pip install aim"),
    "clearml": (("clearml",), "pip install clearml"),
    "dvclive": (("dvclive",), "pip install dvclive"),
    "swanlab": (("swanlab",), "pip install swanlab"),
    "trackio": (("trackio",), "pip install trackio"),
}


def check_trackers(trackers: list[str]) -> None:
    """Fail before training when a tracker's package is missing (Accelerate would silently skip it)."""
    for name in trackers:
        modules, install = TRACKER_PACKAGES[name]
        if not any(importlib.util.find_spec(module) for module in modules):
            raise MtbertError(f"recipe key tracking.trackers: {name} is not installed; {install}")


def project_name(recipe: Recipe) -> str:
    return recipe.tracking.project or recipe.name


def logging_dir(recipe: Recipe) -> Path:
    """Where file-based trackers write; tensorboard adds a sub-folder named after the project."""
    return Path(recipe.tracking.logging_dir or Path(recipe.output_dir) / "tracking")


def tracker_values(record: dict) -> dict[str, float]:
    """A JSONL log record as flat scalars: `train/loss/<task>`, `train/lr`, `train/tokens_per_s`,
    `train/elapsed_s`; `dev/<task>/<metric>` (with `main`, the task's main score) and `dev/overall`.
    The step is passed apart, as the trackers' x axis."""
    values: dict[str, float] = {}
    for key, value in record.items():
        if key != "step":
            _flatten(values, value, "dev" if key == "dev" else f"train/{key}")
    return values


def _flatten(out: dict[str, float], value, name: str) -> None:
    if isinstance(value, dict):
        for key, inner in value.items():
            _flatten(out, inner, f"{name}/{key}")
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
        out[name] = float(value)


def hyperparameters(recipe: Recipe) -> dict[str, str | int | float | bool]:
    """The recipe flattened to `section.key` scalars, as trackers store a run's configuration
    (tensorboard's hparams take only str, int, float and bool: lists and nulls become text)."""
    out: dict[str, str | int | float | bool] = {}

    def walk(value, name: str) -> None:
        if isinstance(value, dict):
            for key, inner in value.items():
                walk(inner, f"{name}.{key}" if name else str(key))
        elif isinstance(value, (str, int, float, bool)):
            out[name] = value
        else:
            out[name] = str(value)

    walk(dataclasses.asdict(recipe), "")
    return out


class RunLog:
    """The JSONL log every run writes: one record per logging step and per evaluation. With `trackers`
    (accelerator.log), each record also goes to the recipe's trackers, flattened.

    The file is opened at the first record, or when its size is first asked (right before a checkpoint
    is saved), not before; `before_first_write` runs then, once. keep_bytes: resuming, keep the log as
    it was at the checkpoint (what came after is written again); otherwise the log starts empty.
    A write that fails (a full disk) is an MtbertError naming the file."""

    def __init__(self, path: Path, enabled: bool, keep_bytes: int | None = None, trackers=None,
                 before_first_write: Callable[[], None] | None = None):
        self.path, self.enabled, self.trackers = path, enabled, trackers
        self.keep_bytes, self.before_first_write = keep_bytes, before_first_write
        self.started = False

    def start(self) -> None:
        if self.started or not self.enabled:
            return
        if self.before_first_write is not None:
            self.before_first_write()
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            if self.keep_bytes is None or not self.path.is_file():
                self.path.write_text("")
            else:
                with self.path.open("r+b") as f:
                    f.truncate(self.keep_bytes)
        except OSError as error:
            raise files.cannot_write(self.path, error) from None
        self.started = True

    def write(self, record: dict) -> None:
        if self.enabled:
            self.start()
            try:
                with self.path.open("a") as f:
                    f.write(files.json_text(record) + "\n")
            except OSError as error:
                raise files.cannot_write(self.path, error) from None
            if self.trackers is not None:
                self.trackers(tracker_values(record), step=record["step"])

    def size(self) -> int:
        if not self.enabled:
            return 0
        self.start()
        return self.path.stat().st_size
