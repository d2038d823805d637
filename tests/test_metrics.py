"""The metrics are scikit-learn's and scipy's, with defined values where those are undefined, and never
need the Hugging Face Hub: each loads with evaluate.load from its file, offline."""

from __future__ import annotations

import math
import socket
import warnings
from pathlib import Path

import evaluate
import numpy as np
import pytest
from scipy import stats
from sklearn import metrics as skm

import mtbert.metrics
from mtbert.errors import MtbertError
from mtbert.metrics import (
    F1,
    METRICS,
    Accuracy,
    MatthewsCorrelation,
    Pearson,
    Spearman,
    compute_metrics,
    main_score,
    overall_score,
)

SEEDS = [0, 1, 2, 3, 4]
TOL = 1e-9


def _labels(seed: int, num_labels: int, n: int = 300) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    refs = rng.integers(0, num_labels, n)
    # Mostly-right predictions give correlations away from 0, where errors would show.
    noise = rng.integers(0, num_labels, n)
    preds = np.where(rng.random(n) < 0.6, refs, noise)
    return preds, refs


def _scores(seed: int, ties: bool, n: int = 300) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    refs = rng.normal(size=n) * 2 + 3
    preds = refs + rng.normal(size=n)
    if ties:
        # Rounding to half-points makes many equal values on both sides, exercising tie ranks.
        preds, refs = np.round(preds * 2) / 2, np.round(refs * 2) / 2
    return preds, refs


# --- agreement with the references --------------------------------------------------------------


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("num_labels", [2, 3, 5])
def test_accuracy_and_matthews_match_sklearn(seed: int, num_labels: int) -> None:
    preds, refs = _labels(seed, num_labels)
    acc = Accuracy().compute(predictions=preds, references=refs)["accuracy"]
    mcc = MatthewsCorrelation().compute(predictions=preds, references=refs)["matthews"]
    assert acc == pytest.approx(skm.accuracy_score(refs, preds), abs=TOL)
    assert mcc == pytest.approx(skm.matthews_corrcoef(refs, preds), abs=TOL)


@pytest.mark.parametrize("seed", SEEDS)
def test_binary_f1_matches_sklearn(seed: int) -> None:
    preds, refs = _labels(seed, 2)
    f1 = F1().compute(predictions=preds, references=refs)["f1"]
    assert f1 == pytest.approx(skm.f1_score(refs, preds), abs=TOL)


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("num_labels", [3, 5])
def test_macro_f1_matches_sklearn(seed: int, num_labels: int) -> None:
    preds, refs = _labels(seed, num_labels)
    expected = skm.f1_score(refs, preds, average="macro")
    by_average = F1().compute(predictions=preds, references=refs, average="macro")["f1"]
    by_labels = F1().compute(predictions=preds, references=refs, num_labels=num_labels)["f1"]
    assert by_average == pytest.approx(expected, abs=TOL)
    assert by_labels == pytest.approx(expected, abs=TOL)


def test_macro_f1_counts_only_labels_that_occur() -> None:
    # Label 4 is predicted but never true, label 3 never appears: sklearn averages over {0,1,2,4}.
    preds, refs = [0, 1, 1, 4, 2], [0, 1, 2, 2, 2]
    expected = skm.f1_score(refs, preds, average="macro")
    assert F1().compute(predictions=preds, references=refs, average="macro")["f1"] == (
        pytest.approx(expected, abs=TOL)
    )


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("ties", [False, True])
def test_correlations_match_scipy(seed: int, ties: bool) -> None:
    preds, refs = _scores(seed, ties)
    pearson = Pearson().compute(predictions=preds, references=refs)["pearson"]
    spearman = Spearman().compute(predictions=preds, references=refs)["spearman"]
    assert pearson == pytest.approx(stats.pearsonr(preds, refs).statistic, abs=TOL)
    assert spearman == pytest.approx(stats.spearmanr(preds, refs).statistic, abs=TOL)


@pytest.mark.parametrize("seed", SEEDS)
def test_spearman_heavy_ties_match_scipy(seed: int) -> None:
    # Integer scores in 0..5 (STS-B style labels): nearly every value is tied.
    rng = np.random.default_rng(seed)
    refs = rng.integers(0, 6, 200).astype(float)
    preds = np.clip(refs + rng.integers(-1, 2, 200), 0, 5)
    got = Spearman().compute(predictions=preds, references=refs)["spearman"]
    assert got == pytest.approx(stats.spearmanr(preds, refs).statistic, abs=TOL)


@pytest.mark.parametrize("seed", SEEDS)
def test_compute_metrics_matches_references(seed: int) -> None:
    preds, refs = _labels(seed, 3)
    got = compute_metrics(["accuracy", "f1", "matthews"], preds, refs, num_labels=3)
    assert got["accuracy"] == pytest.approx(skm.accuracy_score(refs, preds), abs=TOL)
    assert got["f1"] == pytest.approx(skm.f1_score(refs, preds, average="macro"), abs=TOL)
    assert got["matthews"] == pytest.approx(skm.matthews_corrcoef(refs, preds), abs=TOL)

    x, y = _scores(seed, ties=True)
    got = compute_metrics(["pearson", "spearman"], x.tolist(), y.tolist())
    assert got == pytest.approx(
        {"pearson": stats.pearsonr(x, y).statistic, "spearman": stats.spearmanr(x, y).statistic},
        abs=TOL,
    )


def test_compute_metrics_f1_is_binary_for_two_labels() -> None:
    preds, refs = _labels(7, 2)
    for num_labels in (None, 2):
        got = compute_metrics(["f1"], preds, refs, num_labels=num_labels)["f1"]
        assert got == pytest.approx(skm.f1_score(refs, preds), abs=TOL)


# --- by hand -------------------------------------------------------------------------------------


def test_small_cases_computed_by_hand() -> None:
    preds, refs = [1, 1, 0, 1, 0], [1, 0, 0, 1, 0]  # tp 2, fp 1, tn 2, fn 0
    got = compute_metrics(["accuracy", "f1", "matthews"], preds, refs)
    assert got["accuracy"] == pytest.approx(4 / 5)
    assert got["f1"] == pytest.approx(2 * 2 / (2 * 2 + 1 + 0))
    assert got["matthews"] == pytest.approx((2 * 2 - 1 * 0) / math.sqrt(3 * 2 * 2 * 3))
    # Macro F1 over labels 0, 1, 2: per class 2*2/(3+2), 1, 0 (label 2 never predicted).
    assert compute_metrics(["f1"], [0, 1, 1, 0, 0], [0, 1, 1, 2, 0], num_labels=3)["f1"] == pytest.approx(0.6)
    # Pearson of (1, 2, 3) and (1, 2, 6): deviations (-1, 0, 1) and (-2, -1, 3).
    x, y = [1.0, 2.0, 3.0], [1.0, 2.0, 6.0]
    assert compute_metrics(["pearson"], x, y)["pearson"] == pytest.approx(5 / math.sqrt(2 * 14))
    # Spearman with a tie: ranks (1, 2.5, 2.5, 4) against (1, 2, 3, 4).
    rho = compute_metrics(["spearman"], [1.0, 5.0, 5.0, 9.0], [0.0, 1.0, 2.0, 3.0])["spearman"]
    assert rho == pytest.approx(4.5 / math.sqrt(4.5 * 5))


# --- degenerate inputs ----------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(METRICS))
def test_no_examples_score_nan(name: str) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        value = next(iter(METRICS[name]().compute(predictions=[], references=[]).values()))
    assert math.isnan(value)


def test_a_constant_model_scores_nan_correlations_and_zero_matthews_quietly() -> None:
    # What a barely trained model on a small dev set gives; model selection (training/loop.py) copes with the nan.
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        regression = compute_metrics(["pearson", "spearman"], [2.5] * 6, [0.0, 1.0, 2.0, 3.0, 4.0, 5.0])
        classes = compute_metrics(["accuracy", "f1", "matthews"], [1] * 6, [0, 1, 1, 0, 1, 1])
        single = compute_metrics(["accuracy", "f1", "matthews"], [1, 1, 0], [1, 1, 1])
    assert math.isnan(regression["pearson"]) and math.isnan(regression["spearman"])
    assert classes == pytest.approx({"accuracy": 4 / 6, "f1": 2 * 4 / (2 * 4 + 2), "matthews": 0.0})
    assert single == pytest.approx({"accuracy": 2 / 3, "f1": 2 * 2 / (2 * 2 + 1), "matthews": 0.0})
    assert math.isnan(overall_score({"sts": main_score(regression, ["pearson", "spearman"]), "sst": 0.5}))


@pytest.mark.parametrize("values", [[1.0, float("inf"), 3.0], [1.0, float("nan"), 3.0]])
def test_a_pearson_of_values_that_are_not_finite_is_nan(values: list[float]) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert math.isnan(Pearson().compute(predictions=values, references=[1.0, 2.0, 4.0])["pearson"])



@pytest.mark.parametrize("cls", [Pearson, Spearman])
@pytest.mark.parametrize(
    ("preds", "refs"),
    [([2.0, 2.0, 2.0], [1.0, 2.0, 3.0]), ([1.0, 2.0, 3.0], [4.0, 4.0, 4.0]), ([1.0], [2.0])],
    ids=["constant-predictions", "constant-references", "one-point"],
)
def test_undefined_correlation_is_nan_without_warning(
    cls: type[evaluate.Metric], preds: list[float], refs: list[float]
) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        value = next(iter(cls().compute(predictions=preds, references=refs).values()))
    assert math.isnan(value)


def test_spearman_propagates_nan_like_scipy() -> None:
    preds, refs = [1.0, float("nan"), 3.0, 4.0], [1.0, 2.0, 3.0, 5.0]
    assert math.isnan(stats.spearmanr(preds, refs).statistic)
    assert math.isnan(Spearman().compute(predictions=preds, references=refs)["spearman"])


@pytest.mark.filterwarnings("ignore:A single label was found")
@pytest.mark.parametrize(
    ("preds", "refs"),
    [([1, 1, 1], [1, 1, 0]), ([0, 1, 2], [2, 2, 2]), ([1, 1], [1, 1])],
)
def test_undefined_matthews_is_zero_like_sklearn(preds: list[int], refs: list[int]) -> None:
    assert skm.matthews_corrcoef(refs, preds) == 0.0
    assert MatthewsCorrelation().compute(predictions=preds, references=refs)["matthews"] == 0.0


def test_binary_f1_without_positives_is_zero_like_sklearn() -> None:
    assert F1().compute(predictions=[0, 0, 0], references=[0, 0, 0])["f1"] == 0.0


def test_binary_f1_rejects_other_labels() -> None:
    with pytest.raises(MtbertError, match=r"\[2\].*average='macro'"):
        F1().compute(predictions=[0, 1, 2], references=[0, 1, 1])


def test_mismatched_lengths_raise() -> None:
    with pytest.raises(ValueError, match="3 predictions but 2 references"):
        compute_metrics(["accuracy"], [0, 1, 1], [0, 1])


# --- evaluate API ---------------------------------------------------------------------------------


def _batches(values: np.ndarray, sizes: list[int]) -> list[np.ndarray]:
    return np.split(values, np.cumsum(sizes)[:-1])


@pytest.mark.parametrize("name", sorted(METRICS))
def test_add_batch_equals_single_compute(name: str) -> None:
    if name in ("pearson", "spearman"):
        preds, refs = _scores(11, ties=True, n=100)
    else:
        preds, refs = _labels(11, 2, n=100)
    whole = METRICS[name]().compute(predictions=preds, references=refs)

    metric = METRICS[name]()
    sizes = [1, 30, 7, 62]
    for p, r in zip(_batches(preds, sizes), _batches(refs, sizes), strict=True):
        metric.add_batch(predictions=p, references=r)
    assert metric.compute() == whole

    # The instance is reusable: compute() clears what was added.
    assert metric.compute(predictions=preds, references=refs) == whole


def test_add_one_example_at_a_time() -> None:
    metric = Accuracy()
    for p, r in [(0, 0), (1, 0), (1, 1)]:
        metric.add(predictions=p, references=r)
    assert metric.compute() == {"accuracy": pytest.approx(2 / 3)}


@pytest.mark.parametrize(
    ("name", "dtype"),
    [("accuracy", "int64"), ("f1", "int64"), ("matthews", "int64")]
    + [("pearson", "float64"), ("spearman", "float64")],
)
def test_info_declares_features(name: str, dtype: str) -> None:
    info = METRICS[name]().info
    assert info.description and info.inputs_description
    assert {key: feature.dtype for key, feature in info.features.items()} == {
        "predictions": dtype,
        "references": dtype,
    }


# --- registry and scores --------------------------------------------------------------------------


def test_unknown_metric_names_the_nearest_and_the_valid_ones() -> None:
    with pytest.raises(MtbertError) as info:
        compute_metrics(["accuracy", "spearmann"], [0.0, 1.0], [0.0, 1.0])
    message = str(info.value)
    assert "'spearmann'" in message and "did you mean 'spearman'" in message
    assert all(name in message for name in METRICS)


def test_unknown_metric_without_a_near_name() -> None:
    with pytest.raises(MtbertError, match="unknown metric 'bleu'; valid metrics: accuracy"):
        compute_metrics(["bleu"], [0], [0])


def test_single_name_string_is_one_metric() -> None:
    assert compute_metrics("accuracy", [1, 0], [1, 1]) == {"accuracy": 0.5}


def test_main_and_overall_scores() -> None:
    values = {"pearson": 0.8, "spearman": 0.6, "accuracy": 0.1}
    assert main_score(values, ["pearson", "spearman"]) == pytest.approx(0.7)
    assert main_score(values, ["accuracy"]) == pytest.approx(0.1)
    assert overall_score({"sst2": 0.9, "stsb": 0.7, "cola": 0.5}) == pytest.approx(0.7)


def test_main_score_names_a_missing_metric() -> None:
    with pytest.raises(MtbertError, match="matthews.*available: accuracy, f1"):
        main_score({"accuracy": 0.5, "f1": 0.4}, ["matthews"])
    with pytest.raises(MtbertError):
        main_score({"accuracy": 0.5}, [])
    with pytest.raises(MtbertError):
        overall_score({})


# --- offline --------------------------------------------------------------------------------------


def _score_everything() -> dict[str, float]:
    preds, refs = _labels(3, 2, n=50)
    scores = compute_metrics(["accuracy", "f1", "matthews"], preds, refs, num_labels=2)
    scores |= compute_metrics(["pearson", "spearman"], preds * 1.5, refs * 1.0)
    return scores


@pytest.fixture
def no_network(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError(f"network access attempted: {args}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)


@pytest.mark.parametrize("offline", ["1", None], ids=["HF_HUB_OFFLINE=1", "unset"])
def test_works_without_network(
    monkeypatch: pytest.MonkeyPatch, no_network: None, offline: str | None
) -> None:
    if offline is None:
        monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    else:
        monkeypatch.setenv("HF_HUB_OFFLINE", offline)
    assert set(_score_everything()) == set(METRICS)


def test_never_calls_evaluate_load(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("evaluate.load must not be used; it needs the Hub")

    monkeypatch.setattr(evaluate, "load", refuse)
    monkeypatch.setattr(evaluate.loading, "load", refuse)
    assert set(_score_everything()) == set(METRICS)


@pytest.fixture(scope="module")
def modules_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Where evaluate.load copies metric files to import them: one folder for the module, since the
    package it makes there stays imported."""
    return tmp_path_factory.mktemp("hf-modules")


@pytest.mark.parametrize("name", sorted(METRICS))
def test_each_metric_loads_with_evaluate_load_from_its_file(
    name: str, modules_cache: Path, monkeypatch: pytest.MonkeyPatch, no_network: None
) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(evaluate.config, "HF_MODULES_CACHE", modules_cache)
    path = Path(mtbert.metrics.__file__).parent / f"{name}.py"
    loaded = evaluate.load(str(path), keep_in_memory=True)
    assert type(loaded).__name__ == METRICS[name].__name__ and type(loaded) is not METRICS[name]  # its own copy
    preds, refs = _scores(5, ties=True) if name in ("pearson", "spearman") else _labels(5, 2)
    assert loaded.compute(predictions=preds, references=refs) == METRICS[name]().compute(
        predictions=preds, references=refs
    )


def test_in_memory_metric_creates_no_cache_folder(tmp_path: pytest.TempPathFactory) -> None:
    cache = tmp_path / "metrics-cache"
    Accuracy(cache_dir=str(cache)).compute(predictions=[1], references=[1])
    assert not cache.exists()


def test_compute_is_quiet(capfd: pytest.CaptureFixture[str]) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        _score_everything()
    out, err = capfd.readouterr()
    assert out == "" and err == ""
