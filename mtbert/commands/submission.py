"""Submission files: what the cs224n course and the GLUE server expect, for any split's predictions.

- cs224n (tasks sst, quora, sts): `sst-test-output.csv`, `para-test-output.csv`, `sts-test-output.csv`,
  tab-separated `id<TAB>Predicted_...`, one row per test example.
- GLUE (tasks sst2, cola, mrpc, stsb, qqp, rte, mnli): `SST-2.tsv`, `CoLA.tsv`, `MRPC.tsv`, `STS-B.tsv`,
  `QQP.tsv`, `RTE.tsv`, `MNLI-m.tsv`, each `index<TAB>prediction` with the test file's index column;
  predictions are 0/1 for the binary tasks, label names for RTE (entailment, not_entailment) and MNLI
  (entailment, neutral, contradiction), and a float for STS-B.
- any other task: `<task>-<split>-output.tsv`, `id<TAB>Predicted`.

On another split than test, the file name says the split (`sst-dev-output.csv`, `SST-2-dev.tsv`).

A benchmark server matches predictions to examples by id, so a split whose ids repeat, are empty or are
only row positions (its file lacks the task's id column) is an error before anything is predicted. A
submission file replaces only an earlier submission file of the same task and split (recognised by its
header line), never another file.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import datasets
import numpy as np

from mtbert import exported, speed
from mtbert.commands.evaluation import model_device
from mtbert.data.encoding import tokenize_split
from mtbert.data.reading import SplitData, read_split
from mtbert.errors import MtbertError
from mtbert.files import write_text_atomically
from mtbert.inference import eval_loader, run_inference
from mtbert.tasks import SUBMISSION_FILES, Task

# The GLUE server's file name per task (MNLI's test split here is the matched one).
GLUE_FILES = {"sst2": "SST-2.tsv", "cola": "CoLA.tsv", "mrpc": "MRPC.tsv", "stsb": "STS-B.tsv", "qqp": "QQP.tsv",
              "rte": "RTE.tsv", "mnli": "MNLI-m.tsv"}


@dataclass(frozen=True)
class SubmissionFormat:
    file_name: str
    id_header: str
    prediction_header: str
    score_digits: int
    "Decimals written for a regression score."


def submission_format(task: Task, split: str = "test") -> SubmissionFormat:
    if task.name in GLUE_FILES:
        name = GLUE_FILES[task.name]
        if split != "test":
            name = name.replace(".tsv", f"-{split}.tsv")
        return SubmissionFormat(name, "index", "prediction", 3)
    if task.name in SUBMISSION_FILES:
        name, column = SUBMISSION_FILES[task.name]
        return SubmissionFormat(name.replace("-test-", f"-{split}-"), "id", column, 4)
    return SubmissionFormat(f"{task.name}-{split}-output.tsv", "id", "Predicted", 4)


def prediction_text(task: Task, prediction) -> str:
    """A label name (or class number when the task has no names), or a score."""
    if task.kind == "regression":
        return str(float(prediction))
    index = int(prediction)
    return task.label_names[index] if task.label_names else str(index)


def submission_text(task: Task, split: str, ids: Sequence[str], predictions: np.ndarray) -> str:
    fmt = submission_format(task, split)
    if task.kind == "regression":
        values = [f"{float(p):.{fmt.score_digits}f}" for p in predictions]
    else:
        values = [prediction_text(task, p) for p in predictions]
    return f"{fmt.id_header}\t{fmt.prediction_header}\n" + "".join(f"{i}\t{v}\n" for i, v in zip(ids, values))


def submission_path(output: str | os.PathLike[str] | None, task: Task, split: str) -> Path:
    """Where a split's submission file goes: the standard name in the current folder when `output` is None;
    inside `output` when it is an existing folder, ends with a slash or has no file extension (it is
    created); else the file `output` itself."""
    name = submission_format(task, split).file_name
    if output is None:
        return Path(name)
    folder = Path(output)
    if folder.is_dir() or str(output).endswith(("/", os.sep)) or not folder.suffix:
        return folder / name
    return folder


def check_ids(data: SplitData, task: Task) -> None:
    """Each example of the split has an id of its own, from the file's id column when the task names one."""
    if task.id_column and data.ids_are_positions:
        raise MtbertError(f"{data.source}: no id column {task.id_column!r}, so a submission could only number the "
                          f"rows; add the column, or unset tasks.{task.name}.id_column")
    first: dict[str, int] = {}
    for index, example_id in enumerate(data.dataset["id"]):
        if not example_id:
            raise MtbertError(f"{data.source}: the example on {data.where(index)} has an empty id "
                              f"({task.id_column!r} column); a submission needs every row's id")
        if example_id in first:
            i, j = first[example_id], index
            both = f"lines {data.lines[i]} and {data.lines[j]}" if data.lines is not None else f"examples {i} and {j}"
            raise MtbertError(f"{data.source}: id {example_id!r} appears twice ({both}); a submission needs one "
                              f"row per id")
        first[example_id] = index


def check_target(path: Path, task: Task, split: str) -> bool:
    """Whether writing `path` replaces an earlier submission file; anything else already there is an error."""
    if path.is_symlink() or (path.exists() and not path.is_file()):
        raise MtbertError(f"{path}: exists and is not a plain file; choose another output")
    if not path.exists():
        return False
    fmt = submission_format(task, split)
    try:
        with path.open("rb") as f:
            first = f.readline(4096)
    except OSError as e:
        raise MtbertError(f"{path}: exists and cannot be read ({e.strerror}); choose another output") from None
    if first.rstrip(b"\r\n") != f"{fmt.id_header}\t{fmt.prediction_header}".encode():
        raise MtbertError(f"{path}: exists and is not a {task.name} {split} submission file, so it is not "
                          f"replaced; move it, or choose another output")
    return True


def write_submission(path: Path, task: Task, split: str, ids: Sequence[str], predictions: np.ndarray) -> None:
    """Write the task's submission file at `path` (see `submission_path`), whole or not at all."""
    write_text_atomically(path, submission_text(task, split, ids, predictions))

# ---------------------------------------------------------------------------------------------
# A task's split on its way to its submission file (mtbert predict --split, mtbert submit)

@dataclass
class Submission:
    """One task's split, read and checked, on its way to the file at `path`."""

    task: Task
    split: str
    path: Path
    replaces: bool
    "An earlier submission file is at `path`."
    data: SplitData
    tokenized: datasets.Dataset
    predictions: object = None

def read_for_submission(loaded: exported.LoadedModel, task: Task, split: str, path: Path,
                         report: Callable[[str], None]) -> Submission:
    replaces = check_target(path, task, split)  # before the data: a wrong output fails in a second
    data = read_split(task, split, loaded.recipe.data_dir)
    check_ids(data, task)
    if data.skip_report():
        report(data.skip_report())
    tokenized = tokenize_split(data, task, loaded.tokenizer, loaded.recipe.model.max_length)
    return Submission(task, split, path, replaces, data, tokenized)

def predict_submission(loaded: exported.LoadedModel, submission: Submission, batch_size: int,
                       model=None) -> None:
    """model: what predicts (default the loaded torch model with the recipe's speed switches; ONNX Runtime's
    runs on the CPU)."""
    if model is None:
        model = speed.set_switches(loaded.model, loaded.recipe.speed)
    device = model_device(model)
    result = run_inference(model.to(device), submission.task,
                           eval_loader(submission.tokenized, batch_size, loaded.tokenizer.pad_token_id or 0,
                                       max_tokens=loaded.recipe.speed.eval_max_tokens),
                           device=device, progress=True)
    submission.predictions = result.predictions

def write(submission: Submission, report: Callable[[str], None]) -> Path:
    path, data = submission.path, submission.data
    write_submission(path, submission.task, submission.split, data.dataset["id"], submission.predictions)
    if submission.replaces:
        report(f"replaced the earlier submission file {path}")
    if data.skipped_lines:
        report(f"warning: {path} has no prediction for the {len(data.skipped_lines)} skipped row(s) of "
               f"{data.source}; a benchmark server expects one per test row")
    return path

def task_named(tasks: dict[str, Task], name: str) -> Task:
    if name not in tasks:
        raise MtbertError(f"task {name!r} is not in this checkpoint; it has {', '.join(tasks)}")
    return tasks[name]
