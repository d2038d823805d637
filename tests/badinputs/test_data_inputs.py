"""The bad-input corpus, data part: damaged data files and `predict --input` files, each one clear line.

Every case writes a small recipe whose one data file (or input file) is wrong in one realistic way,
runs the real command line on it and asserts, through `fails_cleanly`, a non-zero exit, a short
message naming the file and the line, column or byte offset, no traceback and no file changed.
Most cases use `mtbert validate`, which reads every split without training; the rest run the command
that meets the damage (train, evaluate, predict, submit) against a tiny exported checkpoint.
"""

from __future__ import annotations

import gzip
import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import torch

from mtbert.config import dump_recipe, load_recipe
from mtbert.data.loading import load_tokenizer
from mtbert.exported import export_model
from mtbert.tasks import resolve_tasks
from mtbert.training.setup import build_model

from badinput import fails_cleanly
from helpers import write_recipe

MOOD = {"format": "tsv", "train_file": "mood/train.tsv", "dev_file": "mood/dev.tsv", "text_columns": ["text"],
        "label_column": "label", "kind": "classes", "label_names": ["neg", "pos"]}
SCORE = {"format": "csv", "train_file": "score/train.csv", "dev_file": "score/dev.csv", "text_columns": ["text"],
         "label_column": "score", "kind": "regression"}
JSONL = {"format": "jsonl", "train_file": "qa/train.jsonl", "dev_file": "qa/dev.jsonl",
         "text_columns": ["question", "answer"], "label_column": "label", "kind": "binary"}
LAST_TEXT = {"format": "glue", "train_file": "acc/train.tsv", "dev_file": "acc/dev.tsv", "text_columns": ["sentence"],
             "label_column": "label", "kind": "binary"}


def mood_rows(n: int = 8) -> list[str]:
    return ["text\tlabel"] + [f"the film was {'great' if i % 2 else 'awful'}\t{'pos' if i % 2 else 'neg'}"
                              for i in range(n)]


def tsv(lines: list[str]) -> str:
    return "\n".join(lines) + "\n"


def replaced(lines: list[str], number: int, line: str) -> list[str]:
    """`lines` with file line `number` (1-based) replaced."""
    return lines[:number - 1] + [line] + lines[number:]


GOOD = {"mood/train.tsv": tsv(mood_rows()), "mood/dev.tsv": tsv(mood_rows()),
        "score/train.csv": "text,score\nthe film,1.5\na good film,4.0\n",
        "score/dev.csv": "text,score\nthe film,1.5\na good film,4.0\n",
        "qa/train.jsonl": json.dumps({"question": "is it?", "answer": "yes", "label": 1}) + "\n",
        "qa/dev.jsonl": json.dumps({"question": "is it?", "answer": "yes", "label": 1}) + "\n",
        "acc/train.tsv": "label\tsentence\n1\tthe film was great\n0\tfilm the was\n",
        "acc/dev.tsv": "label\tsentence\n1\tthe film was great\n0\tfilm the was\n"}


@dataclass
class Case:
    """A recipe over one task whose file `damaged` holds `content`; the message must name `names`."""

    task: str
    damaged: str
    content: str | bytes
    names: list[str]
    command: str = "validate"
    extra: list[str] = field(default_factory=list)
    task_fields: dict = field(default_factory=dict)


def sst_file(lines: list[str]) -> str:
    return tsv(["\tid\tsentence\tsentiment"] + lines)


SST_ROWS = [f"{i}\ts{i}\tthe film was great\t{i % 5}" for i in range(8)]

CASES = {
    # Quoting damage: a quote opened and never closed swallows the rest of the file.
    "tsv_quote_never_closed": Case("mood", "mood/train.tsv",
                                   tsv(replaced(mood_rows(), 4, '"the film was great\tpos')), ["train.tsv:4"]),
    "cs224n_quote_never_closed": Case("sst", "cs224n/ids-sst-train.csv",
                                      sst_file(replaced(SST_ROWS, 5, '4\ts4\t"the film was great\t4')),
                                      ["ids-sst-train.csv:6"]),
    "csv_quote_never_closed": Case("score", "score/train.csv",
                                   'text,score\nthe film,1.5\n"a good film,4.0\nthe end,2.0\nfine,3.0\n',
                                   ["train.csv:3"]),
    "tsv_quote_closed_rows_later": Case("mood", "mood/dev.tsv",
                                        tsv(replaced(replaced(mood_rows(), 3, '"the film\tneg'), 6,
                                                     'the film was fine"\tpos')), ["dev.tsv:3"]),
    "cs224n_text_after_closing_quote": Case("sst", "cs224n/ids-sst-dev.csv",
                                            sst_file(replaced(SST_ROWS, 3, '2\ts2\t"great" film\t1')),
                                            ["ids-sst-dev.csv:4"]),
    # Not UTF-8 text.
    "latin1_file": Case("mood", "mood/train.tsv", tsv(replaced(mood_rows(), 3, "un film café\tpos")).encode("latin-1"),
                        ["train.tsv:3", "offset 45"]),
    "utf16_file": Case("mood", "mood/dev.tsv", tsv(mood_rows()).encode("utf-16"), ["dev.tsv", "offset 0"]),
    "utf16_without_bom": Case("mood", "mood/train.tsv", tsv(mood_rows()).encode("utf-16-le"),
                              ["train.tsv", "offset 1", "NUL"]),
    "gzip_given_as_data": Case("mood", "mood/train.tsv", gzip.compress(tsv(mood_rows()).encode(), mtime=0),
                               ["train.tsv", "offset 1"]),
    # Shape of the file.
    "empty_file": Case("mood", "mood/train.tsv", "", ["train.tsv", "no examples"]),
    "header_only": Case("mood", "mood/dev.tsv", "text\tlabel\n", ["dev.tsv", "no examples"]),
    "text_column_missing": Case("mood", "mood/train.tsv", tsv(["sentence\tlabel", "the film\tpos"]),
                                ["train.tsv", "'text'"]),
    "label_column_missing_in_dev": Case("mood", "mood/dev.tsv", tsv(["text", "the film"]), ["dev.tsv", "'label'"]),
    "duplicate_header_column": Case("mood", "mood/train.tsv", tsv(["text\tlabel\ttext", "the film\tpos\tfilm"]),
                                    ["train.tsv:1", "'text'"]),
    "tab_in_unquoted_text_shifts_columns": Case("acc", "acc/train.tsv",
                                                "label\tsentence\n1\tthe film\twas great\n0\tfilm the was\n",
                                                ["train.tsv:2", "3 fields"]),
    "data_file_is_a_folder": Case("mood", "mood/train.tsv", "<folder>", ["train.tsv", "folder"]),
    # Labels.
    "label_not_in_label_names": Case("mood", "mood/train.tsv", tsv(replaced(mood_rows(), 5, "the film\tmeh")),
                                     ["train.tsv:5", "'meh'"]),
    "class_number_out_of_range": Case("sst", "cs224n/ids-sst-train.csv",
                                      sst_file(replaced(SST_ROWS, 2, "1\ts1\tthe film\t5")),
                                      ["ids-sst-train.csv:3", "'5'"]),
    "score_not_a_number": Case("score", "score/train.csv", "text,score\nthe film,high\n", ["train.csv:2", "'high'"]),
    "score_nan": Case("score", "score/dev.csv", "text,score\nthe film,1.5\na good film,nan\n",
                      ["dev.csv:3", "'nan'"]),
    "score_outside_label_range": Case("score", "score/train.csv", "text,score\nthe film,7\n", ["train.csv:2", "7"],
                                      task_fields={"label_range": [0.0, 5.0]}),
    # JSON lines.
    "jsonl_not_json": Case("qa", "qa/train.jsonl", '{"question": "is it?", "answer": "yes", "label": 1\n',
                           ["train.jsonl:1"]),
    "jsonl_array_per_line": Case("qa", "qa/dev.jsonl", '["is it?", "yes", 1]\n', ["dev.jsonl:1", "object"]),
    "jsonl_text_is_an_object": Case("qa", "qa/train.jsonl",
                                    json.dumps({"question": {"text": "is it?"}, "answer": "yes", "label": 1}) + "\n",
                                    ["train.jsonl:1", "'question'"]),
    # The recipe names a format that does not exist.
    "unknown_format_name": Case("mood", "mood/train.tsv", tsv(mood_rows()), ["format", "xlsx"],
                                task_fields={"format": "xlsx"}),
    # Damage met by training: the run stops before it writes anything.
    "train_on_a_swallowed_file": Case("mood", "mood/train.tsv",
                                      tsv(replaced(mood_rows(20), 4, '"the film was great\tpos')),
                                      ["train.tsv:4"], command="train", extra=["train.max_steps=1"]),
}

TASKS = {"mood": MOOD, "score": SCORE, "qa": JSONL, "acc": LAST_TEXT, "sst": {}}


def write_files(data_dir: Path, files: dict[str, str | bytes]) -> None:
    for name, content in files.items():
        path = data_dir / name
        path.parent.mkdir(parents=True, exist_ok=True)
        if content == "<folder>":
            path.mkdir()
        elif isinstance(content, bytes):
            path.write_bytes(content)
        else:
            path.write_text(content, encoding="utf-8")


@pytest.mark.parametrize("name", list(CASES))
def test_bad_data_file(name, tmp_path, tokenizer_dir):
    case = CASES[name]
    recipe = write_recipe(tmp_path, tokenizer_dir, tasks={case.task: {**TASKS[case.task], **case.task_fields}})
    data = tmp_path / "data"
    write_files(data, {k: v for k, v in GOOD.items() if k.split("/")[0] == case.task})
    (data / case.damaged).unlink(missing_ok=True)
    write_files(data, {case.damaged: case.content})
    fails_cleanly([case.command, recipe, *case.extra], names=case.names, watch=[tmp_path])
    assert not (tmp_path / "ckpt").exists()


# ---------------------------------------------------------------------------------------------
# Against a trained model: evaluate, predict and submit meet damaged splits and input files.

@pytest.fixture(scope="module")
def ckpt(tmp_path_factory, tokenizer_dir) -> Path:
    """A tiny exported model for sst; random weights are enough to reach the data."""
    tmp = tmp_path_factory.mktemp("bad-data-ckpt")
    recipe = load_recipe(write_recipe(tmp, tokenizer_dir, tasks={"sst": {}}))
    tokenizer = load_tokenizer(recipe.model.tokenizer)
    torch.manual_seed(0)
    model = build_model(recipe, resolve_tasks(recipe), tokenizer).eval()
    export_model(model, tokenizer, tmp / "ckpt", recipe=dump_recipe(recipe), metrics={})
    return tmp / "ckpt"


def data_copy(ckpt: Path, tmp_path: Path, name: str, content: str | bytes) -> Path:
    """The checkpoint's data folder copied under tmp_path, with cs224n/`name` replaced by `content`."""
    data = tmp_path / "data"
    shutil.copytree(ckpt.parent / "data", data)
    write_files(data, {f"cs224n/{name}": content})
    return data


TEST_ROWS = [f"{i}\tt{i}\tthe film was great" for i in range(6)]


PREDICT_CASES = {
    "evaluate_latin1_dev": (["evaluate", "{ckpt}", "--data-dir", "{data}"], "ids-sst-dev.csv",
                            sst_file(replaced(SST_ROWS, 2, "1\ts1\tle café\t1")).encode("latin-1"),
                            ["ids-sst-dev.csv", "offset"]),
    "evaluate_dev_quote_never_closed": (["evaluate", "{ckpt}", "--data-dir", "{data}"], "ids-sst-dev.csv",
                                        sst_file(replaced(SST_ROWS, 7, '6\ts6\t"the film\t1')),
                                        ["ids-sst-dev.csv:8"]),
    "predict_split_duplicate_ids": (["predict", "--ckpt", "{ckpt}", "--task", "sst", "--split", "test", "--output",
                                     "{tmp}/out.csv", "--data-dir", "{data}"], "ids-sst-test-student.csv",
                                    tsv(["\tid\tsentence"] + replaced(TEST_ROWS, 5, "4\tt1\tthe film")),
                                    ["ids-sst-test-student.csv", "'t1'", "lines 3 and 6"]),
    "submit_duplicate_ids": (["submit", "{ckpt}", "--to", "{tmp}/sub", "--data-dir", "{data}"],
                             "ids-sst-test-student.csv",
                             tsv(["\tid\tsentence"] + TEST_ROWS + ["6\tt0\tthe film"]),
                             ["ids-sst-test-student.csv", "'t0'", "lines 2 and 8"]),
    "predict_split_test_quote_never_closed": (["predict", "--ckpt", "{ckpt}", "--task", "sst", "--split", "test",
                                               "--output", "{tmp}/out/", "--data-dir", "{data}"],
                                              "ids-sst-test-student.csv",
                                              tsv(["\tid\tsentence"] + replaced(TEST_ROWS, 2, '1\tt1\t"the film')),
                                              ["ids-sst-test-student.csv:3"]),
}


@pytest.mark.parametrize("name", list(PREDICT_CASES))
def test_bad_split_against_a_model(name, ckpt, tmp_path):
    args, damaged, content, names = PREDICT_CASES[name]
    data = data_copy(ckpt, tmp_path, damaged, content)
    args = [a.format(ckpt=ckpt, data=data, tmp=tmp_path) for a in args]
    fails_cleanly(args, names=names, watch=[tmp_path, ckpt])
    assert not (tmp_path / "sub").exists() and not (tmp_path / "out.csv").exists()
    assert not (tmp_path / "out").exists()


INPUT_CASES = {
    "input_latin1": ("sentences.txt", "the film\nun café\n".encode("latin-1"), ["sentences.txt:2", "offset 15"]),
    "input_png": ("photo.png", b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR", ["photo.png", "offset 0"]),
    "input_is_a_folder": ("inputs", "<folder>", ["inputs", "folder"]),
    "input_only_blank_lines": ("blank.txt", "\n  \n\n", ["blank.txt", "no sentences"]),
}


@pytest.mark.parametrize("name", list(INPUT_CASES))
def test_bad_predict_input(name, ckpt, tmp_path):
    file_name, content, names = INPUT_CASES[name]
    write_files(tmp_path, {file_name: content})
    fails_cleanly(["predict", "--ckpt", ckpt, "--task", "sst", "--input", tmp_path / file_name,
                   "--output", tmp_path / "out.tsv"], names=names, watch=[tmp_path, ckpt])
    assert not (tmp_path / "out.tsv").exists()
