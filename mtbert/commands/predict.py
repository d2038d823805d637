"""`mtbert predict`: labels or scores for new sentences, or for a whole split (submission files)."""

from __future__ import annotations

import io
import json
import os
import sys
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TextIO

import datasets

from mtbert import exported
from mtbert.commands.evaluation import model_device, task_models
from mtbert.commands.submission import predict_submission, read_for_submission, submission_path, task_named, write
from mtbert.data.encoding import tokenize_split
from mtbert.data.reading import SplitData
from mtbert.errors import MtbertError
from mtbert.files import check_output_file, write_text_atomically, wrote
from mtbert.inference import TaskPredictions, eval_loader, run_inference
from mtbert.tasks import Task
from mtbert.textfiles import decode_text, read_text


def parse_lines(lines: Iterable[str], task: Task, source: str) -> datasets.Dataset:
    """One example per non-empty line; a pair task takes two tab-separated sentences."""
    a, b = [], []
    for number, line in enumerate(lines, start=1):
        line = line.rstrip("\n").rstrip("\r")
        if not line.strip():
            continue
        parts = line.split("\t")
        if task.is_pair and len(parts) != 2:
            raise MtbertError(f"{source}:{number}: task {task.name} takes a sentence pair: two sentences "
                              f"separated by a tab, got {len(parts)} field(s)")
        if not task.is_pair and len(parts) != 1:
            raise MtbertError(f"{source}:{number}: task {task.name} takes one sentence per line, got a tab")
        a.append(parts[0].strip())
        b.append(parts[1].strip() if task.is_pair else "")
    if not a:
        raise MtbertError(f"{source}: no sentences to predict")
    columns = {"id": [str(i) for i in range(len(a))], "text_a": a}
    if task.is_pair:
        columns["text_b"] = b
    return datasets.Dataset.from_dict(columns)


def label_name(task: Task, index: int) -> str:
    return task.label_names[index] if task.label_names else str(index)


def records(task: Task, texts: list[list[str]], result: TaskPredictions) -> list[dict]:
    out = []
    for i, pred in enumerate(result.predictions):
        record = {"input": texts[i] if task.is_pair else texts[i][0]}
        if task.kind == "regression":
            record["score"] = round(float(pred), 6)
        else:
            record["label"] = label_name(task, int(pred))
            record["probabilities"] = {label_name(task, c): round(float(p), 6)
                                       for c, p in enumerate(result.probabilities[i])}
        out.append(record)
    return out


def write_records(rows: list[dict], task: Task, out: TextIO, fmt: str) -> None:
    if fmt == "jsonl":
        for row in rows:
            out.write(json.dumps(row, ensure_ascii=False) + "\n")
        return
    if task.kind == "regression":
        out.write("score\n")
        out.writelines(f"{row['score']}\n" for row in rows)
        return
    names = [label_name(task, c) for c in range(task.num_labels)]
    out.write("label\t" + "\t".join(f"p_{n}" for n in names) + "\n")
    for row in rows:
        out.write(row["label"] + "\t" + "\t".join(f"{row['probabilities'][n]:.6f}" for n in names) + "\n")


def backend_model(loaded: exported.LoadedModel, task: Task, backend: str = "torch", quantize: str | None = None):
    """What runs the predictions: the torch model with the recipe's speed switches, or the task exported to
    ONNX and run by ONNX Runtime (the same path as `mtbert evaluate --backend`: evaluation.task_models)."""
    return task_models(loaded, task.name, [(backend, quantize)])[(backend, quantize)]


def predict_lines(ckpt: str | Path, task_name: str, lines: Iterable[str], source: str, out: TextIO,
                  fmt: str = "tsv", batch_size: int = 128, backend: str = "torch", quantize: str | None = None) -> int:
    loaded = exported.load_model(ckpt)
    task = task_named(loaded.tasks, task_name)
    model = backend_model(loaded, task, backend, quantize)
    dataset = parse_lines(lines, task, source)
    split = SplitData(dataset, source, labelled=False)
    # Sentences piped through are often a handful: progress bars only when a person watches stderr.
    watched = sys.stderr.isatty()
    tokenized = tokenize_split(split, task, loaded.tokenizer, loaded.recipe.model.max_length, use_cache=False,
                               progress=watched)
    device = model_device(model)
    result = run_inference(model.to(device), task,
                           eval_loader(tokenized, batch_size, loaded.tokenizer.pad_token_id or 0,
                                       max_tokens=loaded.recipe.speed.eval_max_tokens),
                           device=device, progress=watched)
    texts = [[a, b] for a, b in zip(dataset["text_a"], dataset["text_b"])] if task.is_pair \
        else [[a] for a in dataset["text_a"]]
    write_records(records(task, texts, result), task, out, fmt)
    return len(texts)


def predict_split(ckpt: str | Path, task_name: str, split: str, output: str | os.PathLike[str] | None,
                  data_dir: str | None = None, batch_size: int = 128,
                  report: Callable[[str], None] = print, backend: str = "torch", quantize: str | None = None) -> Path:
    """Predict every example of a split and write the task's submission file (see submission.py):
    the cs224n files for sst, quora and sts, the GLUE server's for GLUE tasks, else id + prediction.

    output: None (the standard file name, here), a folder (an existing one, or a name that ends with a
    slash or has no file extension: created, the standard name inside) or the file itself."""
    loaded = exported.load_model(ckpt, data_dir=data_dir)
    task = task_named(loaded.tasks, task_name)
    model = backend_model(loaded, task, backend, quantize)
    submission = read_for_submission(loaded, task, split, submission_path(output, task, split), report)
    predict_submission(loaded, submission, batch_size, model=model)
    return write(submission, report)


def read_input(path: Path | None) -> tuple[Iterable[str], str]:
    """The lines of `path`, or of standard input when it is piped; decoded strictly as UTF-8."""
    if path is None:
        if sys.stdin.isatty():
            raise MtbertError("no input: pass --input FILE, or pipe sentences in (one per line)")
        stream = getattr(sys.stdin, "buffer", None)
        text = decode_text(stream.read(), "<stdin>") if stream is not None else sys.stdin.read()
        return io.StringIO(text), "<stdin>"
    # io.StringIO splits lines at "\n" only, unlike str.splitlines (which also splits at U+2028 and others)
    return io.StringIO(read_text(path, "input file")), str(path)


def run(ckpt: Path, task: str, input: Path | None, output: str | None, fmt: str, split: str | None,
        data_dir: str | None, batch_size: int, say: Callable[[str], None], backend: str = "torch",
        quantize: str | None = None) -> None:
    """`mtbert predict`: lines of --input (or stdin) to stdout or --output, or with --split, the task's
    submission file; `say` reports on stderr."""
    if fmt not in ("tsv", "jsonl"):
        raise MtbertError(f"--format: expected tsv or jsonl, got {fmt!r}")
    if split:
        path = predict_split(ckpt, task, split, output, data_dir, batch_size, report=say, backend=backend,
                             quantize=quantize)
        say(f"wrote {path}")
        return
    target = Path(output) if output is not None else None
    if target is not None:
        check_output_file(target, "--output")
    lines, source = read_input(input)
    if target is None:
        predict_lines(ckpt, task, lines, source, sys.stdout, fmt, batch_size, backend, quantize)
        return
    buffer = io.StringIO()  # written in one go, so a failure half-way leaves no partial file
    count = predict_lines(ckpt, task, lines, source, buffer, fmt, batch_size, backend, quantize)
    existed = target.exists()
    write_text_atomically(target, buffer.getvalue())
    say(f"{wrote(existed)} {target} ({count} predictions)")
