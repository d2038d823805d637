"""F1 (scikit-learn's f1_score): of label 1 for binary tasks, the unweighted mean over classes (macro) else."""

from __future__ import annotations

from collections.abc import Sequence

import evaluate
from sklearn.metrics import f1_score

from mtbert.errors import MtbertError
from mtbert.metrics import base


def f1_average(average: str | None, num_labels: int | None) -> str:
    if average is None:
        return "macro" if num_labels is not None and num_labels > 2 else "binary"
    if average not in ("binary", "macro"):
        raise ValueError(f"F1 average must be 'binary' or 'macro', got {average!r}")
    return average


class F1(base.OfflineMetric):
    """F1 of label 1 for binary tasks, unweighted mean of per-class F1 (`macro`) otherwise.

    `compute(..., average="macro")` or `compute(..., num_labels=3)` select macro; the default is
    binary, which rejects labels other than 0 and 1 rather than silently scoring them as negatives.
    Macro averages over the labels that occur in either vector (a class never seen would add a
    meaningless 0). A class never predicted nor present scores 0 (zero_division=0), so binary F1
    without any positive is 0.0; nan for no examples.
    """

    def _info(self) -> evaluate.MetricInfo:
        return base.info(
            "F1 score: harmonic mean of precision and recall (binary, positive label 1, or macro).",
            "van Rijsbergen, Information Retrieval, 1979",
            regression=False,
        )

    def _compute(
        self,
        predictions: Sequence[int],
        references: Sequence[int],
        average: str | None = None,
        num_labels: int | None = None,
    ) -> dict[str, float]:
        average = f1_average(average, num_labels)
        if average == "binary":
            stray = sorted((set(predictions) | set(references)) - {0, 1})
            if stray:
                # A multi-class task scored without num_labels lands here; say how to fix it.
                raise MtbertError(
                    f"binary F1 expects labels 0 and 1, got {stray}; "
                    "pass average='macro' (or num_labels > 2) for multi-class F1"
                )
        if not len(references):
            return {"f1": base.NAN}
        return {"f1": float(f1_score(references, predictions, average=average, zero_division=0.0))}
