"""Read a task's split from its file (or the hub) into a `datasets.Dataset` of examples.

Every example has the columns `id` (str), `text_a` (str), `text_b` (str, pair tasks only) and, when
the split is labelled, `label` (int class index, or float score). Rows with an empty text or label
are skipped and reported by line; a label that is present but invalid stops the read with an error
naming the file and line, since it means the file and the recipe disagree.
"""

from __future__ import annotations

import csv
import json
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import datasets

from mtbert.errors import MtbertError
from mtbert.tasks import Task

csv.field_size_limit(min(sys.maxsize, 2**31 - 1))  # IMDB-style reviews exceed the 128 KiB default


@dataclass
class SplitData:
    """One split of one task, with what was skipped on the way."""

    dataset: datasets.Dataset
    source: str
    labelled: bool
    skipped_lines: list[int] = field(default_factory=list)
    skip_reason: str = ""

    def skip_report(self) -> str | None:
        if not self.skipped_lines:
            return None
        lines = ", ".join(str(n) for n in self.skipped_lines[:10])
        more = f" and {len(self.skipped_lines) - 10} more" if len(self.skipped_lines) > 10 else ""
        return (f"{self.source}: skipped {len(self.skipped_lines)} malformed row(s) ({self.skip_reason}) "
                f"at line(s) {lines}{more}")


def split_path(task: Task, split: str, data_dir: str | Path) -> Path | None:
    name = task.files.get(split)
    return Path(data_dir) / name if name else None


def read_split(task: Task, split: str, data_dir: str | Path) -> SplitData:
    """The examples of `split` (train, dev or test) for `task`, from data_dir or, failing that, the hub."""
    path = split_path(task, split, data_dir)
    if path is not None and path.is_file():
        return _read_file(task, split, path)
    if task.hub is not None and (path is None or not path.parent.exists()):
        return _read_hub(task, split)
    if path is None:
        raise MtbertError(f"task {task.name}: no {split} file is set (tasks.{task.name}.{split}_file)")
    raise MtbertError(f"{path}: {split} file of task {task.name} not found (data_dir is {data_dir}; set it in "
                      f"the recipe, with --data-dir or with MTBERT_DATA_DIR)")


def _rows(task: Task, path: Path) -> Iterator[tuple[int, dict[str, str]]]:
    """(line number, row) pairs; the line is where the row starts in the file."""
    if task.format == "jsonl":
        with path.open(encoding="utf-8-sig") as f:
            for number, line in enumerate(f, start=1):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as e:
                    raise MtbertError(f"{path}:{number}: not valid JSON: {e.msg}") from None
                if not isinstance(row, dict):
                    raise MtbertError(f"{path}:{number}: expected a JSON object per line")
                yield number, {k: "" if v is None else str(v) for k, v in row.items()}
        return
    delimiter = "," if task.format == "csv" else "\t"
    # GLUE files are TSV without quoting: a '"' is part of the text, and reading them with CSV quoting
    # silently merges rows. The cs224n files and user csv/tsv files use normal CSV quoting.
    quoting = csv.QUOTE_NONE if task.format == "glue" else csv.QUOTE_MINIMAL
    with path.open(encoding="utf-8-sig", newline="") as f:  # utf-8-sig drops MRPC's byte-order mark
        reader = csv.reader(f, delimiter=delimiter, quoting=quoting)
        first = next(reader, None)
        if first is None:
            return
        start = reader.line_num + 1
        if task.columns and not all(c in first for c in task.text_columns):
            header = task.columns  # a headerless file (GLUE CoLA train/dev): its first line is data
            yield 1, _padded(header, first)
        else:
            header = [c.strip() for c in first]
        for row in reader:
            if row:
                yield start, _padded(header, row)
            start = reader.line_num + 1


def _padded(header: list[str], row: list[str]) -> dict[str, str]:
    """A row as a dict with every header column present; a short row's missing fields are empty."""
    return dict(zip(header, row + [""] * (len(header) - len(row))))


def _read_file(task: Task, split: str, path: Path) -> SplitData:
    columns: dict[str, list] = {"id": [], "text_a": [], "text_b": [], "label": []}
    skipped: list[int] = []
    reasons: set[str] = set()
    labelled = None
    seen_columns: set[str] = set()
    for number, row in _rows(task, path):
        if not seen_columns:
            seen_columns = set(row)
            _check_columns(task, split, path, seen_columns)
            labelled = task.label_column in seen_columns
        texts = [(row.get(c) or "").strip() for c in task.text_columns]
        raw_label = (row.get(task.label_column) or "").strip() if labelled else None
        if not all(texts) or (labelled and not raw_label):
            skipped.append(number)
            reasons.add("empty label" if labelled and not raw_label and all(texts) else "empty text")
            continue
        columns["id"].append(_example_id(task, row, len(columns["id"])))
        columns["text_a"].append(texts[0])
        columns["text_b"].append(texts[1] if task.is_pair else "")
        if labelled:
            columns["label"].append(parse_label(task, raw_label, f"{path}:{number}"))
    if not columns["id"]:
        raise MtbertError(f"{path}: the {split} split of task {task.name} has no examples")
    if split != "test" and not labelled:
        raise MtbertError(f"{path}: no label column '{task.label_column}' (columns: {', '.join(sorted(seen_columns))})")
    return SplitData(_to_dataset(task, columns, labelled), str(path), labelled, skipped,
                     " and ".join(sorted(reasons)))


def _check_columns(task: Task, split: str, path: Path, present: set[str]) -> None:
    missing = [c for c in task.text_columns if c not in present]
    if missing:
        raise MtbertError(f"{path}: task {task.name} needs text column(s) {', '.join(repr(c) for c in missing)}; "
                          f"the file has {', '.join(repr(c) for c in sorted(present))}")


def _example_id(task: Task, row: dict[str, str], index: int) -> str:
    if task.id_column and row.get(task.id_column):
        return row[task.id_column].strip()
    return str(index)


def parse_label(task: Task, raw: str, where: str) -> int | float:
    """A label string from a file as a class index or a score; an error names `where`."""
    if task.kind == "regression":
        try:
            score = float(raw)
        except ValueError:
            raise MtbertError(f"{where}: score {raw!r} of task {task.name} is not a number") from None
        if task.label_range and not task.label_range[0] <= score <= task.label_range[1]:
            raise MtbertError(f"{where}: score {score} of task {task.name} is outside "
                              f"[{task.label_range[0]}, {task.label_range[1]}]")
        return score
    if task.label_names is not None and raw in task.label_names:
        return task.label_names.index(raw)
    try:
        value = float(raw)
    except ValueError:
        known = f"one of {task.label_names} or a class number" if task.label_names else \
            "a class number (set label_names for text labels)"
        raise MtbertError(f"{where}: label {raw!r} of task {task.name} is not {known}") from None
    if not value.is_integer() or not 0 <= value < task.num_labels:
        raise MtbertError(f"{where}: label {raw!r} of task {task.name} is out of range 0..{task.num_labels - 1}")
    return int(value)


def _to_dataset(task: Task, columns: dict[str, list], labelled: bool) -> datasets.Dataset:
    features = {"id": datasets.Value("string"), "text_a": datasets.Value("string")}
    if task.is_pair:
        features["text_b"] = datasets.Value("string")
    else:
        columns.pop("text_b")
    if labelled:
        features["label"] = datasets.Value("float32" if task.kind == "regression" else "int64")
    else:
        columns.pop("label")
    return datasets.Dataset.from_dict(columns, features=datasets.Features(features))


def _read_hub(task: Task, split: str) -> SplitData:
    hub = task.hub
    hub_split = hub.splits.get(split)
    if hub_split is None:
        raise MtbertError(f"task {task.name}: no hub split is mapped to '{split}'")
    label = f"{hub.path}/{hub.name}" if hub.name else hub.path
    try:
        raw = datasets.load_dataset(hub.path, hub.name, split=hub_split)
    except Exception as e:  # noqa: BLE001 - offline and missing-dataset errors come in many types
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise MtbertError(f"task {task.name}: no local folder, and the hub dataset {label} ({hub_split}) could "
                          f"not be loaded: {first}") from None
    labels = raw[hub.label_column] if hub.label_column in raw.column_names else None
    # The hub marks unlabelled test rows with -1.
    labelled = labels is not None and not (split == "test" and all(v == -1 for v in labels[:100]))
    texts = [raw[c] for c in hub.text_columns]
    columns = {"id": [str(i) for i in (raw["idx"] if "idx" in raw.column_names else range(len(raw)))],
               "text_a": texts[0], "text_b": texts[1] if task.is_pair else [], "label": []}
    if labelled:
        columns["label"] = [float(v) if task.kind == "regression" else int(v) for v in labels]
    return SplitData(_to_dataset(task, columns, labelled), f"hub:{label}[{hub_split}]", labelled)
