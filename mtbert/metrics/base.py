"""What the metric modules of this package share: in-memory construction and their `MetricInfo`.

A metric module imports this one as `from mtbert.metrics import base` and subclasses `base.OfflineMetric`
by attribute: `evaluate.load(<a metric's file>)` takes the first `EvaluationModule` class the module
defines or imports by name, which must be the metric itself.
"""

from __future__ import annotations

import os
from typing import Any

import datasets
import evaluate

NAN = float("nan")

_CLASS_FEATURES = datasets.Features({"predictions": datasets.Value("int64"), "references": datasets.Value("int64")})
_REGRESSION_FEATURES = datasets.Features(
    {"predictions": datasets.Value("float64"), "references": datasets.Value("float64")}
)
_CLASS_INPUTS = """
Args:
    predictions (`list[int]`): predicted class ids.
    references (`list[int]`): gold class ids.
Returns nan (not an error) for no examples.
"""
_REGRESSION_INPUTS = """
Args:
    predictions (`list[float]`): predicted scores.
    references (`list[float]`): gold scores.
Returns nan (not an error or a warning) when either vector is constant or has fewer than two points.
"""


class OfflineMetric(evaluate.Metric):
    """evaluate's Metric, in memory by default.

    evaluate's default (`keep_in_memory=False`) writes every batch to an Arrow file under the metrics
    cache and takes file locks; a single process has no use for that, so in-memory is the default
    unless the caller sets up a distributed (`num_process > 1`) metric.
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


def info(description: str, citation: str, regression: bool) -> evaluate.MetricInfo:
    return evaluate.MetricInfo(
        description=description,
        citation=citation,
        inputs_description=_REGRESSION_INPUTS if regression else _CLASS_INPUTS,
        features=_REGRESSION_FEATURES if regression else _CLASS_FEATURES,
        # Not format="numpy": datasets' numpy formatter casts float64 columns to float32, which
        # moves correlations by ~1e-9. `_compute` gets Python lists.
    )
