"""`mtbert init`: the recipe it writes names the right columns and kind, and `mtbert validate` accepts it."""

from __future__ import annotations

import json

import pytest
import yaml
from typer.testing import CliRunner

from mtbert.cli import app
from mtbert.commands.scaffold import guess_kind

runner = CliRunner()


def init(*args):
    result = runner.invoke(app, ["init", *map(str, args)], prog_name="mtbert")
    assert result.exit_code == 0, result.output
    return result.output


def validate(recipe, tokenizer_dir):
    result = runner.invoke(app, ["validate", str(recipe), "model.init=random", f"model.tokenizer={tokenizer_dir}"])
    assert result.exit_code == 0, result.output
    return result.output


def test_single_sentence_csv_with_label_names(tmp_path, monkeypatch, tokenizer_dir):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "reviews").mkdir()
    rows = [("the cat sat", "good"), ("a dog ran , then sat", "bad"), ("the bird", "ok")] * 4
    for split in ("train", "dev"):
        lines = ["id,text,verdict"] + [f'{i},"{t}",{v}' for i, (t, v) in enumerate(rows)]
        (tmp_path / "reviews" / f"{split}.csv").write_text("\n".join(lines) + "\n")
    out = init("--train", "reviews/train.csv", "--dev", "reviews/dev.csv", "--label", "verdict", "--out", "r.yaml")
    assert "text text, label verdict, classes (3 label names), ids id" in out
    recipe = yaml.safe_load((tmp_path / "r.yaml").read_text())
    task = recipe["tasks"]["reviews"]
    assert recipe["data_dir"] == "reviews" and task["train_file"] == "train.csv"
    assert (task["text_columns"], task["label_column"], task["id_column"]) == (["text"], "verdict", "id")
    assert (task["kind"], task["num_labels"], task["label_names"]) == ("classes", 3, ["bad", "good", "ok"])
    assert "# guessed: 3 label names" in (tmp_path / "r.yaml").read_text()
    report = validate("r.yaml", tokenizer_dir)
    assert "- reviews: classes (3 labels), single sentence" in report and "12 examples" in report


def test_sentence_pair_tsv_is_binary_and_jsonl_scores_are_regression(tmp_path, monkeypatch, tokenizer_dir):
    monkeypatch.chdir(tmp_path)
    pairs = [("the cat", "a cat", 1), ("the dog ran", "the bird sat", 0)] * 3
    for split in ("train", "dev"):
        lines = ["question1\tquestion2\tis_duplicate"] + [f"{a}\t{b}\t{y}" for a, b, y in pairs]
        (tmp_path / f"{split}.tsv").write_text("\n".join(lines) + "\n")
        scores = [{"s1": "the cat", "s2": "a cat", "score": 4.5}, {"s1": "the dog", "s2": "a bird", "score": 0.25}]
        (tmp_path / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in scores * 3))
    init("--train", "train.tsv", "--dev", "dev.tsv", "--task", "dupes", "--out", "pair.yaml")
    task = yaml.safe_load((tmp_path / "pair.yaml").read_text())["tasks"]["dupes"]
    assert (task["format"], task["text_columns"], task["kind"]) == ("tsv", ["question1", "question2"], "binary")
    assert "- dupes: binary (2 labels), pair" in validate("pair.yaml", tokenizer_dir)
    init("--train", "train.jsonl", "--dev", "dev.jsonl", "--task", "sim", "--out", "sim.yaml")
    task = yaml.safe_load((tmp_path / "sim.yaml").read_text())["tasks"]["sim"]
    assert (task["format"], task["kind"], task["label_range"]) == ("jsonl", "regression", [0.25, 4.5])
    assert task["metrics"] == ["pearson", "spearman"]
    assert "- sim: regression, pair" in validate("sim.yaml", tokenizer_dir)


@pytest.mark.parametrize("labels, kind, names", [
    (["0", "1", "1"], "binary", None),
    (["0.0", "1.0"], "binary", None),
    (["0", "2", "1"], "classes", None),
    (["1", "5", "3"], "classes", ["1", "3", "5"]),
    (["pos", "neg"], "classes", ["neg", "pos"]),
    (["0.5", "3", "4.75"], "regression", None),
    ([str(i) for i in range(60)] + ["100"], "regression", None),
])
def test_kind_from_labels(labels, kind, names):
    guess = guess_kind(labels, "y")
    assert (guess.kind, guess.label_names) == (kind, names)
