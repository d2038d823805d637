"""Command-line options out of range or malformed, for each command: one line naming the option, exit
status 2, before the command opens a checkpoint, reads data or writes anything."""

from __future__ import annotations

import pytest

from badinput import fails_cleanly

RECIPE = """\
# mtbert validate ok.yaml
model: {init: random, tokenizer: tok}
tasks: {sst: {}}
"""

CASES = {
    "evaluate_batch_zero": (["evaluate", "{ckpt}", "--batch-size", "0"], ["--batch-size"]),
    "evaluate_batch_negative": (["evaluate", "{ckpt}", "--batch-size", "-8"], ["--batch-size"]),
    "evaluate_batch_fraction": (["evaluate", "{ckpt}", "--batch-size", "1.5"], ["--batch-size"]),
    "evaluate_tasks_empty": (["evaluate", "{ckpt}", "--tasks", ", ,"], ["--tasks"]),
    # evaluate by ONNX Runtime (issue 18)
    "evaluate_backend_unknown": (["evaluate", "{ckpt}", "--backend", "tvm"], ["--backend", "tvm"]),
    "evaluate_quantize_torch": (["evaluate", "{ckpt}", "--quantize", "int8"], ["--quantize", "--backend onnxruntime"]),
    "evaluate_quantize_int4": (["evaluate", "{ckpt}", "--backend", "onnxruntime", "--quantize", "int4"],
                               ["--quantize", "int4"]),
    "evaluate_compare_and_backend": (["evaluate", "{ckpt}", "--compare-backends", "--backend", "onnxruntime"],
                                     ["--compare-backends", "--backend"]),
    "evaluate_plots_and_compare": (["evaluate", "{ckpt}", "--compare-backends", "--plots"], ["--plots"]),
    "predict_batch_zero": (["predict", "--task", "sst", "--ckpt", "{ckpt}", "--batch-size", "0"], ["--batch-size"]),
    "predict_format": (["predict", "--task", "sst", "--ckpt", "{ckpt}", "--format", "xml"], ["--format"]),
    "report_batch_zero": (["report", "{ckpt}", "--batch-size", "0"], ["--batch-size"]),
    "report_tasks_empty": (["report", "{ckpt}", "--tasks", ","], ["--tasks"]),
    "submit_batch_negative": (["submit", "{ckpt}", "--batch-size", "-1"], ["--batch-size"]),
    "submit_tasks_empty": (["submit", "{ckpt}", "--tasks", ",,"], ["--tasks"]),
    "bench_steps_zero": (["bench", "{recipe}", "--steps", "0"], ["--steps"]),
    "bench_steps_negative": (["bench", "{recipe}", "--steps", "-3"], ["--steps"]),
    "bench_warmup_negative": (["bench", "{recipe}", "--warmup", "-1"], ["--warmup"]),
    "bench_predict_examples_zero": (["bench", "{recipe}", "--predict-examples", "0"], ["--predict-examples"]),
    "make_data_seed_negative": (["make-data", "quickstart", "--out", "{out}", "--seed", "-1"], ["--seed"]),
    "make_data_seed_too_large": (["make-data", "quickstart", "--out", "{out}", "--seed", str(2**32)], ["--seed"]),
    "validate_empty_data_dir": (["validate", "{recipe}", "--data-dir", ""], ["--data-dir"]),
    "train_empty_data_dir": (["train", "{recipe}", "--data-dir", " "], ["--data-dir"]),
    # several machines, SLURM, large tasks (issue 17)
    "slurm_nodes_zero": (["slurm", "{recipe}", "--nodes", "0", "--dry-run"], ["--nodes"]),
    "slurm_port_privileged": (["slurm", "{recipe}", "--port", "80", "--dry-run"], ["--port"]),
    "slurm_zero_stage_one": (["slurm", "{recipe}", "--zero", "1", "--dry-run"], ["--zero"]),
    "make_data_large_rows_zero": (["make-data", "large", "--out", "{out}", "--rows", "0"], ["--rows"]),
    "bench_startup_limit_zero": (["bench-startup", "{recipe}", "--limit", "0"], ["--limit"]),
}


@pytest.mark.parametrize("case", CASES)
def test_an_option_out_of_range_or_malformed(tmp_path, case):
    args, names = CASES[case]
    (tmp_path / "ok.yaml").write_text(RECIPE)
    places = {"ckpt": tmp_path / "ckpt", "recipe": tmp_path / "ok.yaml", "out": tmp_path / "out"}
    fails_cleanly([a.format(**places) for a in args], names=names, watch=[tmp_path])
    assert not (tmp_path / "out").exists() and not (tmp_path / "ckpt").exists()
