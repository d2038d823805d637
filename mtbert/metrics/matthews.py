"""Matthews correlation coefficient, multi-class form (scikit-learn's matthews_corrcoef)."""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import evaluate
from sklearn.metrics import matthews_corrcoef

from mtbert.metrics import base


class MatthewsCorrelation(base.OfflineMetric):
    """Matthews correlation coefficient (Gorodkin's multi-class form).

    0.0 where it is undefined, as scikit-learn defines it: constant predictions, or a single class in
    the references (a model that always answers the same scores 0, below any informative one, so
    model selection prefers the latter). nan for no examples.
    """

    def _info(self) -> evaluate.MetricInfo:
        return base.info(
            "Matthews correlation coefficient, general multi-class form; 0.0 when undefined.",
            "Matthews, BBA 1975; Gorodkin, Comput. Biol. Chem. 2004",
            regression=False,
        )

    def _compute(self, predictions: Sequence[int], references: Sequence[int]) -> dict[str, float]:
        if not len(references):
            return {"matthews": base.NAN}
        with warnings.catch_warnings():  # one label in both vectors: the defined 0.0, said quietly
            warnings.filterwarnings("ignore", message="A single label was found")
            return {"matthews": float(matthews_corrcoef(references, predictions))}
