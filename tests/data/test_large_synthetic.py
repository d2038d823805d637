"""make-data large: generated tasks of any size, their tokenizer and a recipe that reads them."""

import csv

import pytest

from mtbert.config import load_recipe
from mtbert.data.large_synthetic import VOCABULARY, make_large_data, task_sizes
from mtbert.data.reading import read_split
from mtbert.errors import MtbertError
from mtbert.tasks import resolve_tasks


def files(folder):
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def rows(path):
    with open(path, encoding="utf-8", newline="") as f:
        return list(csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE))


@pytest.fixture(scope="module")
def made(tmp_path_factory):
    out = tmp_path_factory.mktemp("large") / "four"
    summary = make_large_data(out, rows=600, tasks=4, smallest=30, dev_rows=50, seed=3)
    return out, summary


def test_sizes_are_log_spaced_from_rows_to_smallest(made):
    out, summary = made
    assert [s["train"] for s in summary.values()] == task_sizes(600, 30, 4) == [600, 221, 81, 30]
    assert [s["dev"] for s in summary.values()] == [50, 50, 50, 30]
    assert [s["kind"] for s in summary.values()] == ["polarity", "marker", "overlap", "reorder"]
    assert len(rows(out / "task00" / "train.tsv")) == 600


def test_same_seed_same_bytes(made, tmp_path):
    out, _ = made
    make_large_data(tmp_path / "again", rows=600, tasks=4, smallest=30, dev_rows=50, seed=3)
    again = files(tmp_path / "again")
    assert again.pop("recipe.yaml") != files(out)["recipe.yaml"]  # it names its own folder
    assert again == {name: data for name, data in files(out).items() if name != "recipe.yaml"}
    make_large_data(tmp_path / "other", rows=600, tasks=4, smallest=30, dev_rows=50, seed=4)
    assert (tmp_path / "other" / "task00" / "train.tsv").read_bytes() != (out / "task00" / "train.tsv").read_bytes()


def test_labels_follow_each_kinds_rule(made):
    out, _ = made
    marker = rows(out / "task01" / "train.tsv")
    assert {r["label"] for r in marker} == {"0", "1", "2"}
    reorder = rows(out / "task03" / "train.tsv")
    for r in reorder:
        same_words = sorted(r["sentence1"].split()) == sorted(r["sentence2"].split())
        assert same_words == (r["label"] == "1")
    overlap = rows(out / "task02" / "train.tsv")
    assert all(0 <= float(r["label"]) <= 5 for r in overlap) and len({r["label"] for r in overlap}) > 5
    words = set(VOCABULARY)
    assert all(set(r["sentence"].split()) <= words for r in rows(out / "task00" / "train.tsv"))
    assert {r["label"] for r in rows(out / "task00" / "train.tsv")} == {"0", "1"}


def test_the_recipe_reads_every_task(made):
    out, _ = made
    recipe = load_recipe(out / "recipe.yaml")
    tasks = resolve_tasks(recipe)
    assert list(tasks) == ["task00", "task01", "task02", "task03"]
    assert len(read_split(tasks["task02"], "train", recipe.data_dir).dataset) == 81
    assert recipe.sampling.min_share * 4 < 1


def test_refuses_bad_sizes_and_foreign_folders(tmp_path):
    with pytest.raises(MtbertError, match="--smallest 10 is more than --rows 5"):
        make_large_data(tmp_path / "x", rows=5, smallest=10)
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep")
    with pytest.raises(MtbertError):
        make_large_data(tmp_path / "mine", rows=5)
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep"


def test_make_data_large_from_the_command_line(tmp_path):
    from typer.testing import CliRunner

    from mtbert.cli import app

    result = CliRunner().invoke(app, ["make-data", "large", "--rows", "40", "--tasks", "2", "--smallest", "10",
                                      "--dev-rows", "5", "--out", str(tmp_path / "two")])
    assert result.exit_code == 0, result.output
    assert '"task01": {"kind": "marker", "train": 10, "dev": 5}' in result.output
    assert (tmp_path / "two" / "recipe.yaml").is_file()


@pytest.mark.slow
def test_twenty_tiny_tasks_train_with_budgets_and_a_floor(tmp_path):
    """A many-task recipe end to end: every task is drawn (min_share), evaluated within its budget, and scored."""
    import json

    from mtbert.training.loop import train

    make_large_data(tmp_path / "twenty", rows=60, tasks=20, smallest=8, dev_rows=12)
    recipe = load_recipe(tmp_path / "twenty" / "recipe.yaml", [
        "model.size.hidden_size=16", "model.size.intermediate_size=32", "model.max_length=20", "train.max_steps=150",
        "train.batch_size=4", "train.log_every=1", "train.checkpoint_every=1000", "eval.every_steps=150",
        "eval.batch_size=64", "sampling.min_share=0.045", "tasks.task00.eval_examples=1",
        f"output_dir={tmp_path / 'run'}"])
    train(recipe)
    records = [json.loads(line) for line in (tmp_path / "run" / "train_log.jsonl").read_text().splitlines()]
    drawn = {name for r in records if isinstance(r.get("loss"), dict) for name in r["loss"]}
    assert drawn == set(recipe.tasks)  # the smallest (8 examples, p >= 0.045) still trained
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    mains = [metrics[name]["main"] for name in recipe.tasks]
    assert len(mains) == 20 and metrics["overall"] == pytest.approx(sum(mains) / 20)
    assert metrics["task00"]["accuracy"] in (0.0, 1.0)  # one dev example: its budget
