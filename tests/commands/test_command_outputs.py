"""What the commands write: a file where a file was asked for, a folder where a folder was, and a file
they replace is said to be replaced. (Refusals are in tests/badinputs/test_checkpoint_inputs.py.)"""

import pytest
from typer.testing import CliRunner

from mtbert.cli import app
from mtbert.config import load_recipe
from mtbert.training import faults
from mtbert.training.loop import train

from helpers import write_recipe


@pytest.fixture(scope="module")
def run(tmp_path_factory, tokenizer_dir):
    tmp = tmp_path_factory.mktemp("outputs")
    recipe = write_recipe(tmp, tokenizer_dir, tasks={"sst": {}}, train={"max_steps": 2})
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MTBERT_CACHE", str(tmp_path_factory.getbasetemp() / "mtbert-cache"))
        patch.delenv(faults.ENV, raising=False)
        train(load_recipe(recipe))
    return tmp / "ckpt"


def mtbert(*args, input=None) -> str:
    result = CliRunner().invoke(app, [str(a) for a in args], input=input)
    assert result.exit_code == 0, result.output
    return result.output


def test_evaluate_says_when_it_replaces_its_scores(run, tmp_path):
    target = tmp_path / "scores" / "dev.json"
    assert f"wrote {target}" in mtbert("evaluate", run, "--output", target)
    assert f"replaced {target}" in mtbert("evaluate", run, "--output", target)


def test_predict_split_output_is_a_folder_it_creates(run, tmp_path):
    folder = tmp_path / "predictions"
    assert f"wrote {folder / 'sst-dev-output.csv'}" in mtbert("predict", "--ckpt", run, "--task", "sst",
                                                               "--split", "dev", "--output", folder)
    assert sorted(p.name for p in folder.iterdir()) == ["sst-dev-output.csv"]
    again = mtbert("predict", "--ckpt", run, "--task", "sst", "--split", "dev", "--output", folder)
    assert f"replaced the earlier submission file {folder / 'sst-dev-output.csv'}" in again


def test_predict_output_file_says_when_it_replaces_one(run, tmp_path):
    target = tmp_path / "labels.tsv"
    target.write_text("an earlier file\n")
    output = mtbert("predict", "--ckpt", run, "--task", "sst", "--output", target, input="a great film\n")
    assert f"replaced {target} (1 predictions)" in output
    assert target.read_text().startswith("label\t")


def test_report_and_submit_say_what_they_replace(run, tmp_path):
    first = mtbert("report", run, "--out", tmp_path / "report")
    assert f"wrote {tmp_path / 'report' / 'report.md'}" in first and "replaced" not in first
    (tmp_path / "report" / "mine.txt").write_text("left alone\n")
    second = mtbert("report", run, "--out", tmp_path / "report")
    assert f"replaced {tmp_path / 'report' / 'report.md'}" in second
    assert (tmp_path / "report" / "mine.txt").read_text() == "left alone\n"
    assert f"wrote {tmp_path / 'sub' / 'sst-dev-output.csv'}" in mtbert("submit", run, "--to", tmp_path / "sub",
                                                                         "--split", "dev")
    assert f"replaced {tmp_path / 'sub' / 'sst-dev-output.csv'}" in mtbert("submit", run, "--to", tmp_path / "sub",
                                                                            "--split", "dev")
