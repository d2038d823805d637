"""Evaluation metrics as `evaluate.Metric` classes that work without a network.

`evaluate.load("accuracy")` fetches the metric's script from the Hugging Face Hub on first use, so
it fails on an offline cluster node (and with `HF_HUB_OFFLINE=1`) unless that exact script was
cached earlier. The metrics here are defined in this module and instantiated directly, so they
never reach the Hub, yet they keep evaluate's API (`compute`, `add_batch`, `add`) for callers that
accumulate predictions batch by batch.

The arithmetic is plain numpy so scipy and scikit-learn stay test-only dependencies; the tests check
every metric against them. Where the reference raises or warns on degenerate input (a constant
vector for a correlation, fewer than two points), the metric returns `float("nan")` instead, so a
degenerate evaluation (say, a model that predicts one value) shows up as nan in the scores rather
than aborting training.
"""

from __future__ import annotations

import difflib
import os
from collections.abc import Sequence
from typing import Any

import datasets
import evaluate
import numpy as np

from mtbert.errors import MtbertError

__all__ = [
    "F1",
    "METRICS",
    "Accuracy",
    "MatthewsCorrelation",
    "Pearson",
    "Spearman",
    "compute_metrics",
    "main_score",
    "overall_score",
]

_CLASS_FEATURES = datasets.Features(
    {"predictions": datasets.Value("int64"), "references": datasets.Value("int64")}
)
_REGRESSION_FEATURES = datasets.Features(
    {"predictions": datasets.Value("float64"), "references": datasets.Value("float64")}
)
_CLASS_INPUTS = """
Args:
    predictions (`list[int]`): predicted class ids.
    references (`list[int]`): gold class ids.
"""
_REGRESSION_INPUTS = """
Args:
    predictions (`list[float]`): predicted scores.
    references (`list[float]`): gold scores.
Returns nan (not an error) when either vector is constant or has fewer than two points.
"""


class _NumpyMetric(evaluate.Metric):
    """Shared construction for the metrics below.

    evaluate's default (`keep_in_memory=False`) writes every batch to an Arrow file under the
    metrics cache and takes file locks; a single process has no use for that, so in-memory is the
    default unless the caller sets up a distributed (`num_process > 1`) metric.
    """

    def __init__(self, keep_in_memory: bool | None = None, **kwargs: Any) -> None:
        if keep_in_memory is None:
            keep_in_memory = kwargs.get("num_process", 1) == 1
        super().__init__(keep_in_memory=keep_in_memory, **kwargs)

    def _build_data_dir(self) -> str:
        # evaluate creates ~/.cache/huggingface/metrics/<name>/ even when nothing is written there,
        # which fails on a read-only home; in memory the folder is never used, so only name it.
        if self.keep_in_memory:
            return os.path.join(self._data_dir_root, self.name, self.config_name)
        return super()._build_data_dir()


def _info(description: str, citation: str, regression: bool) -> evaluate.MetricInfo:
    return evaluate.MetricInfo(
        description=description,
        citation=citation,
        inputs_description=_REGRESSION_INPUTS if regression else _CLASS_INPUTS,
        features=_REGRESSION_FEATURES if regression else _CLASS_FEATURES,
        # Not format="numpy": datasets' numpy formatter casts float64 columns to float32, which
        # moves correlations by ~1e-9. `_compute` gets Python lists and converts them itself.
    )


def _as_arrays(pred: Any, ref: Any, dtype: type) -> tuple[np.ndarray, np.ndarray]:
    return np.asarray(pred, dtype=dtype), np.asarray(ref, dtype=dtype)


# --- classification -------------------------------------------------------------------------------


def _accuracy(pred: np.ndarray, ref: np.ndarray) -> float:
    return float(np.mean(pred == ref)) if len(ref) else float("nan")


def _binary_f1(pred: np.ndarray, ref: np.ndarray) -> float:
    stray = np.setdiff1d(np.union1d(pred, ref), [0, 1])
    if stray.size:
        # A multi-class task scored without num_labels lands here; say how to fix it.
        raise MtbertError(
            f"binary F1 expects labels 0 and 1, got {stray.tolist()}; "
            "pass average='macro' (or num_labels > 2) for multi-class F1"
        )
    tp, n_pred, n_true = np.sum((pred == 1) & (ref == 1)), np.sum(pred == 1), np.sum(ref == 1)
    return float(_f1_from_counts(tp, n_pred, n_true))


def _f1_from_counts(tp: Any, n_pred: Any, n_true: Any) -> Any:
    """F1 = 2tp / (predicted + true); 0 where both are 0, as sklearn's default zero_division."""
    denom = np.asarray(n_pred + n_true, dtype=np.float64)
    safe = np.where(denom > 0, denom, 1.0)
    return np.where(denom > 0, 2.0 * tp / safe, 0.0)


def _confusion(pred: np.ndarray, ref: np.ndarray) -> np.ndarray:
    """Confusion matrix (rows: reference, columns: prediction) over the labels that occur."""
    labels, codes = np.unique(np.concatenate([ref, pred]), return_inverse=True)
    k = len(labels)
    ref_codes, pred_codes = codes[: len(ref)], codes[len(ref) :]
    return np.bincount(ref_codes * k + pred_codes, minlength=k * k).reshape(k, k)


def _macro_f1(pred: np.ndarray, ref: np.ndarray) -> float:
    # Like sklearn with labels=None, only labels seen in either vector count: a class that never
    # occurs would contribute a meaningless 0 and drag the mean down.
    if not len(ref):
        return float("nan")
    conf = _confusion(pred, ref)
    per_class = _f1_from_counts(np.diag(conf), conf.sum(axis=0), conf.sum(axis=1))
    return float(np.mean(per_class))


def _matthews(pred: np.ndarray, ref: np.ndarray) -> float:
    """Gorodkin's multi-class MCC; 0.0 when undefined (one side constant), as sklearn returns."""
    conf = _confusion(pred, ref).astype(np.float64)
    n = conf.sum()
    true_sum, pred_sum = conf.sum(axis=1), conf.sum(axis=0)
    cov_tp = np.trace(conf) * n - true_sum @ pred_sum
    cov_tt = n * n - true_sum @ true_sum
    cov_pp = n * n - pred_sum @ pred_sum
    if cov_tt * cov_pp == 0:
        return 0.0
    return float(cov_tp / np.sqrt(cov_tt * cov_pp))


def _f1_average(average: str | None, num_labels: int | None) -> str:
    if average is None:
        return "macro" if num_labels is not None and num_labels > 2 else "binary"
    if average not in ("binary", "macro"):
        raise ValueError(f"F1 average must be 'binary' or 'macro', got {average!r}")
    return average


class Accuracy(_NumpyMetric):
    """Fraction of predictions equal to the reference label."""

    def _info(self) -> evaluate.MetricInfo:
        return _info("Fraction of correct predictions.", "", regression=False)

    def _compute(self, predictions: Sequence[Any], references: Sequence[Any]) -> dict[str, float]:
        return {"accuracy": _accuracy(*_as_arrays(predictions, references, np.int64))}


class F1(_NumpyMetric):
    """F1 of label 1 for binary tasks, unweighted mean of per-class F1 (`macro`) otherwise.

    `compute(..., average="macro")` or `compute(..., num_labels=3)` select macro; the default is
    binary, which rejects labels other than 0 and 1 rather than silently scoring them as negatives.
    """

    def _info(self) -> evaluate.MetricInfo:
        return _info(
            "F1 score: harmonic mean of precision and recall (binary, positive label 1, or macro).",
            "van Rijsbergen, Information Retrieval, 1979",
            regression=False,
        )

    def _compute(
        self,
        predictions: Sequence[Any],
        references: Sequence[Any],
        average: str | None = None,
        num_labels: int | None = None,
    ) -> dict[str, float]:
        pred, ref = _as_arrays(predictions, references, np.int64)
        if _f1_average(average, num_labels) == "macro":
            return {"f1": _macro_f1(pred, ref)}
        return {"f1": _binary_f1(pred, ref)}


class MatthewsCorrelation(_NumpyMetric):
    """Matthews correlation coefficient (multi-class form); 0.0 when undefined."""

    def _info(self) -> evaluate.MetricInfo:
        return _info(
            "Matthews correlation coefficient, general multi-class form; 0.0 when undefined.",
            "Matthews, BBA 1975; Gorodkin, Comput. Biol. Chem. 2004",
            regression=False,
        )

    def _compute(self, predictions: Sequence[Any], references: Sequence[Any]) -> dict[str, float]:
        return {"matthews": _matthews(*_as_arrays(predictions, references, np.int64))}


# --- correlation ----------------------------------------------------------------------------------


def _pearson(x: np.ndarray, y: np.ndarray) -> float:
    """Pearson's r as scipy.stats.pearsonr, but nan instead of a warning or an error."""
    if len(x) < 2:
        return float("nan")
    xc, yc = x - x.mean(), y - y.mean()
    # Scaling by the largest deviation first keeps the norms from overflowing on huge values.
    xc, yc = _scaled(xc), _scaled(yc)
    nx, ny = np.linalg.norm(xc), np.linalg.norm(yc)
    if nx == 0 or ny == 0 or not (np.isfinite(nx) and np.isfinite(ny)):
        return float("nan")
    r = float(np.dot(xc / nx, yc / ny))
    # Rounding can push |r| a hair past 1.
    return max(-1.0, min(1.0, r))


def _scaled(v: np.ndarray) -> np.ndarray:
    peak = np.max(np.abs(v))
    return v / peak if peak > 0 and np.isfinite(peak) else v


def _average_ranks(v: np.ndarray) -> np.ndarray:
    """1-based ranks, ties sharing their mean rank, as scipy.stats.rankdata(method="average")."""
    order = np.argsort(v, kind="stable")
    ordered = v[order]
    starts = np.flatnonzero(np.r_[True, ordered[1:] != ordered[:-1]])
    ends = np.r_[starts[1:], len(v)]
    # A tie group covering sorted positions start..end-1 gets rank mean (start+1 + end) / 2.
    group_rank = (starts + 1 + ends) / 2.0
    ranks = np.empty(len(v), dtype=np.float64)
    ranks[order] = np.repeat(group_rank, ends - starts)
    return ranks


def _spearman(x: np.ndarray, y: np.ndarray) -> float:
    # scipy propagates nan; ranking would otherwise give nan a finite rank.
    if np.isnan(x).any() or np.isnan(y).any():
        return float("nan")
    return _pearson(_average_ranks(x), _average_ranks(y))


class Pearson(_NumpyMetric):
    """Pearson correlation; nan for constant or fewer than two points (scipy warns or raises)."""

    def _info(self) -> evaluate.MetricInfo:
        return _info("Pearson correlation coefficient.", "Pearson, Proc. R. Soc. 1895", True)

    def _compute(self, predictions: Sequence[Any], references: Sequence[Any]) -> dict[str, float]:
        return {"pearson": _pearson(*_as_arrays(predictions, references, np.float64))}


class Spearman(_NumpyMetric):
    """Spearman rank correlation with average ranks for ties; nan where Pearson would be."""

    def _info(self) -> evaluate.MetricInfo:
        return _info(
            "Spearman rank correlation (Pearson on average ranks).",
            "Spearman, Am. J. Psychol. 1904",
            regression=True,
        )

    def _compute(self, predictions: Sequence[Any], references: Sequence[Any]) -> dict[str, float]:
        return {"spearman": _spearman(*_as_arrays(predictions, references, np.float64))}


# --- registry -------------------------------------------------------------------------------------

METRICS: dict[str, type[evaluate.Metric]] = {
    "accuracy": Accuracy,
    "f1": F1,
    "matthews": MatthewsCorrelation,
    "pearson": Pearson,
    "spearman": Spearman,
}


def _check_names(names: Sequence[str]) -> None:
    for name in names:
        if name not in METRICS:
            close = difflib.get_close_matches(name, METRICS, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise MtbertError(
                f"unknown metric {name!r}{hint}; valid metrics: {', '.join(sorted(METRICS))}"
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
    for name in names:
        extra = {"num_labels": num_labels} if name == "f1" else {}
        # A fresh instance per call: construction costs ~0.05 ms against ~5 ms for compute (measured
        # on 1,000 examples), and a shared one would carry rows left buffered by a failed call into
        # the next and race between threads.
        metric = METRICS[name]()
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
