"""Every figure is a valid PNG of its declared size, whatever the data; nothing half-written is left."""

import numpy as np
import pytest

from mtbert import files, plots

from helpers import png_size


def no_temporary_files(folder) -> bool:
    return not list(folder.glob(".*.tmp"))


def test_confusion_counts_rows_are_gold_columns_predicted():
    counts = plots.confusion_counts(np.array([0, 0, 1, 2, 2, 2]), np.array([0, 1, 1, 2, 2, 0]), 3)
    assert counts.tolist() == [[1, 1, 0], [0, 1, 0], [1, 0, 2]]


@pytest.mark.parametrize("names", [["negative", "neutral", "positive"], [f"class {i}" for i in range(15)]])
def test_classification_figures(tmp_path, names):
    rng = np.random.default_rng(0)
    gold, predicted = rng.integers(0, len(names), 200), rng.integers(0, len(names), 200)
    for path in (plots.confusion_matrix(gold, predicted, names, tmp_path / "c.png", title="t: confusion"),
                 plots.class_distribution(gold, predicted, names, tmp_path / "d.png", title="t: labels")):
        assert png_size(path) == plots.pixel_size(plots.SINGLE) == (960, 720)
    assert no_temporary_files(tmp_path)


def test_regression_figures(tmp_path):
    rng = np.random.default_rng(0)
    gold = rng.uniform(0, 5, 300)
    predicted = gold + rng.normal(0, 1, 300)
    for path in (plots.scatter(gold, predicted, tmp_path / "s.png", title="t: scatter", value_range=[0, 5]),
                 plots.score_distribution(gold, predicted, tmp_path / "h.png", title="t: scores", value_range=[0, 5]),
                 plots.scatter(np.ones(3), np.ones(3), tmp_path / "flat.png", title="constant")):
        assert png_size(path) == (960, 720)


def test_training_curves(tmp_path):
    records = [{"step": s, "lr": 1e-3, "loss": {"a": 1 / s, "b": 5 / s}, "tokens_per_s": 1.0, "elapsed_s": 1.0}
               for s in range(2, 21, 2)]
    records += [{"step": s, "dev": {"a": {"accuracy": 0.5, "main": 0.5}, "b": {"pearson": 0.1, "main": 0.1},
                                    "overall": 0.3}} for s in (10, 20)]
    path = plots.training_curves(records, {"a": "accuracy", "b": "pearson"}, tmp_path / "curves.png",
                                 title="run", exported_step=20)
    assert png_size(path) == plots.pixel_size(plots.WIDE) == (1920, 720)
    empty = plots.training_curves([], {"a": "accuracy"}, tmp_path / "empty.png", title="no log")
    assert png_size(empty) == (1920, 720)


def test_a_failed_render_leaves_the_previous_file(tmp_path, monkeypatch):
    path = plots.confusion_matrix(np.array([0, 1]), np.array([0, 1]), ["a", "b"], tmp_path / "c.png", title="t")
    before = path.read_bytes()
    monkeypatch.setattr(files.os, "replace", lambda *a: (_ for _ in ()).throw(OSError("disk full")))
    with pytest.raises(OSError):
        plots.confusion_matrix(np.array([1, 1]), np.array([0, 0]), ["a", "b"], path, title="t")
    assert path.read_bytes() == before and no_temporary_files(tmp_path)
