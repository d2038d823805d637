"""`mtbert export --format onnx` and `mtbert predict --backend onnxruntime`: the ONNX graph of a task's whole
forward pass equals the torch model within the stated tolerance, at other shapes than the export's."""

import json
import sys

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")

import onnx  # noqa: E402

from mtbert import onnx_model  # noqa: E402
from mtbert.cli import app  # noqa: E402
from mtbert.commands.onnx_export import DESCRIPTION_FILE, INT8_FILE, MODEL_FILE, export_onnx  # noqa: E402
from mtbert.errors import MtbertError  # noqa: E402
from mtbert.exported import load_model  # noqa: E402

from helpers import random_checkpoint  # noqa: E402

SENTENCES = "the film was very good\nawful plot\na dull story , not moving at all , sadly\nwhat\n"


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory, tokenizer_dir):
    tasks = {"sst": {}, "sts": {"pair_encoding": "siamese"}}
    return random_checkpoint(tmp_path_factory.mktemp("onnx"), tokenizer_dir, tasks)


@pytest.fixture(scope="module")
def sst_export(ckpt, tmp_path_factory):
    folder = tmp_path_factory.mktemp("out") / "sst-onnx"
    result = CliRunner().invoke(app, ["export", str(ckpt), "--task", "sst", "--to", str(folder), "--format", "onnx",
                                      "--quantize", "int8"])
    assert result.exit_code == 0, result.output
    assert "opset 20" in result.output
    return folder


def test_export_writes_a_dynamic_graph_that_equals_torch(ckpt, sst_export):
    described = json.loads((sst_export / DESCRIPTION_FILE).read_text())
    assert described["task"] == "sst" and described["opset"] == onnx_model.OPSET == 20
    assert described["inputs"] == ["input_ids", "attention_mask", "token_type_ids"]
    assert described["fp32_max_abs_difference"] <= onnx_model.FP32_TOLERANCE
    graph = onnx.load(str(sst_export / MODEL_FILE))
    assert [(o.domain or "ai.onnx", o.version) for o in graph.opset_import if not o.domain] == [("ai.onnx", 20)]
    for tensor in graph.graph.input:  # dynamic batch and length
        assert [d.dim_param for d in tensor.type.tensor_type.shape.dim] == ["batch", "seq"]
    assert (sst_export / "tokenizer_config.json").is_file()
    # Independently of the check the export ran: other shapes, other seeds, padding.
    loaded = load_model(ckpt)
    runtime = onnx_model.OnnxTaskModel.from_files({"sst": sst_export / MODEL_FILE})
    assert onnx_model.max_abs_difference(loaded.model, "sst", runtime, shapes=((3, 11, 6), (1,))) <= 1e-4


def test_int8_graph_is_quantized_and_close(ckpt, sst_export):
    graph = onnx.load(str(sst_export / INT8_FILE))
    ops = {node.op_type for node in graph.graph.node}
    assert ops & {"MatMulInteger", "DynamicQuantizeMatMul"} and "DynamicQuantizeLinear" in ops
    assert (sst_export / INT8_FILE).stat().st_size < (sst_export / MODEL_FILE).stat().st_size
    loaded = load_model(ckpt)
    batch = onnx_model.example_batch(onnx_model.SINGLE_INPUTS, loaded.model.config.encoder.vocab_size, [9, 4, 2])
    fp32 = onnx_model.OnnxTaskModel.from_files({"sst": sst_export / MODEL_FILE})("sst", batch)
    int8 = onnx_model.OnnxTaskModel.from_files({"sst": sst_export / INT8_FILE})("sst", batch)
    assert int8.shape == fp32.shape and torch.isfinite(int8).all() and not torch.equal(int8, fp32)


@pytest.mark.slow
@pytest.mark.extended
def test_a_siamese_pair_exports_with_a_free_batch_size_and_equals_torch(ckpt, tmp_path):
    """Both sentences of a pair are inputs, batch and length free; the second sentence may be longer or shorter
    than the first (ONNX Runtime's side pads both to one length, as the torch model does)."""
    folder, described = export_onnx(ckpt, "sts", tmp_path / "sts")
    assert described["inputs"] == [*onnx_model.SINGLE_INPUTS, *onnx_model.PAIR_INPUTS]
    assert described["fp32_max_abs_difference"] <= onnx_model.FP32_TOLERANCE
    for tensor in onnx.load(str(folder / MODEL_FILE)).graph.input:
        assert [d.dim_param for d in tensor.type.tensor_type.shape.dim] == ["batch", "seq"]
    model = load_model(ckpt).model.eval()
    runtime = onnx_model.OnnxTaskModel.from_files({"sts": folder / MODEL_FILE})
    vocab = model.config.encoder.vocab_size
    for first, second in (((9, 4, 2, 5), (3, 6, 1, 2)), ((2,), (11,))):
        batch = onnx_model.example_batch(onnx_model.SINGLE_INPUTS, vocab, first, seed=3)
        batch |= onnx_model.example_batch(onnx_model.PAIR_INPUTS, vocab, second, seed=4)
        with torch.no_grad():
            expected = model("sts", batch)  # (B,)
        assert expected.shape == (len(first),)
        assert (runtime("sts", batch) - expected).abs().max() <= 1e-4


def test_a_graph_that_fixes_a_dimension_is_refused(tmp_path):
    """Should an exporter specialise the graph to the example batch, the export says so in one line."""
    from onnx import TensorProto, helper

    inputs = [helper.make_tensor_value_info("input_ids", TensorProto.INT64, [3, "seq"]),
              helper.make_tensor_value_info("attention_mask", TensorProto.INT64, ["batch", "seq"])]
    output = helper.make_tensor_value_info("outputs", TensorProto.INT64, [3, "seq"])
    graph = helper.make_graph([helper.make_node("Identity", ["input_ids"], ["outputs"])], "g", inputs, [output])
    onnx.save(helper.make_model(graph), str(tmp_path / "fixed.onnx"))
    with pytest.raises(MtbertError, match=r"^task sts: the exported graph fixes a dimension of its inputs "
                                          r"\(input_ids \[3, 'seq'\]\): torch.export specialised"):
        onnx_model._require_dynamic(tmp_path / "fixed.onnx", "sts")
    graph.input[0].type.tensor_type.shape.dim[0].dim_param = "batch"
    onnx.save(helper.make_model(graph), str(tmp_path / "free.onnx"))
    onnx_model._require_dynamic(tmp_path / "free.onnx", "sts")  # no error


def predict(ckpt, *extra):
    result = CliRunner().invoke(app, ["predict", "--ckpt", str(ckpt), "--task", "sst", "--format", "jsonl",
                                      *extra], input=SENTENCES)
    assert result.exit_code == 0, result.output
    return [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]


@pytest.mark.slow
def test_predict_with_onnxruntime_equals_torch(ckpt):
    torch_rows, onnx_rows, int8_rows = (predict(ckpt, *extra) for extra in
                                        ((), ("--backend", "onnxruntime"),
                                         ("--backend", "onnxruntime", "--quantize", "int8")))
    assert len(torch_rows) == len(onnx_rows) == len(int8_rows) == 4
    assert [r["label"] for r in onnx_rows] == [r["label"] for r in torch_rows]
    assert len({tuple(r["probabilities"].values()) for r in torch_rows}) > 1  # not one constant output
    for ours, theirs in zip(onnx_rows, torch_rows):
        difference = max(abs(ours["probabilities"][k] - p) for k, p in theirs["probabilities"].items())
        assert difference <= 2e-6  # rounded to 6 digits in the output
    assert all(np.isclose(sum(r["probabilities"].values()), 1, atol=1e-5) for r in int8_rows)


@pytest.mark.slow
@pytest.mark.extended
def test_predict_a_siamese_pair_with_onnxruntime_equals_torch(ckpt):
    """Pairs of unequal lengths through the siamese sts task's graph: torch's scores."""
    pairs = "the film was very good\tawful plot\nwhat\ta dull story , not moving at all , sadly\n"
    rows = []
    for extra in ((), ("--backend", "onnxruntime")):
        result = CliRunner().invoke(app, ["predict", "--ckpt", str(ckpt), "--task", "sts", "--format", "jsonl",
                                          *extra], input=pairs)
        assert result.exit_code == 0, result.output
        rows.append([json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")])
    torch_rows, onnx_rows = rows
    assert len(torch_rows) == len(onnx_rows) == 2 and torch_rows[0]["score"] != torch_rows[1]["score"]
    for ours, theirs in zip(onnx_rows, torch_rows):
        assert ours["input"] == theirs["input"] and abs(ours["score"] - theirs["score"]) <= 2e-5


def test_bad_options_are_one_line(ckpt, tmp_path):
    runner = CliRunner()
    cases = [(["predict", "--ckpt", str(ckpt), "--task", "sst", "--quantize", "int8"], "--backend onnxruntime"),
             (["predict", "--ckpt", str(ckpt), "--task", "sst", "--backend", "tvm"], "--backend"),
             (["export", str(ckpt), "--task", "sst", "--to", str(tmp_path / "x"), "--format", "tflite"], "--format"),
             (["export", str(ckpt), "--task", "sst", "--to", str(tmp_path / "x"), "--quantize", "int8"], "--quantize"),
             (["export", str(ckpt), "--task", "sst", "--to", str(tmp_path / "x"), "--format", "onnx",
               "--quantize", "int4"], "--quantize"),
             (["export", str(ckpt), "--task", "nope", "--to", str(tmp_path / "x"), "--format", "onnx"], "'nope'")]
    for args, message in cases:
        result = runner.invoke(app, args, input=SENTENCES)
        assert result.exit_code == 2 and message in result.output and "Traceback" not in result.output, args
    assert not (tmp_path / "x").exists()


def test_missing_onnxruntime_says_how_to_install(ckpt, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # import onnxruntime now raises ImportError
    with pytest.raises(MtbertError, match=r"need onnxruntime: pip install 'mtbert\[onnx\]'"):
        export_onnx(ckpt, "sst", tmp_path / "x")
    result = CliRunner().invoke(app, ["predict", "--ckpt", str(ckpt), "--task", "sst", "--backend", "onnxruntime"],
                                input=SENTENCES)
    assert result.exit_code == 2 and "mtbert[onnx]" in result.output


def test_int8_keeps_the_down_projections_and_attention_products_fp32(ckpt, sst_export):
    """quantize_int8 quantises the weight products except the down-projections (each layer's FFN output and the
    head); the products of two activations (attention) stay fp32 too."""
    fp32, int8 = onnx.load(str(sst_export / MODEL_FILE)), onnx.load(str(sst_export / INT8_FILE))
    weights = {tensor.name for tensor in fp32.graph.initializer}
    products = [node for node in fp32.graph.node if node.op_type in ("MatMul", "Gemm")]
    attention = [node.name for node in products if node.input[1] not in weights]
    excluded = set(onnx_model.down_projections(fp32))
    down = [node.name for node in products if node.name in excluded]
    layers = load_model(ckpt).model.config.encoder.num_hidden_layers
    assert len(down) == layers + 1 and attention  # one FFN output per layer, and the classifier
    left_fp32 = {node.name.removesuffix("_MatMul") for node in int8.graph.node if node.op_type in ("MatMul", "Gemm")}
    assert set(attention) | set(down) <= left_fp32
    quantized = [node for node in int8.graph.node if node.op_type in ("MatMulInteger", "DynamicQuantizeMatMul")]
    assert len(quantized) == len(products) - len(attention) - len(down) > 0
