"""Submission files: what the cs224n course and the GLUE server expect, for any split's predictions.

- cs224n (tasks sst, quora, sts): `sst-test-output.csv`, `para-test-output.csv`, `sts-test-output.csv`,
  tab-separated `id<TAB>Predicted_...`, one row per test example.
- GLUE (tasks sst2, cola, mrpc, stsb, qqp, rte, mnli): `SST-2.tsv`, `CoLA.tsv`, `MRPC.tsv`, `STS-B.tsv`,
  `QQP.tsv`, `RTE.tsv`, `MNLI-m.tsv`, each `index<TAB>prediction` with the test file's index column;
  predictions are 0/1 for the binary tasks, label names for RTE (entailment, not_entailment) and MNLI
  (entailment, neutral, contradiction), and a float for STS-B.
- any other task: `<task>-<split>-output.tsv`, `id<TAB>Predicted`.

On another split than test, the file name says the split (`sst-dev-output.csv`, `SST-2-dev.tsv`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mtbert.files import write_text_atomically
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


def write_submission(target: Path, task: Task, split: str, ids: Sequence[str], predictions: np.ndarray) -> Path:
    """Write the task's file; `target` is a folder (the standard file name goes inside) or a file."""
    path = target / submission_format(task, split).file_name if target.is_dir() else target
    write_text_atomically(path, submission_text(task, split, ids, predictions))
    return path
