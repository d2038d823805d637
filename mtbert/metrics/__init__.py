"""Evaluation metrics as `evaluate` metrics that work without a network, computed by scikit-learn and
scipy as the Hugging Face Hub's own metric scripts compute them.

`evaluate.load("accuracy")` fetches the metric's script from the Hub on first use, so it fails on an
offline cluster node (and with `HF_HUB_OFFLINE=1`) unless that exact script was cached earlier. Each
metric here is a module of this package (accuracy.py, f1.py, matthews.py, pearson.py, spearman.py)
defining one `evaluate.Metric`, which mtbert instantiates directly, so it never reaches the Hub; the
same file also loads with `evaluate.load(<its path>)`, and the classes keep evaluate's API (`compute`,
`add_batch`, `add`) for callers that accumulate predictions batch by batch.

Degenerate input gives a defined value, never an error or a warning: Pearson and Spearman are nan for
a constant vector or fewer than two points (scipy warns or raises there), Matthews is 0.0 for constant
predictions or a single class (scikit-learn's definition), and every metric is nan for no examples.
Model selection (training/loop.py) never lets a nan overall score stand in the way of a finite one.
"""

from __future__ import annotations

import difflib
import functools
import importlib
from collections.abc import Sequence
from typing import Any

import numpy as np

from mtbert.errors import MtbertError

__all__ = [
    "F1",
    "METRICS",
    "METRIC_NAMES",
    "Accuracy",
    "MatthewsCorrelation",
    "Pearson",
    "Spearman",
    "compute_metrics",
    "main_score",
    "overall_score",
]

# --- registry -------------------------------------------------------------------------------------

# name -> (module of this package, class). The classes import `evaluate` (which imports transformers'
# pipelines), scikit-learn and scipy: seconds of start-up that `mtbert train` does not need before its first
# evaluation, so they load on first use (`compute_metrics`, or `METRICS` / a class name read from here).
_CLASSES = {
    "accuracy": ("accuracy", "Accuracy"),
    "f1": ("f1", "F1"),
    "matthews": ("matthews", "MatthewsCorrelation"),
    "pearson": ("pearson", "Pearson"),
    "spearman": ("spearman", "Spearman"),
}
METRIC_NAMES: tuple[str, ...] = tuple(_CLASSES)
"Every metric a task can name, without importing the metrics."


@functools.cache
def _metric_classes() -> dict[str, type]:
    """{name: its evaluate.Metric class} (METRICS), imported on first use."""
    return {name: getattr(importlib.import_module(f"mtbert.metrics.{module}"), cls)
            for name, (module, cls) in _CLASSES.items()}


def __getattr__(attribute: str) -> Any:
    """METRICS and the metric classes, imported when first read (PEP 562)."""
    if attribute == "METRICS":
        return _metric_classes()
    for module, cls in _CLASSES.values():
        if attribute == cls:
            return getattr(importlib.import_module(f"mtbert.metrics.{module}"), cls)
    raise AttributeError(f"module {__name__!r} has no attribute {attribute!r}")


def _check_names(names: Sequence[str]) -> None:
    for name in names:
        if name not in METRIC_NAMES:
            close = difflib.get_close_matches(name, METRIC_NAMES, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise MtbertError(
                f"unknown metric {name!r}{hint}; valid metrics: {', '.join(sorted(METRIC_NAMES))}"
            )


def compute_metrics(
    names: Sequence[str],
    predictions: Sequence[Any] | np.ndarray,
    references: Sequence[Any] | np.ndarray,
    *,
    num_labels: int | None = None,
) -> dict[str, float]:
    """Score `predictions` against `references` with each metric in `names`.

    F1 is macro-averaged when `num_labels > 2`, binary otherwise. Unknown names raise `MtbertError`
    before anything is computed.
    """
    if isinstance(names, str):
        names = [names]
    _check_names(names)
    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions but {len(references)} references")
    results: dict[str, float] = {}
    classes = _metric_classes()
    for name in names:
        extra = {"num_labels": num_labels} if name == "f1" else {}
        # A fresh instance per call: construction costs ~0.05 ms against ~5 ms for compute (measured
        # on 1,000 examples), and a shared one would carry rows left buffered by a failed call into
        # the next and race between threads.
        metric = classes[name]()
        results.update(metric.compute(predictions=predictions, references=references, **extra))
    return results


def main_score(values: dict[str, float], main: list[str]) -> float:
    """Mean of the metrics named in `main` (a task's headline number, e.g. pearson+spearman)."""
    if not main:
        raise MtbertError("main metric list is empty; name at least one metric")
    missing = [name for name in main if name not in values]
    if missing:
        raise MtbertError(
            f"main metric(s) {', '.join(missing)} not computed; available: "
            f"{', '.join(sorted(values)) or 'none'}"
        )
    return float(np.mean([values[name] for name in main]))


def overall_score(task_scores: dict[str, float]) -> float:
    """Unweighted mean of the per-task main scores (GLUE-style average)."""
    if not task_scores:
        raise MtbertError("no task scores to average")
    return float(np.mean(list(task_scores.values())))
