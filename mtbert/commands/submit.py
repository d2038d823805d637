"""`mtbert submit`: every task's submission file for a split, in one folder (formats: submission.py)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from mtbert import exported
from mtbert.commands.submission import predict_submission, read_for_submission, submission_path, task_named, write
from mtbert.errors import MtbertError
from mtbert.files import check_output_folder, wrote


def submit(ckpt: str | Path, out_dir: Path, split: str = "test", task_names: list[str] | None = None,
           data_dir: str | None = None, batch_size: int = 128, report: Callable[[str], None] = print) -> list[Path]:
    """Every task's submission file for `split`, in one folder. Every split is read and checked, and
    every prediction made, before the first file is written."""
    loaded = exported.load_model(ckpt, data_dir=data_dir)
    names = task_names or list(loaded.tasks)
    tasks = [task_named(loaded.tasks, name) for name in names]
    if out_dir.exists() and not out_dir.is_dir():
        raise MtbertError(f"{out_dir}: exists and is not a folder")
    submissions = [read_for_submission(loaded, task, split, Path(out_dir) / submission_path(None, task, split),
                                        report) for task in tasks]
    for submission in submissions:
        predict_submission(loaded, submission, batch_size)
    return [write(submission, report) for submission in submissions]


def run(ckpt: Path, to: Path, tasks: list[str] | None, split: str, data_dir: str | None, batch_size: int,
        say: Callable[[str], None], echo: Callable[[str], None]) -> None:
    check_output_folder(to, "--to")
    before = set(to.iterdir()) if to.is_dir() else set()
    for path in submit(ckpt, to, split, tasks, data_dir, batch_size, report=say):
        echo(f"{wrote(path in before)} {path}")
