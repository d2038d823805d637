"""Pearson correlation coefficient (scipy.stats.pearsonr)."""

from __future__ import annotations

from collections.abc import Sequence

import evaluate
import numpy as np
from scipy.stats import pearsonr

from mtbert.metrics import base


def pearson(x: np.ndarray, y: np.ndarray) -> float:
    """scipy's r, but nan (without a warning or an error) where it is undefined: fewer than two points,
    a constant vector, a value that is not finite."""
    if len(x) < 2 or not (np.isfinite(x).all() and np.isfinite(y).all()) or x.min() == x.max() or y.min() == y.max():
        return base.NAN
    return float(pearsonr(x, y).statistic)


class Pearson(base.OfflineMetric):
    """Pearson correlation; nan for a constant vector or fewer than two points (scipy warns or raises)."""

    def _info(self) -> evaluate.MetricInfo:
        return base.info("Pearson correlation coefficient.", "Pearson, Proc. R. Soc. 1895", regression=True)

    def _compute(self, predictions: Sequence[float], references: Sequence[float]) -> dict[str, float]:
        return {"pearson": pearson(np.asarray(predictions, dtype=np.float64),
                                   np.asarray(references, dtype=np.float64))}
