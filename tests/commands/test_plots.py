"""Every figure draws its data, into a valid PNG of its declared size, whatever the data; nothing half-written
is left."""

import numpy as np
import pytest
from matplotlib import image

from mtbert import files
from mtbert.commands import plots
from mtbert.errors import MtbertError

from helpers import png_size


def no_temporary_files(folder) -> bool:
    return not list(folder.glob(".*.tmp"))


def ink(path) -> float:
    """Share of the PNG's pixels that are not (near) white: 0 for a blank figure, about 1% for bare axes."""
    rgb = image.imread(path)[..., :3]
    return float((rgb.min(axis=-1) < 0.9).mean())


@pytest.fixture
def drawn(monkeypatch) -> list:
    """The matplotlib figures plots.py saves, in order, to look at what they hold."""
    figures = []
    save = plots._save

    def keep(figure, path):
        figures.append(figure)
        return save(figure, path)

    monkeypatch.setattr(plots, "_save", keep)
    return figures


def test_confusion_counts_rows_are_gold_columns_predicted():
    counts = plots.confusion_counts(np.array([0, 0, 1, 2, 2, 2]), np.array([0, 1, 1, 2, 2, 0]), 3)
    assert counts.tolist() == [[1, 1, 0], [0, 1, 0], [1, 0, 2]]


@pytest.mark.parametrize("names", [["negative", "neutral", "positive"], [f"class {i}" for i in range(15)]])
def test_classification_figures(tmp_path, names, drawn):
    rng = np.random.default_rng(0)
    gold, predicted = rng.integers(0, len(names), 200), rng.integers(0, len(names), 200)
    for path in (plots.confusion_matrix(gold, predicted, names, tmp_path / "c.png", title="t: confusion"),
                 plots.class_distribution(gold, predicted, names, tmp_path / "d.png", title="t: labels")):
        assert png_size(path) == plots.pixel_size(plots.SINGLE) == (960, 720)
        assert ink(path) > 0.2  # coloured cells, bars
    confusion, distribution = (figure.axes[0] for figure in drawn)
    counts = plots.confusion_counts(gold, predicted, len(names))
    np.testing.assert_allclose(confusion.images[0].get_array(), counts / counts.sum(axis=1, keepdims=True))
    assert [t.get_text() for t in confusion.get_xticklabels()] == names
    gold_bars, predicted_bars = distribution.containers
    assert [b.get_height() for b in gold_bars] == np.bincount(gold, minlength=len(names)).tolist()
    assert [b.get_height() for b in predicted_bars] == np.bincount(predicted, minlength=len(names)).tolist()
    assert no_temporary_files(tmp_path)


def test_regression_figures(tmp_path, drawn):
    rng = np.random.default_rng(0)
    gold = rng.uniform(0, 5, 300)
    predicted = gold + rng.normal(0, 1, 300)
    for path in (plots.scatter(gold, predicted, tmp_path / "s.png", title="t: scatter", value_range=[0, 5]),
                 plots.score_distribution(gold, predicted, tmp_path / "h.png", title="t: scores", value_range=[0, 5]),
                 plots.scatter(np.ones(3), np.ones(3), tmp_path / "flat.png", title="constant")):
        assert png_size(path) == (960, 720)
        assert ink(path) > 0.015  # a blank figure has none, bare axes about 0.013
    scattered, histograms, flat = (figure.axes[0] for figure in drawn)
    np.testing.assert_array_equal(scattered.collections[0].get_offsets(), np.column_stack([gold, predicted]))
    gold_bars = [patch for patch in histograms.patches if patch.get_label() != "predicted"]
    assert sum(patch.get_height() for patch in gold_bars) == 300  # every gold score in a bin
    assert histograms.get_legend_handles_labels()[1] == ["gold", "predicted"]
    np.testing.assert_array_equal(flat.collections[0].get_offsets(), np.ones((3, 2)))


def test_training_curves(tmp_path, drawn):
    records = [{"step": s, "lr": 1e-3, "loss": {"a": 1 / s, "b": 5 / s}, "tokens_per_s": 1.0, "elapsed_s": 1.0}
               for s in range(2, 21, 2)]
    records += [{"step": s, "dev": {"a": {"accuracy": 0.5, "main": 0.5}, "b": {"pearson": 0.1, "main": 0.1},
                                    "overall": 0.3}} for s in (10, 20)]
    path = plots.training_curves(records, {"a": "accuracy", "b": "pearson"}, tmp_path / "curves.png",
                                 title="run", exported_step=20)
    assert png_size(path) == plots.pixel_size(plots.WIDE) == (1920, 720)
    assert ink(path) > 0.02
    loss_axes, dev_axes = drawn[0].axes
    steps = list(range(2, 21, 2))
    lines = {line.get_label(): line for line in loss_axes.get_lines()}
    assert set(lines) == {"a", "b"}
    assert list(lines["a"].get_xdata()) == steps and list(lines["a"].get_ydata()) == [1 / s for s in steps]
    assert list(lines["b"].get_ydata()) == [5 / s for s in steps]
    assert loss_axes.get_yscale() == "log"  # the tasks' losses differ by more than 20x
    curves = {line.get_label(): (list(line.get_xdata()), list(line.get_ydata())) for line in dev_axes.get_lines()}
    assert curves["a (accuracy)"] == ([10, 20], [0.5, 0.5]) and curves["b (pearson)"] == ([10, 20], [0.1, 0.1])
    assert curves["overall"] == ([10, 20], [0.3, 0.3]) and curves["exported (step 20)"][0] == [20, 20]
    empty = plots.training_curves([], {"a": "accuracy"}, tmp_path / "empty.png", title="no log")
    assert png_size(empty) == (1920, 720)
    assert all(not axes.get_lines() and axes.texts[0].get_text() == "no records" for axes in drawn[1].axes)


def test_task_weights_one_line_per_task_from_the_records_that_have_them(tmp_path, drawn):
    records = [{"step": s, "loss": {"a": 1.0, "b": 1.0}, "task_weights": {"a": 0.1 * s, "b": 2 - 0.1 * s}}
               for s in (5, 10, 15)]
    records.append({"step": 15, "dev": {"overall": 0.3}})  # an evaluation record: no weights, skipped
    path = plots.task_weights(records, ["a", "b", "c"], tmp_path / "w.png", title="run")
    assert png_size(path) == (960, 720) and ink(path) > 0.015
    axes = drawn[0].axes[0]
    lines = {line.get_label(): (list(line.get_xdata()), list(line.get_ydata())) for line in axes.get_lines()}
    assert set(lines) == {"a", "b"}  # c has no weights logged
    assert lines["a"] == ([5, 10, 15], [0.5, 1.0, 1.5]) and lines["b"][1] == [1.5, 1.0, 0.5]


def test_a_failed_render_leaves_the_previous_file(tmp_path, monkeypatch):
    path = plots.confusion_matrix(np.array([0, 1]), np.array([0, 1]), ["a", "b"], tmp_path / "c.png", title="t")
    before = path.read_bytes()
    monkeypatch.setattr(files.os, "replace", lambda *a: (_ for _ in ()).throw(OSError("disk full")))
    with pytest.raises(MtbertError, match=r"c.png: cannot write \(disk full\)"):
        plots.confusion_matrix(np.array([1, 1]), np.array([0, 0]), ["a", "b"], path, title="t")
    assert path.read_bytes() == before and no_temporary_files(tmp_path)
