"""Figures of a run, as PNG files: confusion matrix, predicted-against-gold scatter, label
distributions, training curves.

Each function draws one figure of a fixed size (SINGLE or WIDE inches at DPI dots per inch, so every
PNG has a known width and height) and writes it atomically. Figures are drawn on matplotlib's Agg
canvas directly, never through pyplot, so nothing needs a display and no global state is touched.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from matplotlib import ticker
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from mtbert.files import write_bytes_atomically

DPI = 150
SINGLE = (6.4, 4.8)
"Inches of a one-panel figure: 960 x 720 pixels at DPI."
WIDE = (12.8, 4.8)
"Inches of the two-panel training curves: 1920 x 720 pixels at DPI."


def pixel_size(inches: tuple[float, float]) -> tuple[int, int]:
    """Width and height in pixels of a figure of `inches` saved at DPI."""
    return round(inches[0] * DPI), round(inches[1] * DPI)


def _new_figure(inches: tuple[float, float]) -> Figure:
    figure = Figure(figsize=inches, dpi=DPI, layout="constrained")
    FigureCanvasAgg(figure)
    return figure


def _save(figure: Figure, path: Path) -> Path:
    """Render to memory, then write through a temporary file and rename, so a PNG is whole or absent."""
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=DPI)  # no bbox_inches="tight": the size stays as declared
    path = Path(path)
    write_bytes_atomically(path, buffer.getvalue())
    return path


def _rotate_if_long(axes, names: Sequence[str]) -> None:
    if sum(len(n) for n in names) > 40 or max(len(n) for n in names) > 12:
        for label in axes.get_xticklabels():
            label.set_rotation(30)
            label.set_horizontalalignment("right")


def confusion_counts(gold: np.ndarray, predicted: np.ndarray, num_classes: int) -> np.ndarray:
    """(K, K) counts: row = gold class, column = predicted class."""
    counts = np.zeros((num_classes, num_classes), dtype=int)
    np.add.at(counts, (np.asarray(gold, dtype=int), np.asarray(predicted, dtype=int)), 1)
    return counts


def confusion_matrix(gold: np.ndarray, predicted: np.ndarray, class_names: Sequence[str], path: Path, *,
                     title: str) -> Path:
    """Gold classes in rows, predicted in columns; cells coloured by the share of their gold class
    (so rare classes read as well as common ones) and labelled with count and share."""
    k = len(class_names)
    counts = confusion_counts(gold, predicted, k)
    totals = counts.sum(axis=1, keepdims=True)
    shares = np.divide(counts, totals, out=np.zeros_like(counts, dtype=float), where=totals > 0)

    figure = _new_figure(SINGLE)
    axes = figure.add_subplot()
    image = axes.imshow(shares, cmap="Blues", vmin=0.0, vmax=1.0)
    colorbar = figure.colorbar(image, ax=axes)
    colorbar.set_label("share of the gold class")
    axes.set_xticks(range(k), labels=list(class_names))
    axes.set_yticks(range(k), labels=list(class_names))
    _rotate_if_long(axes, class_names)
    axes.set_xlabel("predicted label")
    axes.set_ylabel("gold label")
    axes.set_title(title)
    if k <= 12:
        size = 10 if k <= 6 else 7
        for i in range(k):
            for j in range(k):
                colour = "white" if shares[i, j] > 0.6 else "black"
                axes.text(j, i, f"{counts[i, j]}\n{shares[i, j]:.0%}", ha="center", va="center",
                          color=colour, fontsize=size)
    return _save(figure, path)


def scatter(gold: np.ndarray, predicted: np.ndarray, path: Path, *, title: str,
            value_range: Sequence[float] | None = None) -> Path:
    """Predicted score against gold score, with the line predicted = gold."""
    gold, predicted = np.asarray(gold, dtype=float), np.asarray(predicted, dtype=float)
    figure = _new_figure(SINGLE)
    axes = figure.add_subplot()
    alpha = 0.6 if len(gold) <= 500 else 0.3
    axes.scatter(gold, predicted, s=10, alpha=alpha, linewidths=0, color="tab:blue", rasterized=True,
                 label=f"examples (n={len(gold)})")
    low = min(gold.min(), predicted.min(), *(value_range or []))
    high = max(gold.max(), predicted.max(), *(value_range or []))
    pad = 0.03 * (high - low or 1.0)
    axes.plot([low - pad, high + pad], [low - pad, high + pad], color="0.3", linestyle="--", linewidth=1,
              label="predicted = gold")
    axes.set_xlim(low - pad, high + pad)
    axes.set_ylim(low - pad, high + pad)
    axes.set_aspect("equal", adjustable="box")
    axes.set_xlabel("gold score")
    axes.set_ylabel("predicted score")
    axes.set_title(title)
    axes.grid(True, alpha=0.3)
    axes.legend(loc="upper left", frameon=False)
    return _save(figure, path)


def class_distribution(gold: np.ndarray, predicted: np.ndarray, class_names: Sequence[str], path: Path, *,
                       title: str) -> Path:
    """How many examples of each class the gold labels and the predictions hold, side by side."""
    k = len(class_names)
    gold_counts = np.bincount(np.asarray(gold, dtype=int), minlength=k)
    predicted_counts = np.bincount(np.asarray(predicted, dtype=int), minlength=k)
    figure = _new_figure(SINGLE)
    axes = figure.add_subplot()
    x = np.arange(k)
    width = 0.4
    for offset, counts, label, colour in ((-width / 2, gold_counts, "gold", "0.55"),
                                          (width / 2, predicted_counts, "predicted", "tab:blue")):
        bars = axes.bar(x + offset, counts, width, label=label, color=colour)
        if k <= 12:
            axes.bar_label(bars, fontsize=8, padding=2)
    axes.set_xticks(x, labels=list(class_names))
    _rotate_if_long(axes, class_names)
    axes.set_xlabel("label")
    axes.set_ylabel("examples")
    axes.set_ylim(0, max(gold_counts.max(), predicted_counts.max()) * 1.15 + 1)
    axes.set_title(title)
    axes.legend(frameon=False)
    axes.grid(True, axis="y", alpha=0.3)
    return _save(figure, path)


def score_distribution(gold: np.ndarray, predicted: np.ndarray, path: Path, *, title: str,
                       value_range: Sequence[float] | None = None) -> Path:
    """Histograms of gold and predicted scores over the same bins."""
    gold, predicted = np.asarray(gold, dtype=float), np.asarray(predicted, dtype=float)
    low = min(gold.min(), predicted.min(), *(value_range or []))
    high = max(gold.max(), predicted.max(), *(value_range or []))
    bins = np.linspace(low, high if high > low else low + 1.0, 26)
    figure = _new_figure(SINGLE)
    axes = figure.add_subplot()
    axes.hist(gold, bins=bins, color="0.55", alpha=0.7, label="gold")
    axes.hist(predicted, bins=bins, histtype="step", linewidth=2, color="tab:blue", label="predicted")
    axes.set_xlabel("score")
    axes.set_ylabel("examples")
    axes.set_title(title)
    axes.legend(frameon=False)
    axes.grid(True, axis="y", alpha=0.3)
    return _save(figure, path)


def _minor_log_label(value: float, _position) -> str:
    """Label the 2, 3 and 5 multiples between a log axis's powers of ten, as plain numbers."""
    if value <= 0:
        return ""
    leading = round(value / 10 ** np.floor(np.log10(value)))
    return f"{value:g}" if leading in (2, 3, 5) else ""


def training_curves(records: Sequence[dict], main_metrics: dict[str, str], path: Path, *, title: str,
                    exported_step: int | None = None) -> Path:
    """Left: each task's training loss per logging step. Right: each task's dev main score and the
    overall score per evaluation, with the exported model's step marked."""
    tasks = list(main_metrics)
    colours = {name: f"C{i % 10}" for i, name in enumerate(tasks)}
    figure = _new_figure(WIDE)
    loss_axes, dev_axes = figure.subplots(1, 2)

    losses = [r for r in records if "loss" in r]
    positive = []
    for name in tasks:
        points = [(r["step"], r["loss"][name]) for r in losses if name in r["loss"]]
        if points:
            steps, values = zip(*points)
            loss_axes.plot(steps, values, color=colours[name], label=name, marker="." if len(points) < 30 else None)
            positive += [v for v in values if v > 0]
    if positive and max(positive) / min(positive) > 20:
        loss_axes.set_yscale("log")  # tasks' losses differ in scale (cross-entropy against squared error)
        loss_axes.yaxis.set_major_formatter(ticker.FuncFormatter(lambda v, _: f"{v:g}"))  # 0.1, 1: not 10^-1
        loss_axes.yaxis.set_minor_formatter(ticker.FuncFormatter(_minor_log_label))
    loss_axes.set_xlabel("optimizer step")
    loss_axes.set_ylabel("training loss (mean since the last log)")
    loss_axes.set_title("Training loss per task")

    evaluations = [r for r in records if "dev" in r]
    for name in tasks:
        points = [(r["step"], r["dev"][name]["main"]) for r in evaluations if name in r["dev"]]
        if points:
            steps, values = zip(*points)
            dev_axes.plot(steps, values, color=colours[name], marker="o", markersize=4,
                          label=f"{name} ({main_metrics[name]})")
    overall = [(r["step"], r["dev"]["overall"]) for r in evaluations if "overall" in r["dev"]]
    if overall:
        steps, values = zip(*overall)
        dev_axes.plot(steps, values, color="black", linestyle="--", marker="s", markersize=4, label="overall")
    if exported_step is not None and evaluations:
        dev_axes.axvline(exported_step, color="0.5", linestyle=":", label=f"exported (step {exported_step})")
    dev_axes.set_xlabel("optimizer step")
    dev_axes.set_ylabel("dev main score")
    dev_axes.set_title("Dev score per evaluation")
    for axes in (loss_axes, dev_axes):
        axes.grid(True, alpha=0.3)
        if axes.get_legend_handles_labels()[0]:
            axes.legend(frameon=False, fontsize=9)
        else:
            axes.text(0.5, 0.5, "no records", transform=axes.transAxes, ha="center", va="center", color="0.5")
    figure.suptitle(title)
    return _save(figure, path)


def task_weights(records: Sequence[dict], tasks: list[str], path: Path, *, title: str) -> Path:
    """Each task's balancing weight (the `task_weights` of the log records: the factor on its loss, or on its
    gradient under gradient surgery) per logging step."""
    figure = _new_figure(SINGLE)
    axes = figure.subplots()
    weighted = [r for r in records if "task_weights" in r]
    for i, name in enumerate(tasks):
        points = [(r["step"], r["task_weights"][name]) for r in weighted if name in r["task_weights"]]
        if points:
            steps, values = zip(*points)
            axes.plot(steps, values, color=f"C{i % 10}", label=name, marker="." if len(points) < 30 else None)
    axes.set_xlabel("optimizer step")
    axes.set_ylabel("weight on the task's loss (or gradient)")
    axes.set_title("Task weights (balancing)")
    axes.grid(True, alpha=0.3)
    axes.legend(frameon=False, fontsize=9)
    figure.suptitle(title)
    return _save(figure, path)
