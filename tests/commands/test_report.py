"""`mtbert report` and `mtbert evaluate --plots` on a tiny trained run."""

import json
import shutil

import numpy as np
import pytest
from typer.testing import CliRunner

from mtbert.cli import app
from mtbert.commands import plots
from mtbert.commands.evaluation import evaluate_checkpoint
from mtbert.commands.report import read_log, write_report
from mtbert.config import load_recipe
from mtbert.errors import MtbertError
from mtbert.training.loop import train

from helpers import png_size, write_recipe

# sst: 5 classes; quora: binary; sts: regression (siamese); rte-like named classes come from label_names.
EXPECTED = {"training-curves.png", "sst-confusion.png", "sst-labels.png", "quora-confusion.png",
            "quora-labels.png", "sts-scatter.png", "sts-scores.png", "report.md"}


@pytest.fixture(scope="module")
def run(tmp_path_factory, tokenizer_dir):
    tmp = tmp_path_factory.mktemp("report")
    recipe = write_recipe(tmp, tokenizer_dir, eval={"every_steps": 4},
                          tasks={"sst": {"label_names": ["very negative", "negative", "neutral", "positive",
                                                         "very positive"]},
                                 "quora": {}, "sts": {"pair_encoding": "siamese"}})
    train(load_recipe(recipe, ["train.max_steps=8", "train.log_every=2"]))
    return tmp / "ckpt"


@pytest.fixture(scope="module")
def written(run, tmp_path_factory):
    return write_report(run, out=tmp_path_factory.mktemp("written") / "r", progress=False)


def test_report_writes_every_expected_file(written):
    folder = written.folder
    assert {p.name for p in written.files} == EXPECTED
    assert {p.name for p in folder.iterdir()} == EXPECTED  # nothing else, no temporary file
    for path in written.files:
        if path.suffix == ".png":
            wide = path.name == "training-curves.png"
            assert png_size(path) == plots.pixel_size(plots.WIDE if wide else plots.SINGLE), path.name
    text = (folder / "report.md").read_text()
    for name in EXPECTED - {"report.md"}:
        assert f"]({name})" in text, name
    assert "very positive" in text  # class names come from the task's label_names
    assert "From `train_log.jsonl`: 4 logging records, 2 evaluations." in text


def test_report_scores_are_those_of_evaluate(run, written):
    assert written.results == evaluate_checkpoint(run, progress=False)
    text = (written.folder / "report.md").read_text()
    assert "| **overall** |" in text and f"**{written.results['overall']:.4f}**" in text
    sst = written.results["sst"]
    assert f"| sst | classes | 64 | {sst['accuracy']:.4f} | {sst['f1']:.4f} |" in text


def test_cli_report_and_evaluate_plots(run):
    runner = CliRunner()
    result = runner.invoke(app, ["report", str(run), "--tasks", "sts"])
    assert result.exit_code == 0, result.output
    assert (run / "report-dev" / "sts-scatter.png").is_file() and "overall" in result.output
    shutil.rmtree(run / "report-dev")
    result = runner.invoke(app, ["evaluate", str(run), "--plots"])
    assert result.exit_code == 0, result.output
    assert {p.name for p in (run / "report-dev").iterdir()} == EXPECTED
    assert json.loads((run / "eval-dev.json").read_text())["overall"] == pytest.approx(
        evaluate_checkpoint(run, progress=False)["overall"])


def test_run_without_log_or_with_a_cut_off_log(run, tmp_path):
    copy = tmp_path / "ckpt"
    shutil.copytree(run, copy, ignore=shutil.ignore_patterns("report-*"))
    log = copy / "train_log.jsonl"
    lines = log.read_text().splitlines()
    log.write_text("\n".join(lines) + "\n" + lines[0][:10])  # a run stopped while writing a record
    records, note = read_log(log)
    assert len(records) == len(lines) and "cut off" in note
    log.write_text("\n".join([lines[0], "{oops", *lines[1:]]) + "\n")
    with pytest.raises(MtbertError, match=r"train_log\.jsonl:2: not a JSON record"):
        write_report(copy, task_names=["sts"], progress=False)
    log.unlink()
    report = write_report(copy, task_names=["sts"], progress=False)
    assert "training-curves.png" not in {p.name for p in report.files}
    assert "No `train_log.jsonl`" in (copy / "report-dev" / "report.md").read_text()


def test_bad_run_folder_is_one_line(tmp_path):
    result = CliRunner().invoke(app, ["report", str(tmp_path / "nothing")])
    assert result.exit_code == 2
    assert result.output.strip() == f"error: {tmp_path / 'nothing'}: checkpoint folder not found"


def test_per_class_table_counts(run, tmp_path):
    report = write_report(run, task_names=["quora"], out=tmp_path, progress=False)
    text = (tmp_path / "report.md").read_text()
    rows = [line for line in text.splitlines() if line.startswith("| 0 |") or line.startswith("| 1 |")]
    gold = np.array([int(r.split("|")[5]) for r in rows])
    predicted = np.array([int(r.split("|")[6]) for r in rows])
    assert gold.sum() == predicted.sum() == 40  # every dev example counted once, gold and predicted
    assert set(report.results) == {"quora", "overall"}
