"""A training run's output folder: which folder a fresh run may write into, and when it takes it over.

    <output_dir>/
        .mtbert-run.json        MARKER: written with the run's first output; this folder is a run's
        parameters.json train_log.jsonl model.safetensors mtbert.json recipe.yaml metrics.json
        tokenizer files, checkpoints/, tracking/

A fresh run (not a resume) trains into a folder that is new, empty or an earlier run's (it holds the
marker). A folder holding anything else (`output_dir: .` in a project, a folder of results) is refused,
naming it and some of its files, unless asked to with --overwrite: then the files of the names above are
replaced as the run writes them and everything else is left alone.

Nothing of an earlier run in the folder is touched until the new run produces something: its first log
record or checkpoint (RunLog calls `take_over` then, which also writes the marker: a run that fails before
it leaves no folder behind). Only then do the earlier run's checkpoints go (a
resume from them would continue the old run on the new run's log) and its log start afresh; its exported
model stays until the new run exports one. A run that fails before producing anything (bad data, a
non-finite first loss, an interrupted start) leaves the earlier run exactly as it was.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from mtbert import __version__
from mtbert.errors import MtbertError
from mtbert.files import make_folder, write_text_atomically
from mtbert.folders import unreadable

MARKER = ".mtbert-run.json"
CHECKPOINTS = "checkpoints"
_REPLACED = ".checkpoints.replaced-"
_LISTED = 3


def claim(folder: Path, *, overwrite: bool = False) -> None:
    """Refuse a folder a fresh run must not write into. Every process checks, so that all of them stop alike;
    nothing is written (take_over marks the folder as a run's when the run first produces something)."""
    problem = unreadable(folder)
    if problem:
        raise MtbertError(f"output_dir {folder}: is {problem}")
    if folder.exists() and not folder.is_dir():
        raise MtbertError(f"output_dir {folder}: exists and is not a folder")
    existing = next((parent for parent in folder.absolute().parents if parent.exists()), None)
    if existing is not None and not existing.is_dir():  # checked now: the folder is made at the first output
        raise MtbertError(f"output_dir {folder}: cannot be made, {existing} is a file")
    try:
        entries = sorted(p.name for p in folder.iterdir()) if folder.is_dir() else []
    except OSError as error:
        raise MtbertError(f"output_dir {folder}: cannot be read ({error.strerror})") from None
    if MARKER in entries:
        return  # an earlier run's folder: taken over when this run first writes
    if entries and not overwrite:
        listed = ", ".join(entries[:_LISTED]) + (f" and {len(entries) - _LISTED} more" if len(entries) > _LISTED
                                                 else "")
        raise MtbertError(f"output_dir {folder}: holds files mtbert train did not write ({listed}); train into a "
                          f"new or empty folder, or pass --overwrite to replace the files a run writes there")


def take_over(folder: Path, name: str) -> None:
    """A fresh run's first write (main process): the folder is marked as this run's, and the earlier run's
    checkpoints go (moved aside in one rename, so that no process ever sees half of them, then deleted),
    with what an interrupted take-over left."""
    make_folder(folder)
    write_text_atomically(folder / MARKER, json.dumps({"format": "mtbert-run", "mtbert_version": __version__,
                                                       "recipe": name}, indent=2) + "\n")
    checkpoints = folder / CHECKPOINTS
    if checkpoints.is_dir() and not checkpoints.is_symlink():
        aside = folder / f"{_REPLACED}{os.getpid()}"
        try:
            os.replace(checkpoints, aside)
        except OSError as error:
            raise MtbertError(f"{checkpoints}: cannot move the earlier run's checkpoints aside "
                              f"({error.strerror})") from None
    for leftover in folder.glob(f"{_REPLACED}*"):
        shutil.rmtree(leftover, ignore_errors=True)


PARAMETERS_FILE = "parameters.json"


def begin_output(output: Path, name: str, counts: dict, fresh: bool) -> None:
    """What a run does to its folder when it first produces something (not before: a run that fails early
    leaves an earlier run's folder as it was): a fresh run takes the folder over from an earlier run, then
    the parameter counts are written."""
    if fresh:
        take_over(output, name)
    write_text_atomically(output / PARAMETERS_FILE, json.dumps(counts, indent=2) + "\n")
