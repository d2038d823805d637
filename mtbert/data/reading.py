"""Read a task's split from its file (or the hub) into a `datasets.Dataset` of examples.

Every example has the columns `id` (str), `text_a` (str), `text_b` (str, pair tasks only) and, when
the split is labelled, `label` (int class index, or float score). Rows with an empty text or label
are skipped and reported by line; a label that is present but invalid stops the read with an error
naming the file and line, since it means the file and the recipe disagree.

Files are decoded strictly as UTF-8 (mtbert/textfiles.py). Quoted formats (cs224n, csv, tsv) are read
with a strict CSV dialect, and damage that a lenient reader would turn into silently merged rows is an
error naming the line: a quote never closed, text after a closing quote, or a quoted field that runs
over lines which look like rows of their own. A row with more fields than the header (a tab inside
unquoted GLUE text) is an error too, since its columns have shifted.
"""

from __future__ import annotations

import csv
import itertools
import json
import math
import re
import sys
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import datasets
import numpy as np

from mtbert.errors import MtbertError
from mtbert.tasks import Task
from mtbert.textfiles import read_text

csv.field_size_limit(min(sys.maxsize, 2**31 - 1))  # IMDB-style reviews exceed the 128 KiB default


@dataclass
class SplitData:
    """One split of one task, with what was skipped on the way."""

    dataset: datasets.Dataset
    source: str
    labelled: bool
    skipped_lines: list[int] = field(default_factory=list)
    skip_reason: str = ""
    lines: np.ndarray | None = None
    "The line each example starts on, in the dataset's order; None when the split did not come from a file."
    ids_are_positions: bool = False
    "True when the source has no id column, so each example's id is its position."
    fingerprint: str | None = None
    "encoding.examples_fingerprint of the dataset, when already known (a cached read stores it)."

    def where(self, index: int) -> str:
        """The line (or, without lines, the position) of example `index`, for messages."""
        return f"line {self.lines[index]}" if self.lines is not None else f"example {index}"

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
    if path is not None and path.exists():
        return _read_file(task, split, path)
    if task.hub is not None and (path is None or not path.parent.exists()):
        return _read_hub(task, split)
    if path is None:
        raise MtbertError(f"task {task.name}: no {split} file is set (tasks.{task.name}.{split}_file)")
    raise MtbertError(f"{path}: {split} file of task {task.name} not found (data_dir is {data_dir}; set it in "
                      f"the recipe, with --data-dir or with MTBERT_DATA_DIR)")


def _rows(task: Task, path: Path) -> Iterator[tuple[int, dict[str, str]]]:
    """(line number, row) pairs; the line is where the row starts in the file."""
    text = read_text(path, "data file")  # utf-8 only; MRPC's byte-order mark is dropped
    if task.format == "jsonl":
        return _json_rows(task, path, json_objects(path, text))
    return _table_rows(task, path, _lines(text))


def _used_columns(task: Task) -> list[str]:
    return [c for c in (*task.text_columns, task.label_column, task.id_column) if c]


def _json_rows(task: Task, path: Path, objects: Iterator[tuple[int, dict]]) -> Iterator[tuple[int, dict[str, str]]]:
    used = set(_used_columns(task))
    for number, row in objects:
        yield number, {k: _json_field(v, f"{path}:{number}", k) if k in used else "" for k, v in row.items()}


def json_objects(path: Path, text: str | Iterable[str]) -> Iterator[tuple[int, dict]]:
    """(line number, object) for each non-blank line of a JSON-lines file (its text, or its lines split at "\n"
    alone); anything but an object is an error."""
    # Only "\n" ends a JSON line: str.splitlines would also split inside a string holding U+2028.
    lines = text.split("\n") if isinstance(text, str) else text
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise MtbertError(f"{path}:{number}: not valid JSON: {e.msg}") from None
        if not isinstance(row, dict):
            raise MtbertError(f"{path}:{number}: expected a JSON object per line, got a JSON {_json_type(row)}")
        yield number, row


def _json_field(value, where: str, key: str) -> str:
    """A field the task reads, as text: a string or a number; null is an empty field."""
    if value is None:
        return ""
    if isinstance(value, (dict, list)):
        raise MtbertError(f"{where}: field {key!r} holds a JSON {_json_type(value)}; expected text or a number")
    return value if isinstance(value, str) else json.dumps(value)


def _json_type(value) -> str:
    return {dict: "object", list: "array", str: "string", bool: "boolean"}.get(type(value), "number")


def _table_rows(task: Task, path: Path, lines: Iterable[str]) -> Iterator[tuple[int, dict[str, str]]]:
    delimiter = "," if task.format == "csv" else "\t"
    # GLUE files are TSV without quoting: a '"' is part of the text, and reading them with CSV quoting
    # silently merges rows. The cs224n files and user csv/tsv files use normal CSV quoting, read strictly.
    quoted = task.format != "glue"
    reader = csv.reader(lines, delimiter=delimiter,
                        quoting=csv.QUOTE_MINIMAL if quoted else csv.QUOTE_NONE, strict=quoted)
    records = _records(reader, path)
    first = next(records, None)
    if first is None:
        return
    if task.columns and not all(c in first[2] for c in task.text_columns):
        header = task.columns  # a headerless file (GLUE CoLA train/dev): its first line is data
        pending = [first]
    else:
        header = [c.strip() for c in first[2]]
        _check_header(task, path, header)
        pending = []
    for start, end, row in itertools.chain(pending, records):
        if not row:
            continue
        if quoted and end > start:
            _check_swallowed(path, start, end, row, delimiter, len(header))
        if len(row) > len(header) and any(f.strip() for f in row[len(header):]):
            hint = "a tab inside unquoted text?" if not quoted else f"an unquoted {delimiter!r} inside a field?"
            raise MtbertError(f"{path}:{start}: {len(row)} fields, but the header has {len(header)} ({hint})")
        yield start, _padded(header, row)


_LINE = re.compile(r"[^\r\n]*(?:\r\n|\r|\n)|[^\r\n]+\Z")


def _lines(text: str) -> Iterator[str]:
    """The lines of `text` with their endings, split as a file opened with newline="" splits them (at \n, \r\n
    and \r), one at a time: io.StringIO would hold the text again, at four bytes a character."""
    return (match.group() for match in _LINE.finditer(text))


def _records(reader, path: Path) -> Iterator[tuple[int, int, list[str]]]:
    """(first line, last line, fields) of each record; quoting the strict reader rejects is an error."""
    start = 1
    while True:
        try:
            row = next(reader)
        except StopIteration:
            return
        except csv.Error as e:
            raise MtbertError(_quoting_error(path, start, reader.line_num, str(e))) from None
        yield start, reader.line_num, row
        start = reader.line_num + 1


def _quoting_error(path: Path, start: int, end: int, problem: str) -> str:
    fix = 'double a quote that is part of the text ("")'
    if "end of data" in problem:
        return (f"{path}:{start}: a quote opened in this row is never closed: it swallows the rest of the file "
                f"(to line {end}); close it, or {fix}")
    opened = f" (the quoted field opened on line {start})" if end > start else ""
    return f"{path}:{end}: text after a closing quote{opened}; quote the whole field, or {fix}"


_NEWLINE = re.compile(r"\r\n|\r|\n")


def _check_swallowed(path: Path, start: int, end: int, row: list[str], delimiter: str, width: int) -> None:
    """A quoted field may span lines, but not over lines that hold a row's worth of delimiters: that is
    a stray quote whose closing partner, rows later, merged every row between them into one field."""
    needed = max(width - 1, 1)
    for value in row:
        if any(line.count(delimiter) >= needed for line in _NEWLINE.split(value)[1:]):
            raise MtbertError(f"{path}:{start}: a quoted field runs from this line to line {end}, over lines that "
                              f"look like rows of their own (a stray quote?); close it on its line, or double a "
                              f'quote that is part of the text ("")')


def _check_header(task: Task, path: Path, header: list[str]) -> None:
    for name in dict.fromkeys(_used_columns(task)):
        if header.count(name) > 1:
            raise MtbertError(f"{path}:1: column {name!r} appears {header.count(name)} times in the header, so "
                              f"which one task {task.name} reads is ambiguous")


def _padded(header: list[str], row: list[str]) -> dict[str, str]:
    """A row as a dict with every header column present; a short row's missing fields are empty."""
    return dict(zip(header, row + [""] * (len(header) - len(row))))


CHUNK = 100_000
"Examples gathered as Python objects before they become a compact Arrow chunk: a big file's read stays small."


def _read_file(task: Task, split: str, path: Path) -> SplitData:
    columns = _empty_columns()
    chunks: list[datasets.Dataset] = []
    lines: list[int] = []
    skipped: list[int] = []
    reasons: set[str] = set()
    labelled = None
    seen_columns: set[str] = set()
    for number, row in _rows(task, path):
        if not seen_columns:
            seen_columns = set(row)
            _check_columns(task, split, path, seen_columns)
            labelled = task.label_column in seen_columns
        example = row_example(task, row, len(lines), labelled, f"{path}:{number}")
        if isinstance(example, str):
            skipped.append(number)
            reasons.add(example)
            continue
        for name, value in example.items():
            columns[name].append(value)
        lines.append(number)
        if len(columns["id"]) == CHUNK:
            chunks.append(_to_dataset(task, columns, labelled))
            columns = _empty_columns()
    if not lines:
        raise MtbertError(f"{path}: the {split} split of task {task.name} has no examples")
    if split != "test" and not labelled:
        raise MtbertError(f"{path}: no label column '{task.label_column}' (columns: {', '.join(sorted(seen_columns))})")
    if columns["id"] or not chunks:
        chunks.append(_to_dataset(task, columns, labelled))
    dataset = chunks[0] if len(chunks) == 1 else datasets.concatenate_datasets(chunks)
    return SplitData(dataset, str(path), labelled, skipped, " and ".join(sorted(reasons)),
                     np.array(lines, dtype=np.int64),
                     ids_are_positions=task.id_column is None or task.id_column not in seen_columns)


def row_example(task: Task, row: dict[str, str], index: int, labelled: bool, where: str) -> dict | str:
    """The example (id, text_a, text_b, label if labelled) a row holds, or why it is skipped: "empty text" or
    "empty label"; `index` is its position among the examples (its id without an id column)."""
    texts = [(row.get(c) or "").strip() for c in task.text_columns]
    raw_label = (row.get(task.label_column) or "").strip() if labelled else None
    if not all(texts) or (labelled and not raw_label):
        return "empty label" if labelled and not raw_label and all(texts) else "empty text"
    example = {"id": _example_id(task, row, index), "text_a": texts[0], "text_b": texts[1] if task.is_pair else ""}
    if labelled:
        example["label"] = parse_label(task, raw_label, where)
    return example


def stream_rows(task: Task, path: Path) -> Iterator[tuple[int, dict]]:
    """(line number, example) of each example of a train file read line by line, never whole (a streamed task:
    data/streamed.py); rows with an empty text or label are passed over. Errors name the file and line."""
    try:
        with open(path, encoding="utf-8-sig", newline="\n" if task.format == "jsonl" else "") as file:
            rows = _json_rows(task, path, json_objects(path, file)) if task.format == "jsonl" else \
                _table_rows(task, path, file)
            labelled, index = None, 0
            for number, row in rows:
                if labelled is None:
                    _check_columns(task, "train", path, set(row))
                    labelled = task.label_column in row
                    if not labelled:
                        raise MtbertError(f"{path}: no label column '{task.label_column}' "
                                          f"(columns: {', '.join(sorted(row))})")
                example = row_example(task, row, index, labelled, f"{path}:{number}")
                if not isinstance(example, str):
                    yield number, example
                    index += 1
    except FileNotFoundError:
        raise MtbertError(f"{path}: train file of task {task.name} not found") from None
    except UnicodeDecodeError as e:
        raise MtbertError(f"{path}: not UTF-8 text ({e.reason} at a byte of the file)") from None
    except OSError as e:
        raise MtbertError(f"{path}: cannot read the data file ({e.strerror or e})") from None


def _empty_columns() -> dict[str, list]:
    return {"id": [], "text_a": [], "text_b": [], "label": []}


def _check_columns(task: Task, split: str, path: Path, present: set[str]) -> None:
    missing = [c for c in task.text_columns if c not in present]
    if missing:
        raise MtbertError(f"{path}: task {task.name} needs text column(s) {', '.join(repr(c) for c in missing)}; "
                          f"the file has {', '.join(repr(c) for c in sorted(present))}")


def _example_id(task: Task, row: dict[str, str], index: int) -> str:
    """The row's id from the id column (possibly empty: a submission checks), else its position."""
    if task.id_column and task.id_column in row:
        return row[task.id_column].strip()
    return str(index)


def parse_label(task: Task, raw: str, where: str) -> int | float:
    """A label string from a file as a class index or a score; an error names `where`."""
    if task.kind == "regression":
        try:
            score = float(raw)
        except ValueError:
            raise MtbertError(f"{where}: score {raw!r} of task {task.name} is not a number") from None
        if not math.isfinite(score):
            raise MtbertError(f"{where}: score {raw!r} of task {task.name} is not a finite number")
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
    if labelled:
        features["label"] = datasets.Value("float32" if task.kind == "regression" else "int64")
    return datasets.Dataset.from_dict({name: columns[name] for name in features},
                                      features=datasets.Features(features))


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
    return SplitData(_to_dataset(task, columns, labelled), f"hub:{label}[{hub_split}]", labelled,
                     ids_are_positions="idx" not in raw.column_names)
