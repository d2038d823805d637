import json

import pytest
from typer.testing import CliRunner

from mtbert import __version__
from mtbert.cli import app

from helpers import write_recipe

runner = CliRunner()


def invoke(*args, input=None):
    return runner.invoke(app, [str(a) for a in args], input=input)


def test_version_and_help_show_examples():
    assert invoke("--version").output.strip() == f"mtbert {__version__}"
    commands = [c.name or c.callback.__name__.replace("_", "-") for c in app.registered_commands]
    assert {"train", "evaluate", "predict", "report", "submit", "export"} <= set(commands)
    for command in commands:
        result = invoke(command, "--help")
        assert result.exit_code == 0 and "Example:" in result.output, command


def test_usage_errors_are_one_line_and_completion_installs():
    for args, message in ((["predict"], "error: Missing option '--task'. (see 'mtbert predict --help')"),
                          (["nope"], "error: No such command 'nope'."),
                          (["evaluate", "x", "--batch-size", "many"], "error: Invalid value for '--batch-size'")):
        result = runner.invoke(app, args, prog_name="mtbert")
        assert result.exit_code == 2 and len(result.output.strip().splitlines()) == 1, result.output
        assert result.output.startswith(message), result.output
    result = invoke("--help")
    assert "--install-completion" in result.output and "--show-completion" in result.output
    completion = {"_MTBERT_COMPLETE": "complete_bash", "COMP_WORDS": "mtbert report --sp", "COMP_CWORD": "2"}
    result = runner.invoke(app, [], env=completion, prog_name="mtbert")
    assert result.output.split() == ["--split"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory, tokenizer_dir):
    tmp = tmp_path_factory.mktemp("cli")
    recipe = write_recipe(tmp, tokenizer_dir)
    result = invoke("train", recipe, "train.max_steps=6")
    assert result.exit_code == 0, result.output
    return tmp, recipe


def test_evaluate_prints_table_and_writes_json(trained):
    tmp, _ = trained
    result = invoke("evaluate", tmp / "ckpt", "--tasks", "sst,sts", "--output", tmp / "dev.json")
    assert result.exit_code == 0, result.output
    assert "overall" in result.output and "pearson" in result.output
    scores = json.loads((tmp / "dev.json").read_text())
    assert set(scores) == {"sst", "sts", "overall"} and "accuracy" in scores["sst"]


def test_predict_from_stdin_tsv_and_jsonl(trained, tmp_path):
    tmp, _ = trained
    result = invoke("predict", "--ckpt", tmp / "ckpt", "--task", "sst", input="the film was good\nawful plot\n")
    assert result.exit_code == 0, result.output
    lines = result.output.strip().splitlines()
    assert lines[0] == "label\tp_0\tp_1\tp_2\tp_3\tp_4" and len(lines) == 3
    assert abs(sum(float(p) for p in lines[1].split("\t")[1:]) - 1) < 1e-4
    (tmp_path / "pairs.txt").write_text("the dog runs\tthe cat runs\n")
    result = invoke("predict", "--ckpt", tmp / "ckpt", "--task", "sts", "--input", tmp_path / "pairs.txt",
                    "--format", "jsonl", "--output", tmp_path / "out.jsonl")
    assert result.exit_code == 0, result.output
    record = json.loads((tmp_path / "out.jsonl").read_text())
    assert record["input"] == ["the dog runs", "the cat runs"] and isinstance(record["score"], float)


def test_predict_test_split_writes_submission_file(trained, tmp_path):
    tmp, _ = trained
    result = invoke("predict", "--ckpt", tmp / "ckpt", "--task", "sst", "--split", "test", "--output", tmp_path)
    assert result.exit_code == 0, result.output
    lines = (tmp_path / "sst-test-output.csv").read_text().splitlines()
    assert lines[0] == "id\tPredicted_Sentiment" and len(lines) == 41
    assert lines[1].split("\t")[0] == "stest0" and lines[1].split("\t")[1] in "01234"


def test_validate(trained):
    _, recipe = trained
    result = invoke("validate", recipe)
    assert result.exit_code == 0, result.output
    assert "sst: classes (5 labels)" in result.output and result.output.strip().endswith("ok")


@pytest.mark.parametrize("args,message", [
    (["train", "missing.yaml"], "missing.yaml: recipe file not found"),
    (["evaluate", "no_such_ckpt"], "no_such_ckpt: checkpoint folder not found"),
    (["predict", "--task", "sst", "--ckpt", "no_such_ckpt"], "no_such_ckpt: checkpoint folder not found"),
])
def test_bad_input_is_one_line_and_exit_2(args, message):
    result = invoke(*args, input="")
    assert result.exit_code == 2
    assert message in result.output and "Traceback" not in result.output


def test_bad_recipe_key_and_bad_pair_input(trained, tmp_path):
    tmp, recipe = trained
    result = invoke("train", recipe, "train.learning_rate=1")
    assert result.exit_code == 2 and "did you mean" in result.output
    result = invoke("predict", "--ckpt", tmp / "ckpt", "--task", "sts", input="only one sentence\n")
    assert result.exit_code == 2 and "<stdin>:1: task sts takes a sentence pair" in result.output
    result = invoke("predict", "--ckpt", tmp / "ckpt", "--task", "nope", input="x\n")
    assert result.exit_code == 2 and "not in this checkpoint" in result.output
    result = invoke("predict", "--ckpt", tmp / "ckpt", "--task", "sst", input="\n\n")
    assert result.exit_code == 2 and "no sentences to predict" in result.output


def test_bad_data_leaves_previous_output_untouched(trained, tmp_path):
    tmp, recipe = trained
    before = (tmp / "ckpt" / "model.safetensors").read_bytes()
    bad = tmp / "data" / "cs224n" / "sts-train.csv"
    original = bad.read_text()
    bad.write_text(original + "999\tbad\tx\ty\t9.5\n")
    try:
        result = invoke("train", recipe)
    finally:
        bad.write_text(original)
    assert result.exit_code == 2 and "outside [0.0, 5.0]" in result.output
    assert (tmp / "ckpt" / "model.safetensors").read_bytes() == before


def test_make_data_refuses_a_foreign_folder(tmp_path):
    (tmp_path / "mine.txt").write_text("keep me")
    result = invoke("make-data", "quickstart", "--out", tmp_path)
    assert result.exit_code == 2 and (tmp_path / "mine.txt").read_text() == "keep me"


def test_every_integer_option_of_every_command_has_a_range():
    import typer.main

    group = typer.main.get_command(app)
    checked = []
    for name, command in group.commands.items():
        for param in command.params:
            if getattr(param, "type_descriptor", None) and param.type_descriptor.annotation in (int, float):
                assert param.min is not None or param.max is not None, \
                    f"mtbert {name} {param.opts[0]} takes any number; give it a range (typer.Option(min=...))"
                checked.append(f"{name} {param.opts[0]}")
    assert {"evaluate --batch-size", "bench --steps", "bench --warmup", "make-data --seed"} <= set(checked)


@pytest.mark.parametrize("args,message", [
    (["evaluate", "ck", "--batch-size", "0"], "'--batch-size': Input should be greater than or equal to 1"),
    (["bench", "r.yaml", "--warmup", "-1"], "'--warmup': Input should be greater than or equal to 0"),
    (["make-data", "--seed", "-1"], "'--seed': Input should be greater than or equal to 0"),
    (["make-data", "--seed", str(2**32)], "'--seed': Input should be less than or equal to 4294967295"),
    (["submit", "ck", "--tasks", " , "], "'--tasks': no task name in ' , '"),
    (["validate", "r.yaml", "--data-dir", ""], "'--data-dir': an empty folder name"),
])
def test_an_option_out_of_range_is_one_line_before_anything_runs(tmp_path, monkeypatch, args, message):
    monkeypatch.chdir(tmp_path)
    result = runner.invoke(app, args, prog_name="mtbert")
    assert result.exit_code == 2 and result.output.startswith("error: Invalid value for " + message), result.output
    assert len(result.output.strip().splitlines()) == 1 and not list(tmp_path.iterdir())
