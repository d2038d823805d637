"""`mtbert init`: a commented recipe for a user's own files, with the columns and the task's kind read from them.

The files are read as mtbert will read them (CSV/TSV with CSV quoting, or JSON lines); the text column(s), the
label column and the kind are guessed and shown, and every guess can be given instead. The recipe is only
written to a new file, and `mtbert validate` accepts it as written.
"""

from __future__ import annotations

import csv
import io
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path

from mtbert.data.reading import json_objects
from mtbert.errors import MtbertError
from mtbert.files import write_text_atomically
from mtbert.textfiles import read_text

LABEL_NAMES = ("label", "labels", "target", "class", "category", "score", "similarity", "rating", "stars",
               "sentiment", "is_duplicate", "gold_label", "y")
ID_NAMES = ("id", "idx", "index", "guid", "uid")
MAX_CLASSES = 50  # more distinct integer labels than this reads as a score
FORMATS = {".csv": "csv", ".tsv": "tsv", ".txt": "tsv", ".jsonl": "jsonl", ".json": "jsonl"}


@dataclass
class Table:
    """A data file as mtbert's reader would see it: its format, header and rows (as text)."""

    path: Path
    format: str
    columns: list[str]
    rows: list[dict[str, str]]


@dataclass
class TaskGuess:
    """What the recipe will say about the task, and why (shown to the user)."""

    text_columns: list[str]
    label_column: str
    id_column: str | None
    kind: str
    num_labels: int | None = None
    label_names: list[str] | None = None
    label_range: list[float] | None = None
    reason: str = ""


def read_table(path: Path) -> Table:
    """The file's rows; the format follows the extension (a .csv whose header has tabs and no comma is TSV)."""
    if not path.is_file():
        raise MtbertError(f"{path}: no such file")
    fmt = FORMATS.get(path.suffix.lower())
    if fmt is None:
        raise MtbertError(f"{path}: cannot tell the format from the extension; use .csv, .tsv or .jsonl")
    text = read_text(path, "data file")
    if fmt == "jsonl":
        rows = [{k: _json_text(v) for k, v in row.items()} for _, row in json_objects(path, text)]
        columns = list(dict.fromkeys(k for row in rows for k in row))
        return Table(path, fmt, columns, rows)
    first = text.split("\n", 1)[0]
    if fmt == "csv" and "\t" in first and "," not in first:
        fmt = "tsv"
    records = list(csv.reader(io.StringIO(text, newline=""), delimiter="," if fmt == "csv" else "\t"))
    if not records:
        raise MtbertError(f"{path}: the file is empty")
    columns = [c.strip() for c in records[0]]
    rows = [dict(zip(columns, record)) for record in records[1:] if record]
    return Table(path, fmt, columns, rows)


def _json_text(value) -> str:
    return "" if value is None else value if isinstance(value, str) else json.dumps(value)


def _is_number(value: str) -> bool:
    try:
        float(value)
    except ValueError:
        return False
    return True


def _pick_label(table: Table, given: str | None, texts: list[str]) -> str:
    if given is not None:
        if given not in table.columns:
            raise MtbertError(f"{table.path}: no column {given!r}; the columns are {', '.join(table.columns)}")
        return given
    named = [c for c in table.columns if c.lower() in LABEL_NAMES and c not in texts]
    if named:
        return named[0]
    rest = [c for c in table.columns if c not in texts and c.lower() not in ID_NAMES and c]
    if not rest:
        raise MtbertError(f"{table.path}: no label column found among {', '.join(table.columns)}; give --label")
    return rest[-1]


def _pick_texts(table: Table, given: list[str], label: str | None) -> list[str]:
    for column in given:
        if column not in table.columns:
            raise MtbertError(f"{table.path}: no column {column!r}; the columns are {', '.join(table.columns)}")
    if given:
        return given
    candidates = [c for c in table.columns if c and c != label and c.lower() not in ID_NAMES + LABEL_NAMES
                  and any(not _is_number(row.get(c, "")) for row in table.rows if row.get(c, "").strip())]
    if not 1 <= len(candidates) <= 2:
        found = ", ".join(candidates) or "none"
        raise MtbertError(f"{table.path}: cannot tell the text column(s) (text columns found: {found}); "
                          "give --text COLUMN (twice for a sentence pair)")
    return candidates


def guess_kind(labels: list[str], column: str) -> TaskGuess:
    """The task's kind from its label values: 0/1 binary, few values or names classes, other numbers a score."""
    values = sorted({v.strip() for v in labels if v.strip()})
    if len(values) < 2:
        raise MtbertError(f"label column {column!r} holds {len(values)} distinct value(s); a task needs two or more")
    guess = TaskGuess([], column, None, "classes")
    if not all(_is_number(v) for v in values):
        guess.label_names, guess.num_labels = values, len(values)
        guess.reason = f"{len(values)} label names"
        return guess
    numbers = sorted({float(v) for v in values})
    integers = all(n.is_integer() for n in numbers)
    if integers and numbers == [0.0, 1.0]:
        guess.kind, guess.reason = "binary", "labels 0 and 1"
    elif integers and numbers == [float(i) for i in range(len(numbers))] and len(numbers) <= MAX_CLASSES:
        guess.num_labels, guess.reason = len(numbers), f"labels 0..{len(numbers) - 1}"
    elif integers and len(numbers) <= MAX_CLASSES:
        guess.label_names, guess.num_labels = [_plain(n) for n in numbers], len(numbers)
        guess.reason = f"{len(numbers)} integer labels, not 0..{len(numbers) - 1}: kept as names"
    else:
        guess.kind, guess.label_range = "regression", [numbers[0], numbers[-1]]
        guess.reason = f"{len(numbers)} distinct numbers from {_plain(numbers[0])} to {_plain(numbers[-1])}"
    return guess


def _plain(number: float) -> str:
    return str(int(number)) if number.is_integer() else repr(number)


def guess_task(train: Table, dev: Table, texts: list[str], label: str | None, kind: str | None) -> TaskGuess:
    texts = _pick_texts(train, texts, label)
    label = _pick_label(train, label, texts)
    for table in (train, dev):
        missing = [c for c in (*texts, label) if c not in table.columns]
        if missing:
            raise MtbertError(f"{table.path}: no column(s) {', '.join(missing)}; the columns are "
                              f"{', '.join(table.columns)}")
    guess = guess_kind([row.get(label, "") for table in (train, dev) for row in table.rows], label)
    if kind is not None and kind != guess.kind:
        guess = _forced_kind(guess, kind, [row.get(label, "") for t in (train, dev) for row in t.rows])
    guess.text_columns = texts
    guess.id_column = next((c for c in train.columns if c.lower() in ID_NAMES and c in dev.columns), None)
    return guess


def _forced_kind(guess: TaskGuess, kind: str, labels: list[str]) -> TaskGuess:
    values = sorted({v.strip() for v in labels if v.strip()})
    if kind == "regression":
        if not all(_is_number(v) for v in values):
            raise MtbertError(f"--kind regression: label column {guess.label_column!r} holds text, not numbers")
        numbers = sorted(float(v) for v in values)
        return TaskGuess([], guess.label_column, None, kind, label_range=[numbers[0], numbers[-1]],
                         reason="--kind regression")
    if kind == "binary":
        if {float(v) if _is_number(v) else v for v in values} != {0.0, 1.0}:
            raise MtbertError(f"--kind binary: label column {guess.label_column!r} holds {', '.join(values[:5])}"
                              " ...; binary labels are 0 and 1 (use --kind classes)")
        return TaskGuess([], guess.label_column, None, kind, reason="--kind binary")
    return TaskGuess([], guess.label_column, None, kind, num_labels=len(values), label_names=values,
                     reason="--kind classes")


def _yaml(value) -> str:
    return json.dumps(value, ensure_ascii=False)


def _relative(path: Path, start: Path) -> str:
    return Path(os.path.relpath(path, start)).as_posix()


def recipe_text(task: str, guess: TaskGuess, train: Table, dev: Table, model: str, output_dir: str) -> str:
    """The recipe, every line commented; paths are relative to where the command ran, as mtbert reads them."""
    data_dir = Path(os.path.commonpath([train.path.resolve().parent, dev.path.resolve().parent]))
    shown_dir = _relative(data_dir, Path.cwd()) if not Path(train.path).is_absolute() else data_dir.as_posix()
    pair = len(guess.text_columns) == 2
    lines = [
        f"# Written by `mtbert init` for {train.path} and {dev.path}.",
        "# Check it with `mtbert validate <this file>`, then train with `mtbert train <this file>`.",
        "# Every key, with its default: docs/reference/recipe.md (or the docs site's Recipe keys page).",
        f"name: {task}",
        "seed: 0",
        _aligned(f"data_dir: {_yaml(shown_dir)}", "the files below are relative to this folder"),
        _aligned(f"output_dir: {_yaml(output_dir)}", "the trained model, its metrics and logs"),
        "model:",
        _aligned(f"  init: {_yaml(model)}", "a hub name or a local folder (config.json + weights); or random"),
        _aligned("  max_length: 128", "longer inputs are truncated (a pair counts both sentences)"),
        "tasks:",
        f"  {task}:",
        _aligned(f"    format: {train.format}", "csv, tsv or jsonl"),
        f"    train_file: {_yaml(_relative(train.path.resolve(), data_dir))}",
        f"    dev_file: {_yaml(_relative(dev.path.resolve(), data_dir))}",
        _aligned(f"    # test_file: test{train.path.suffix}", "optional, labels optional: predict --split test"),
        _aligned(f"    text_columns: {_yaml(guess.text_columns)}", "two: a pair" if pair else "one: a sentence"),
        f"    label_column: {_yaml(guess.label_column)}",
    ]
    if guess.id_column:
        lines.append(_aligned(f"    id_column: {_yaml(guess.id_column)}", "written into predictions"))
    lines.append(_aligned(f"    kind: {guess.kind}", f"guessed: {guess.reason}; classes, binary or regression"))
    if guess.kind == "classes":
        lines.append(f"    num_labels: {guess.num_labels}")
    if guess.label_names:
        lines.append(_aligned(f"    label_names: {_yaml(guess.label_names)}", "class index order; as in the file"))
    if guess.label_range:
        lines.append(_aligned(f"    label_range: {_yaml(guess.label_range)}", "the scores seen in train and dev"))
    metrics = ["pearson", "spearman"] if guess.kind == "regression" else ["accuracy", "f1"]
    lines += [
        _aligned(f"    metrics: {_yaml(metrics)}", "on dev; the first is the task's main score"),
        f"    main_metric: {_yaml(metrics[:1])}",
        _aligned("    pooler: cls", "cls, cls_raw, mean, max, mean_max, swap or stochastic"),
    ]
    if pair:
        lines.append(_aligned("    pair_encoding: cross", "cross: [CLS] a [SEP] b [SEP]; siamese: each alone"))
    lines += [
        "train:",
        "  epochs: 3",
        "  batch_size: 32",
        "  lr: 5.0e-5",
        "  warmup_ratio: 0.1",
        "eval:",
        _aligned("  every_steps: 0", "0: evaluate on dev after each epoch; the best model is exported"),
    ]
    return "\n".join(lines) + "\n"


def _aligned(code: str, comment: str) -> str:
    """A recipe line with its comment in the comment column."""
    return f"{code:<36} # {comment}"


def _task_name(name: str | None, train: Path) -> str:
    name = name or re.sub(r"[^a-z0-9_]+", "_", train.resolve().parent.name.lower()).strip("_") or "task"
    if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name):
        raise MtbertError(f"--task {name!r}: a task name is letters, digits and _, not starting with a digit")
    return name


def run(train: Path, dev: Path, out: Path, *, texts: list[str], label: str | None, kind: str | None,
        task: str | None, model: str, echo) -> None:
    if out.exists() or out.is_symlink():
        raise MtbertError(f"--out {out}: exists; mtbert init never replaces a file (choose another name)")
    train_table, dev_table = read_table(train), read_table(dev)
    if train_table.format != dev_table.format:
        raise MtbertError(f"{train} is {train_table.format} but {dev} is {dev_table.format}; give both in one format")
    if len(texts) > 2:
        raise MtbertError("--text: one column, or two for a sentence pair")
    name = _task_name(task, train)
    guess = guess_task(train_table, dev_table, texts, label, kind)
    echo(f"{train}: {train_table.format}, {len(train_table.rows):,} rows, columns {', '.join(train_table.columns)}")
    echo(f"{dev}: {len(dev_table.rows):,} rows")
    echo(f"task {name}: text {' + '.join(guess.text_columns)}, label {guess.label_column}, {guess.kind} "
         f"({guess.reason})" + (f", ids {guess.id_column}" if guess.id_column else ""))
    write_text_atomically(out, recipe_text(name, guess, train_table, dev_table, model, f"ckpt/{name}"))
    echo(f"wrote {out}; next: mtbert validate {out}")
