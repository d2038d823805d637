"""One task of a model as an ONNX graph, and ONNX Runtime running it: what `mtbert export --format onnx`
writes, `mtbert predict --backend onnxruntime` runs and `mtbert bench --compare onnxruntime` times.

The graph is the task's whole forward pass, `MultiTaskModel(task, batch)`: the encoder (its branch of the
sharing plan), the task's pooler and head. Its inputs are the batch's int64 (B, T) tensors by their batch
names (input_ids, attention_mask, token_type_ids; a siamese task also the `_b` three, padded to the same T),
B and T dynamic; its one output, `outputs`, is the task's logits (B, C) or scores (B,), which
`objectives.supervised.predictions` turns into labels and probabilities as for the torch model.

torch.onnx.export with its default exporter (torch.export, then onnxscript), opset `OPSET`, weights inside
the one file. ONNX Runtime's CPU graph optimisations run when a session starts. int8 is ONNX Runtime's
dynamic quantisation: int8 weights, activations quantised per batch at run time.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import warnings
from collections.abc import Iterable

import numpy as np
import torch
from torch import nn

from mtbert.errors import MtbertError, first_line

OPSET = 20
"The ONNX opset the graphs are written in (torch 2.13's default, ONNX Runtime >= 1.17 runs it)."
OUTPUT = "outputs"
SINGLE_INPUTS = ("input_ids", "attention_mask", "token_type_ids")
PAIR_INPUTS = tuple(f"{name}_b" for name in SINGLE_INPUTS)
FP32_TOLERANCE = 1e-4
"Largest |ONNX Runtime - torch| accepted on an export's outputs in fp32 (onnx.json records the measured one)."
INSTALL_HINT = "pip install 'mtbert[onnx]' (onnx, onnxruntime, onnxscript)"


def require_onnx() -> None:
    """An MtbertError saying how to install the optional packages, unless they are installed."""
    missing = []
    for name in ("onnx", "onnxruntime", "onnxscript"):
        try:
            __import__(name)
        except ImportError:
            missing.append(name)
    if missing:
        raise MtbertError(f"ONNX export and ONNX Runtime need {', '.join(missing)}: {INSTALL_HINT}")


def input_names(encoding: str) -> tuple[str, ...]:
    """The graph's inputs for a task encoded `encoding` (single, cross or siamese)."""
    return SINGLE_INPUTS + (PAIR_INPUTS if encoding == "siamese" else ())


class TaskGraph(nn.Module):
    """`model(task, batch)` as a function of the batch's tensors in `input_names` order: what is exported."""

    def __init__(self, model: nn.Module, task: str):
        super().__init__()
        self.model, self.task = model, task
        self.names = input_names(model.config.tasks[task].encoding)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, token_type_ids: torch.Tensor,
                input_ids_b: torch.Tensor | None = None, attention_mask_b: torch.Tensor | None = None,
                token_type_ids_b: torch.Tensor | None = None) -> torch.Tensor:
        tensors = (input_ids, attention_mask, token_type_ids, input_ids_b, attention_mask_b, token_type_ids_b)
        return self.model(self.task, dict(zip(self.names, tensors)))  # (B, C) or (B,); names: 3 or 6


def example_batch(names: Iterable[str], vocab_size: int, lengths: Iterable[int], seed: int = 0) -> dict:
    """int64 tensors for `names`: random ids, one row per length, padded to the longest; segment 1 after
    the middle of each row. Every sequence starts with id 1 (a stand-in for [CLS])."""
    generator = torch.Generator().manual_seed(seed)
    lengths = list(lengths)
    seq_len = max(lengths)
    mask = (torch.arange(seq_len)[None, :] < torch.tensor(lengths)[:, None]).long()  # (B, T)
    ids = torch.randint(2, vocab_size, mask.shape, generator=generator) * mask  # (B, T), 0 at padding
    ids[:, 0] = 1
    types = ((torch.arange(seq_len)[None, :] >= torch.tensor(lengths)[:, None] // 2) * mask).long()  # (B, T)
    batch = {}
    for name in names:
        tensor = {"input_ids": ids, "attention_mask": mask, "token_type_ids": types}[name.removesuffix("_b")]
        # The second sentence: its own tensors, rows in reverse (torch.export specialises aliased inputs).
        batch[name] = tensor.flip(0).clone() if name.endswith("_b") else tensor
    return batch


def export_task(model: nn.Module, task: str, path: str | os.PathLike[str], *, legacy: bool = False) -> None:
    """Write `task`'s forward pass of `model` (switches as set, eval mode) to `path` as one ONNX file.

    legacy: torch's TorchScript-based exporter instead (deprecated; its graph of transformers' eager attention
    is the one ONNX Runtime's transformer optimizer fuses into its Attention operator)."""
    require_onnx()
    graph = TaskGraph(model, task).eval()  # eval on the wrapper: the exporter restores the wrapper's mode
    names = graph.names
    example = example_batch(names, model.config.encoder.vocab_size, [7, 5, 3])
    args = tuple(example[name] for name in names)
    with _quiet(), torch.no_grad():
        if legacy:
            torch.onnx.export(graph, args, str(path), dynamo=False, opset_version=OPSET, input_names=list(names),
                              output_names=[OUTPUT], dynamic_axes={n: {0: "batch", 1: "seq"} for n in names})
        else:
            from torch.export import Dim

            batch, seq = Dim("batch"), Dim("seq")
            torch.onnx.export(graph, args, str(path), dynamo=True, opset_version=OPSET, external_data=False,
                              input_names=list(names), output_names=[OUTPUT],
                              dynamic_shapes={name: {0: batch, 1: seq} for name in names})
    _require_dynamic(path, task)


def _require_dynamic(path: str | os.PathLike[str], task: str) -> None:
    """An MtbertError unless every input of the graph at `path` has a free batch size and length."""
    import onnx

    graph = onnx.load(str(path), load_external_data=False).graph
    fixed = [f"{tensor.name} {[d.dim_param or d.dim_value for d in tensor.type.tensor_type.shape.dim]}"
             for tensor in graph.input if not all(d.dim_param for d in tensor.type.tensor_type.shape.dim)]
    if fixed:
        raise MtbertError(f"task {task}: the exported graph fixes a dimension of its inputs ({'; '.join(fixed)}): "
                          f"torch.export specialised the model to the example batch; not exportable as it is")


@contextlib.contextmanager
def _quiet():
    """The exporters' progress lines and warnings (deprecations, onnxscript's notes, the quantiser's notes on
    the root logger about tensors it leaves in fp32) stay off the terminal."""
    loggers = [logging.getLogger(name) for name in ("torch.onnx", "torch.export", "onnxscript", "torch._dynamo")]
    loggers.append(logging.getLogger())
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            yield
    finally:
        for logger, level in zip(loggers, levels):
            logger.setLevel(level)


def fuse_attention(path: str | os.PathLike[str], out: str | os.PathLike[str], num_heads: int, hidden_size: int) -> dict:
    """ONNX Runtime's transformer optimizer for BERT (fused Attention, EmbedLayerNormalization, SkipLayerNorm,
    BiasGelu where it recognises them); returns its count of each fused operator."""
    from onnxruntime.transformers import optimizer

    with _quiet():
        optimized = optimizer.optimize_model(str(path), model_type="bert", num_heads=num_heads,
                                             hidden_size=hidden_size)
        optimized.save_model_to_file(str(out))
    return {op: count for op, count in optimized.get_fused_operator_statistics().items() if count}


QUANTIZATION = {"weight_type": "QInt8", "per_channel": True, "reduce_range": False,
                "fp32": "down-projections"}
"""quantize_dynamic's settings for --quantize int8 (docs/performance.md has the measurement), and which matrix
products stay fp32: those that project down (more input features than outputs), i.e. each layer's FFN output
projection, whose input (the activation's output) quantises worst per tensor, and the task heads."""


def quantize_int8(path: str | os.PathLike[str], out: str | os.PathLike[str]) -> None:
    """ONNX Runtime dynamic quantisation: the weight matrix products (QUANTIZATION) to int8 weights with
    activations quantised per batch at run time, except the down-projections, which stay fp32. Products of two
    activations (attention's scores and weighted values) stay fp32 (MatMulConstBOnly, quantize_dynamic's
    default, stated here so that it stays so)."""
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    with _quiet():
        quantize_dynamic(str(path), str(out), weight_type=getattr(QuantType, QUANTIZATION["weight_type"]),
                         per_channel=QUANTIZATION["per_channel"], reduce_range=QUANTIZATION["reduce_range"],
                         nodes_to_exclude=down_projections(onnx.load(str(path), load_external_data=False)),
                         extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT, "MatMulConstBOnly": True})


def down_projections(model) -> list[str]:
    """Names of the graph's MatMul and Gemm nodes whose weight (an initializer) has more input features than
    outputs; a Gemm also under the name the quantiser gives it (it rewrites Gemm as `<name>_MatMul` + Add)."""
    weights = {tensor.name: tuple(tensor.dims) for tensor in model.graph.initializer}
    names = []
    for node in model.graph.node:
        shape = weights.get(node.input[1]) if node.op_type in ("MatMul", "Gemm") else None
        if shape is None or len(shape) != 2:
            continue
        transposed = node.op_type == "Gemm" and any(a.name == "transB" and a.i for a in node.attribute)
        features_in, features_out = shape[::-1] if transposed else shape
        if features_in > features_out:
            names += [node.name, f"{node.name}_MatMul"] if node.op_type == "Gemm" else [node.name]
    return names


def session(path: str | os.PathLike[str], threads: int | None = None):
    """An ONNX Runtime CPU session with every graph optimisation, on `threads` (default torch's) threads."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.intra_op_num_threads = threads or torch.get_num_threads()
    options.inter_op_num_threads = 1
    options.log_severity_level = 3  # errors only
    try:
        return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    except Exception as error:  # noqa: BLE001 - ONNX Runtime raises its own types for a bad file
        raise MtbertError(f"{path}: ONNX Runtime cannot load it ({first_line(error)})") from None


class OnnxTaskModel:
    """ONNX Runtime sessions, one per task, called as MultiTaskModel is: `model(task, batch)` -> outputs (torch),
    so `inference.run_inference` runs them unchanged. Inputs go in as int64 arrays; a siamese pair's two
    sentences are padded to one length first, as the exported graph expects."""

    training = False

    def __init__(self, sessions: dict):
        self.sessions = sessions
        self.inputs = {task: [i.name for i in s.get_inputs()] for task, s in sessions.items()}

    @classmethod
    def from_files(cls, paths: dict[str, str | os.PathLike[str]], threads: int | None = None) -> OnnxTaskModel:
        return cls({task: session(path, threads) for task, path in paths.items()})

    def __call__(self, task: str, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        names = self.inputs[task]
        arrays = {name: batch[name].cpu().numpy().astype(np.int64, copy=False) for name in names}
        if PAIR_INPUTS[0] in arrays:
            arrays = _same_length(arrays)
        (out,) = self.sessions[task].run([OUTPUT], arrays)
        return torch.from_numpy(out)

    def eval(self) -> OnnxTaskModel:
        return self

    def train(self, mode: bool = True) -> OnnxTaskModel:
        return self

    def to(self, device) -> OnnxTaskModel:
        return self


def _same_length(arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Both sentences of a pair batch padded (with zeros: pad id, mask and segment) to the longer length."""
    length = max(array.shape[1] for array in arrays.values())
    return {name: np.pad(array, ((0, 0), (0, length - array.shape[1]))) for name, array in arrays.items()}


def max_abs_difference(model: nn.Module, task: str, onnx_model: OnnxTaskModel,
                       shapes: Iterable[Iterable[int]] = ((9, 4, 2), (17, 16, 5, 1, 12))) -> float:
    """Largest |ONNX Runtime - torch| over batches of other shapes than the export's (padding included)."""
    names = input_names(model.config.tasks[task].encoding)
    worst = 0.0
    with torch.no_grad():
        for seed, lengths in enumerate(shapes):
            batch = example_batch(names, model.config.encoder.vocab_size, lengths, seed=seed + 1)
            expected = model.eval()(task, batch)
            worst = max(worst, float((onnx_model(task, batch) - expected).abs().max()))
    return worst
