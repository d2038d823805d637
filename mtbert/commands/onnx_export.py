"""`mtbert export CKPT --task T --format onnx`: one task's whole forward pass (encoder branch, pooler, head) as an
ONNX file ONNX Runtime runs, checked against the torch model before the folder is written; and the model
`mtbert predict --backend onnxruntime` runs.

The folder holds `model.onnx` (fp32), with `--quantize int8` also `model.int8.onnx` (ONNX Runtime's dynamic
quantisation), the tokenizer, and `onnx.json`: the task, its kind and labels, the graph's inputs and output, the
opset, and the largest |ONNX Runtime - torch| the export measured. It is staged beside its target and renamed
into place, as the Hugging Face export is.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

from mtbert import onnx_model, speed
from mtbert.commands.export import EXPORT_MARKER, _check_export_target, _write_folder_atomically
from mtbert.errors import MtbertError
from mtbert.exported import LoadedModel, load_model
from mtbert.files import WriteError, cannot_write, write_text_atomically

MODEL_FILE = "model.onnx"
INT8_FILE = "model.int8.onnx"
DESCRIPTION_FILE = "onnx.json"
QUANTIZE = ("int8",)


def _check(loaded: LoadedModel, task: str, quantize: str | None, source: str | os.PathLike[str]) -> None:
    if task not in loaded.model.config.tasks:
        raise MtbertError(f"task {task!r} is not in this checkpoint ({source}); its tasks: "
                          f"{', '.join(loaded.model.config.tasks)}")
    if quantize is not None and quantize not in QUANTIZE:
        raise MtbertError(f"--quantize: expected {' or '.join(QUANTIZE)}, got {quantize!r}")


def write_graphs(loaded: LoadedModel, task: str, folder: Path, quantize: str | None) -> dict:
    """model.onnx (and model.int8.onnx) for `task` into `folder`; the fp32 graph checked against torch.
    Returns what onnx.json records."""
    model = speed.set_switches(loaded.model, loaded.recipe.speed).eval()
    onnx_model.export_task(model, task, folder / MODEL_FILE)
    difference = onnx_model.max_abs_difference(model, task, onnx_model.OnnxTaskModel.from_files(
        {task: folder / MODEL_FILE}))
    if not difference <= onnx_model.FP32_TOLERANCE:
        raise MtbertError(f"task {task}: the ONNX graph's outputs differ from the torch model's by {difference:.2e}, "
                          f"more than {onnx_model.FP32_TOLERANCE:.0e}; nothing was written")
    if quantize == "int8":
        onnx_model.quantize_int8(folder / MODEL_FILE, folder / INT8_FILE)
    spec = loaded.tasks[task] if task in loaded.tasks else None
    return {"task": task, "kind": model.config.tasks[task].kind,
            "label_names": list(spec.label_names) if spec is not None and spec.label_names else None,
            "inputs": list(onnx_model.input_names(model.config.tasks[task].encoding)),
            "output": onnx_model.OUTPUT, "opset": onnx_model.OPSET, "dynamic_axes": {"0": "batch", "1": "seq"},
            "fp32_max_abs_difference": difference, "fp32_tolerance": onnx_model.FP32_TOLERANCE,
            "int8": ({"file": INT8_FILE, **onnx_model.QUANTIZATION} if quantize == "int8" else None),
            "max_length": loaded.recipe.model.max_length}


def export_onnx(ckpt: str | os.PathLike[str], task: str, to: str | os.PathLike[str],
                quantize: str | None = None) -> tuple[Path, dict]:
    """Write `task` of the model in `ckpt` as an ONNX folder at `to` (a new or empty folder, or a previous
    export); returns the folder and its description."""
    onnx_model.require_onnx()
    loaded = load_model(ckpt)
    _check(loaded, task, quantize, ckpt)
    target = Path(to)
    _check_export_target(target)
    described: dict = {}

    def write(folder: Path) -> None:
        described.update(write_graphs(loaded, task, folder, quantize))
        loaded.tokenizer.save_pretrained(str(folder))
        write_text_atomically(folder / DESCRIPTION_FILE, json.dumps(described, indent=2) + "\n")
        marker = {"source": str(Path(ckpt).resolve()), "task": task, "format": "onnx"}
        write_text_atomically(folder / EXPORT_MARKER, json.dumps(marker, indent=2) + "\n")

    try:
        _write_folder_atomically(target, write)
    except (OSError, WriteError) as error:
        raise MtbertError(f"{target}: cannot write the export ({cannot_write(target, error).reason})") from None
    return target, described


def onnxruntime_models(loaded: LoadedModel, task: str, quantizations=(None,)) -> dict:
    """`task` of a loaded model exported into a temporary folder (and quantised where a quantisation asks for
    it) and loaded into ONNX Runtime: {quantization (None: fp32, "int8"): model}, every graph from the one
    export. What `mtbert predict` and `mtbert evaluate --backend onnxruntime` run (the sessions hold the
    graphs; the files go)."""
    onnx_model.require_onnx()
    for quantize in quantizations:
        _check(loaded, task, quantize, "the checkpoint")
    with tempfile.TemporaryDirectory(prefix="mtbert-onnx-") as folder:
        write_graphs(loaded, task, Path(folder), "int8" if "int8" in quantizations else None)
        return {quantize: onnx_model.OnnxTaskModel.from_files(
                    {task: Path(folder) / (INT8_FILE if quantize == "int8" else MODEL_FILE)})
                for quantize in quantizations}
