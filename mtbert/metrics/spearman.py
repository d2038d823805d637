"""Spearman rank correlation coefficient (scipy.stats.spearmanr)."""

from __future__ import annotations

from collections.abc import Sequence

import evaluate
import numpy as np
from scipy.stats import spearmanr

from mtbert.metrics import base


def spearman(x: np.ndarray, y: np.ndarray) -> float:
    """scipy's rho (Pearson on average ranks, ties sharing their mean rank), but nan without a warning
    where it is undefined: fewer than two points, a constant vector. A nan value makes it nan, as in scipy."""
    if len(x) < 2 or np.isnan(x).any() or np.isnan(y).any() or x.min() == x.max() or y.min() == y.max():
        return base.NAN
    return float(spearmanr(x, y).statistic)


class Spearman(base.OfflineMetric):
    """Spearman rank correlation with average ranks for ties; nan where Pearson would be."""

    def _info(self) -> evaluate.MetricInfo:
        return base.info("Spearman rank correlation (Pearson on average ranks).", "Spearman, Am. J. Psychol. 1904",
                         regression=True)

    def _compute(self, predictions: Sequence[float], references: Sequence[float]) -> dict[str, float]:
        return {"spearman": spearman(np.asarray(predictions, dtype=np.float64),
                                     np.asarray(references, dtype=np.float64))}
