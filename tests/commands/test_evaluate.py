"""`mtbert evaluate --backend onnxruntime [--quantize int8]` and `--compare-backends`: a checkpoint's labelled
split scored through ONNX Runtime with the metrics of the torch path, side by side with torch (a siamese pair
task included), and a task the ONNX export refuses skipped in one line while the others are scored."""

import json

import pytest
from typer.testing import CliRunner

pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")

from mtbert.cli import app  # noqa: E402
from mtbert.commands.evaluation import evaluate_checkpoint  # noqa: E402

from helpers import random_checkpoint  # noqa: E402

# Each ONNX export takes 10-30 s on 2 cores: every test here is extended (python -m pytest -m extended).
pytestmark = [pytest.mark.slow, pytest.mark.extended]


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory, tokenizer_dir):
    """Random weights (so predictions vary) over sst (classes), sts cross-encoded (regression) and quora
    siamese (both sentences of each pair are inputs of its graph)."""
    tasks = {"sst": {}, "sts": {}, "quora": {"pair_encoding": "siamese"}}
    return random_checkpoint(tmp_path_factory.mktemp("ort-eval"), tokenizer_dir, tasks)


def evaluate(*args):
    """stdout (the table and the skipped lines) and everything printed (progress bars, warnings too)."""
    result = CliRunner().invoke(app, ["evaluate", *map(str, args)])
    assert result.exit_code == 0, result.output
    return result.stdout, result.output


@pytest.fixture(scope="module")
def compared(ckpt):
    output, printed = evaluate(ckpt, "--compare-backends", "--batch-size", "16")
    assert "WARNING" not in printed  # the quantiser's notes stay off the terminal
    return output, json.loads((ckpt / "eval-dev-backends.json").read_text())


def test_compare_backends_puts_torch_fp32_and_int8_side_by_side(ckpt, compared):
    output, figures = compared
    torch_scores = evaluate_checkpoint(ckpt, batch_size=16, progress=False)
    assert set(figures["tasks"]) == {"sst", "sts", "quora"} and figures["refused"] == {}
    for name in ("sst", "sts", "quora"):
        entry = figures["tasks"][name]
        assert entry["torch"] == pytest.approx(torch_scores[name], abs=1e-12)  # the very path of mtbert evaluate
        for side in ("onnxruntime", "onnxruntime-int8"):
            assert entry["main_change"][side] == pytest.approx(entry[side]["main"] - entry["torch"]["main"])
    sst, sts = figures["tasks"]["sst"], figures["tasks"]["sts"]
    assert sst["main_metric"] == "accuracy" and sts["main_metric"] == "pearson"
    # fp32: the same labels as torch, so the same metrics; scores within the export's tolerance
    for name in ("sst", "quora"):  # quora: a siamese pair, the two sentences padded to one length for its graph
        assert figures["tasks"][name]["agreement"]["onnxruntime"]["labels_equal"] == 1.0
        assert figures["tasks"][name]["onnxruntime"] == pytest.approx(figures["tasks"][name]["torch"], abs=1e-12)
    assert sts["agreement"]["onnxruntime"]["max_abs_score_diff"] <= 1e-4
    assert sts["onnxruntime"]["main"] == pytest.approx(sts["torch"]["main"], abs=1e-4)
    # int8: accuracy can move by at most the share of labels that changed
    agreed = sst["agreement"]["onnxruntime-int8"]
    assert agreed["examples"] == 64 and 0 <= agreed["labels_equal"] <= 1
    assert abs(sst["main_change"]["onnxruntime-int8"]) <= 1 - agreed["labels_equal"] + 1e-9
    assert sts["agreement"]["onnxruntime-int8"]["max_abs_score_diff"] > 0  # quantised: not the same numbers
    assert figures["overall"]["torch"] == pytest.approx(torch_scores["overall"])
    header, *rows = output.splitlines()
    assert header.split()[:5] == ["task", "metric", "torch", "onnxruntime", "onnxruntime-int8"]
    assert any(r.split()[:3] == ["sst", "accuracy", f"{sst['torch']['main']:.4f}"] for r in rows)
    assert any("labels" in r for r in rows) and any("max |score diff|" in r for r in rows)


def test_a_task_onnx_export_refuses_is_one_line_and_the_others_are_scored(ckpt, monkeypatch, tmp_path):
    """Should the export refuse a task (a graph torch.export specialised, outputs beyond the tolerance), the
    other tasks are scored and the table says the overall is theirs."""
    from mtbert import onnx_model
    from mtbert.errors import MtbertError

    export = onnx_model.export_task

    def refusing(model, task, path, **kwargs):
        if task == "quora":
            raise MtbertError("task quora: not exportable as it is (refused by this test)")
        return export(model, task, path, **kwargs)

    monkeypatch.setattr(onnx_model, "export_task", refusing)
    output, _ = evaluate(ckpt, "--backend", "onnxruntime", "--tasks", "sst,quora", "--batch-size", "16",
                         "--output", tmp_path / "scores.json")
    scores = json.loads((tmp_path / "scores.json").read_text())
    assert list(scores["refused"]) == ["quora"] and "sst" in scores and "quora" not in scores
    skipped = [line for line in output.splitlines() if line.startswith("skipped:")]
    assert skipped == ["skipped: task quora: not exportable as it is (refused by this test)"]
    assert "overall: the mean over the 1 task(s) scored, not the 2 of the model" in output


def test_one_backend_scores_like_its_column_in_a_file_of_its_own(ckpt, compared):
    _, figures = compared
    output, _ = evaluate(ckpt, "--backend", "onnxruntime", "--quantize", "int8", "--tasks", "sst", "--batch-size", "16")
    assert "skipped" not in output and output.splitlines()[0].split()[:3] == ["task", "accuracy", "f1"]
    scores = json.loads((ckpt / "eval-dev-onnxruntime-int8.json").read_text())
    assert scores["backend"] == "onnxruntime-int8" and scores["refused"] == {}
    # the same export and quantisation as --compare-backends' column
    assert scores["sst"] == pytest.approx(figures["tasks"]["sst"]["onnxruntime-int8"], abs=1e-9)
    assert not (ckpt / "eval-dev.json").exists()  # the torch file is not replaced by another backend's
