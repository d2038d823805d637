"""Accuracy: the fraction of predictions equal to the reference label (scikit-learn's accuracy_score)."""

from __future__ import annotations

from collections.abc import Sequence

import evaluate
from sklearn.metrics import accuracy_score

from mtbert.metrics import base


class Accuracy(base.OfflineMetric):
    """Fraction of predictions equal to the reference label; nan for no examples."""

    def _info(self) -> evaluate.MetricInfo:
        return base.info("Fraction of correct predictions.", "", regression=False)

    def _compute(self, predictions: Sequence[int], references: Sequence[int]) -> dict[str, float]:
        if not len(references):
            return {"accuracy": base.NAN}
        return {"accuracy": float(accuracy_score(references, predictions))}
