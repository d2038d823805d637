"""Submission files: the GLUE server's and the cs224n course's names, headers, ids and row counts."""

import random

import datasets
import pytest
import torch
from typer.testing import CliRunner

from mtbert.cli import app
from mtbert.commands.submission import GLUE_FILES, check_ids, submission_format, submission_path
from mtbert.config import TaskConfig, dump_recipe, load_recipe
from mtbert.data.loading import load_tokenizer
from mtbert.data.reading import SplitData
from mtbert.errors import MtbertError
from mtbert.exported import export_model
from mtbert.tasks import resolve_task, resolve_tasks
from mtbert.training.setup import build_model

from conftest import sentence
from helpers import write_recipe

TASKS = {"sst2": {}, "stsb": {}, "rte": {}, "sst": {}}
# The GLUE test files' layouts (index first; STS-B carries extra metadata columns), made up here.
GLUE_TEST = {"SST-2": ["index", "sentence"],
             "STS-B": ["index", "genre", "filename", "year", "old_index", "source1", "source2", "sentence1",
                       "sentence2"],
             "RTE": ["index", "sentence1", "sentence2"]}
ROWS = {"SST-2": 23, "STS-B": 17, "RTE": 31}


def write_glue_tests(data_dir):
    rng = random.Random(0)
    for folder, header in GLUE_TEST.items():
        lines = ["\t".join(header)]
        for i in range(ROWS[folder]):
            row = {"index": str(i), "sentence": sentence(rng), "sentence1": sentence(rng), "sentence2": sentence(rng)}
            lines.append("\t".join(row.get(c, "x") for c in header))
        (data_dir / "glue" / folder).mkdir(parents=True, exist_ok=True)
        (data_dir / "glue" / folder / "test.tsv").write_text("\n".join(lines) + "\n")


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory, tokenizer_dir):
    """A model with GLUE and cs224n tasks; random weights are enough to check the files' format."""
    tmp = tmp_path_factory.mktemp("submission")
    recipe = load_recipe(write_recipe(tmp, tokenizer_dir, tasks=TASKS))
    write_glue_tests(tmp / "data")
    tokenizer = load_tokenizer(recipe.model.tokenizer)
    torch.manual_seed(0)
    model = build_model(recipe, resolve_tasks(recipe), tokenizer).eval()
    with torch.no_grad():  # large random weights, so predictions differ between examples and classes
        for parameter in model.parameters():
            parameter.add_(torch.randn_like(parameter) * 0.5)
    export_model(model, tokenizer, tmp / "ckpt", recipe=dump_recipe(recipe), metrics={})
    return tmp / "ckpt"


def rows(path):
    lines = path.read_text().splitlines()
    return lines[0], [line.split("\t") for line in lines[1:]]


def test_submit_writes_every_task_file(ckpt, tmp_path):
    result = CliRunner().invoke(app, ["submit", str(ckpt), "--to", str(tmp_path / "out")])
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["RTE.tsv", "SST-2.tsv", "STS-B.tsv",
                                                                     "sst-test-output.csv"]
    for name, folder in (("SST-2.tsv", "SST-2"), ("STS-B.tsv", "STS-B"), ("RTE.tsv", "RTE")):
        header, body = rows(tmp_path / "out" / name)
        assert header == "index\tprediction"
        assert [r[0] for r in body] == [str(i) for i in range(ROWS[folder])]  # the test file's ids, in order
        assert all(len(r) == 2 for r in body)
    _, sst2 = rows(tmp_path / "out" / "SST-2.tsv")
    assert {r[1] for r in sst2} <= {"0", "1"}
    _, rte = rows(tmp_path / "out" / "RTE.tsv")
    assert {r[1] for r in rte} <= {"entailment", "not_entailment"}
    _, stsb = rows(tmp_path / "out" / "STS-B.tsv")
    scores = [float(r[1]) for r in stsb]
    assert len(set(scores)) > 1 and all(len(r[1].split(".")[1]) == 3 for r in stsb)
    header, sst = rows(tmp_path / "out" / "sst-test-output.csv")
    assert header == "id\tPredicted_Sentiment" and len(sst) == 40 and sst[0][0] == "stest0"
    assert {r[1] for r in sst} <= set("01234")


def test_predict_split_writes_the_glue_file_and_tasks_option(ckpt, tmp_path):
    runner = CliRunner()
    result = runner.invoke(app, ["predict", "--ckpt", str(ckpt), "--task", "rte", "--split", "test",
                                 "--output", str(tmp_path)])
    assert result.exit_code == 0, result.output
    header, body = rows(tmp_path / "RTE.tsv")
    assert header == "index\tprediction" and len(body) == ROWS["RTE"]
    result = runner.invoke(app, ["submit", str(ckpt), "--to", str(tmp_path / "two"), "--tasks", "sst2,stsb"])
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in (tmp_path / "two").iterdir()) == ["SST-2.tsv", "STS-B.tsv"]


def test_file_names_per_task_and_split(ckpt):
    from mtbert.exported import load_model

    tasks = load_model(ckpt).tasks
    assert submission_format(tasks["rte"]).file_name == "RTE.tsv"
    assert submission_format(tasks["rte"], "dev").file_name == "RTE-dev.tsv"
    assert submission_format(tasks["sst"], "dev").file_name == "sst-dev-output.csv"
    assert GLUE_FILES == {"sst2": "SST-2.tsv", "cola": "CoLA.tsv", "mrpc": "MRPC.tsv", "stsb": "STS-B.tsv",
                          "qqp": "QQP.tsv", "rte": "RTE.tsv", "mnli": "MNLI-m.tsv"}


def test_unknown_task_or_missing_test_file_is_one_line(ckpt, tmp_path):
    runner = CliRunner()
    result = runner.invoke(app, ["submit", str(ckpt), "--to", str(tmp_path), "--tasks", "cola"])
    assert result.exit_code == 2 and result.output.startswith("error: task 'cola' is not in this checkpoint")
    assert not list(tmp_path.iterdir())
    (tmp_path / "data" / "glue" / "SST-2").mkdir(parents=True)  # the folder is there (so no hub), its test.tsv not
    result = runner.invoke(app, ["submit", str(ckpt), "--to", str(tmp_path / "out"),
                                 "--data-dir", str(tmp_path / "data")])
    assert result.exit_code == 2 and "SST-2/test.tsv: test file of task sst2 not found" in result.output


def test_predict_split_output_a_folder_or_a_file(ckpt, tmp_path):
    runner = CliRunner()

    def predict(output):
        return runner.invoke(app, ["predict", "--ckpt", str(ckpt), "--task", "rte", "--split", "test",
                                   "--output", output])

    result = predict(str(tmp_path / "new"))  # no such folder, no file extension: a folder is made
    assert result.exit_code == 0, result.output
    assert [p.name for p in (tmp_path / "new").iterdir()] == ["RTE.tsv"]
    result = predict(str(tmp_path / "nested" / "rte.out"))  # a file name: the file itself
    assert result.exit_code == 0 and rows(tmp_path / "nested" / "rte.out")[0] == "index\tprediction"
    assert "replaced" not in result.output
    result = predict(str(tmp_path / "new"))  # again: the earlier submission file is replaced, and said so
    assert result.exit_code == 0 and f"replaced the earlier submission file {tmp_path / 'new' / 'RTE.tsv'}" \
        in result.output


def test_a_file_that_is_not_a_submission_is_not_replaced(ckpt, tmp_path):
    notes = tmp_path / "notes.tsv"
    notes.write_text("my own notes\n")
    result = CliRunner().invoke(app, ["predict", "--ckpt", str(ckpt), "--task", "rte", "--split", "test",
                                      "--output", str(notes)])
    assert result.exit_code == 2
    assert f"{notes}: exists and is not a rte test submission file, so it is not replaced" in result.output
    assert notes.read_text() == "my own notes\n"


def split_data(ids, lines=(2, 3, 4), positions=False):
    dataset = datasets.Dataset.from_dict({"id": list(ids), "text_a": ["x"] * len(ids)})
    return SplitData(dataset, "t.tsv", labelled=False, lines=list(lines) if lines else None,
                     ids_are_positions=positions)


def test_ids_of_a_submission_are_unique_present_and_real():
    sst = resolve_task("sst", TaskConfig())
    check_ids(split_data(["a", "b", "c"]), sst)
    with pytest.raises(MtbertError, match=r"t.tsv: id 'a' appears twice \(lines 2 and 4\)"):
        check_ids(split_data(["a", "b", "a"]), sst)
    with pytest.raises(MtbertError, match=r"t.tsv: id 'b' appears twice \(examples 1 and 2\)"):
        check_ids(split_data(["a", "b", "b"], lines=None), sst)
    with pytest.raises(MtbertError, match=r"t.tsv: the example on line 3 has an empty id \('id' column\)"):
        check_ids(split_data(["a", "", "c"]), sst)
    with pytest.raises(MtbertError, match=r"t.tsv: no id column 'id', so a submission could only number the rows"):
        check_ids(split_data(["0", "1", "2"], positions=True), sst)
    custom = resolve_task("mine", TaskConfig(format="tsv", train_file="t.tsv", text_columns=["t"],
                                             label_column="y", kind="binary"))
    check_ids(split_data(["0", "1", "2"], positions=True), custom)  # no id column named: positions are the ids


@pytest.mark.parametrize(("output", "expected"), [(None, "RTE.tsv"), ("out", "out/RTE.tsv"), ("out/", "out/RTE.tsv"),
                                                  ("out.d/", "out.d/RTE.tsv"), ("preds.tsv", "preds.tsv")])
def test_submission_path(output, expected, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert str(submission_path(output, resolve_task("rte", TaskConfig()), "test")) == expected
    (tmp_path / "preds.tsv").mkdir()  # an existing folder, whatever its name
    assert str(submission_path("preds.tsv", resolve_task("rte", TaskConfig()), "test")) == "preds.tsv/RTE.tsv"
