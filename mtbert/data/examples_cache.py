"""A split read once from its file, then kept on disk as a memory-mapped Arrow dataset, so that a later start
(every process of a multi-process run, every run after the first) maps it in milliseconds instead of
parsing the file again and holding its rows in memory.

    <cache>/examples/<task>-<split>-<key>/
        data-00000-of-00001.arrow, dataset_info.json, state.json    the examples (datasets' save_to_disk)
        lines.npy, skipped.npy                                      where each example starts; rows skipped
        split.json                                                  written last: the rest of SplitData

The key hashes the file's bytes (SHA-256: the same bytes read the same way give the same examples, a
changed byte is another entry) and every setting of the task that may change what reading makes of them:
all of the task's fields except the few listed in NOT_READ, which only decide what happens to examples
after they are read. A field added to tasks later is part of the key until someone lists it there, so a
new setting can cause a needless read, never a stale one. Hashing the file costs a fraction of a second
per hundred megabytes; reading it costs seconds per million rows.

Splits that do not come from a local file (the hub) are read as before: datasets keeps its own cache.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path

import datasets
import numpy as np

from mtbert.data.encoding import cache_dir, examples_fingerprint, progress_bars, staged_entry
from mtbert.data.reading import SplitData, read_split, split_path
from mtbert.tasks import Task

VERSION = 1
NOT_READ = frozenset({"files", "pooler", "pair_encoding", "siamese_regression", "head", "batch_size", "loss_weight",
                      "max_train_examples", "class_balanced", "prompt", "metrics", "main_metric", "eval_examples",
                      "eval_every", "streaming"})
"Task fields that do not change what is read from a file (`files`: the file's bytes are hashed instead)."
DONE = "split.json"


def file_digest(path: Path) -> str:
    with open(path, "rb") as file:
        return hashlib.file_digest(file, "sha256").hexdigest()


def read_key(task: Task, split: str, path: Path) -> str:
    settings = {f.name: getattr(task, f.name) for f in dataclasses.fields(task) if f.name not in NOT_READ}
    parts = [VERSION, split, file_digest(path), json.dumps(settings, sort_keys=True, default=_plain)]
    return hashlib.sha256(json.dumps(parts).encode()).hexdigest()[:24]


def _plain(value):
    return dataclasses.asdict(value) if dataclasses.is_dataclass(value) else str(value)


def read_split_cached(task: Task, split: str, data_dir: str | Path, *, progress: bool = False) -> SplitData:
    """`split` of `task` as reading.read_split gives it, memory-mapped from the examples cache (read and
    stored on a miss). The result also carries its examples' fingerprint, so nothing reads every example
    again to key the tokenisation cache."""
    path = split_path(task, split, data_dir)
    try:
        key = read_key(task, split, path) if path is not None and path.is_file() else None
    except OSError:
        key = None  # unreadable: read_split says so, in its words
    if key is None:
        return read_split(task, split, data_dir)
    folder = cache_dir() / "examples" / f"{task.name}-{split}-{key}"
    cached = _load(folder)
    if cached is not None:
        return cached
    data = read_split(task, split, data_dir)
    data.fingerprint = examples_fingerprint(data.dataset)
    _store(folder, data, progress)
    return _load(folder) or data


def _load(folder: Path) -> SplitData | None:
    """The cached split, or None when the entry is absent or incomplete."""
    try:
        meta = json.loads((folder / DONE).read_text(encoding="utf-8"))
        dataset = datasets.load_from_disk(str(folder))
        lines = np.load(folder / "lines.npy", mmap_mode="r")
        skipped = np.load(folder / "skipped.npy").tolist()
    except (OSError, ValueError, FileNotFoundError):
        return None
    return SplitData(dataset, meta["source"], meta["labelled"], skipped, meta["skip_reason"], lines,
                     ids_are_positions=meta["ids_are_positions"], fingerprint=meta["fingerprint"])


def _store(folder: Path, data: SplitData, progress: bool) -> None:
    """Write the entry (see encoding.staged_entry), split.json last."""
    with staged_entry(folder, "data cache") as staging:
        with progress_bars(progress, len(data.dataset)):
            data.dataset.save_to_disk(str(staging))
        np.save(staging / "lines.npy", np.asarray(data.lines if data.lines is not None else [], dtype=np.int64))
        np.save(staging / "skipped.npy", np.asarray(data.skipped_lines, dtype=np.int64))
        meta = {"source": data.source, "labelled": data.labelled, "skip_reason": data.skip_reason,
                "ids_are_positions": data.ids_are_positions, "fingerprint": data.fingerprint,
                "examples": len(data.dataset)}
        (staging / DONE).write_text(json.dumps(meta, indent=1) + "\n", encoding="utf-8")
