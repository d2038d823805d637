"""`mtbert evaluate`: score an exported model on a split of its tasks, as a table and a JSON file; by torch
(default) or by ONNX Runtime (`--backend onnxruntime [--quantize int8]`: each task exported to ONNX on the fly,
as `mtbert predict --backend onnxruntime` does), or by all three side by side (`--compare-backends`).

A task the ONNX export refuses (a graph it cannot check or make dynamic) is one `skipped:` line, and the other tasks are
scored; the overall score is then the mean over the tasks scored, and the table says so."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from mtbert import exported
from mtbert.commands import evaluation
from mtbert.commands.evaluation import Side, side_name
from mtbert.errors import MtbertError
from mtbert.files import check_output_file, json_text, write_text_atomically, wrote

COMPARISON_NAME = "backends"
"eval-<split>-backends.json: the default file of --compare-backends."


def default_output(ckpt: Path, split: str, side: Side, compare: bool) -> Path:
    """CKPT/eval-<split>.json for torch (as before backends existed), else eval-<split>-<side or backends>.json."""
    if compare:
        return Path(ckpt) / f"eval-{split}-{COMPARISON_NAME}.json"
    suffix = "" if side == ("torch", None) else f"-{side_name(side)}"
    return Path(ckpt) / f"eval-{split}{suffix}.json"


def _check_options(side: Side, plots: bool, compare: bool) -> None:
    if compare and side != ("torch", None):
        raise MtbertError("--compare-backends runs torch, onnxruntime and onnxruntime int8 itself: "
                          "leave out --backend and --quantize")
    if plots and (compare or side != ("torch", None)):
        raise MtbertError("--plots is for the torch backend: leave out --backend, --quantize and "
                          "--compare-backends")
    evaluation.check_side(side)


def _skipped(refused: dict[str, str], scored: int, echo: Callable[[str], None]) -> None:
    for reason in refused.values():
        echo(f"skipped: {reason}")
    if refused:
        echo(f"overall: the mean over the {scored} task(s) scored, not the {scored + len(refused)} of the model")


def _score_side(ckpt: Path, split: str, tasks: list[str] | None, data_dir: str | None, batch_size: int,
                side: Side) -> dict:
    """{task: scores, overall} by one side; an ONNX Runtime side adds "backend" and "refused" {task: why}."""
    refused: dict[str, str] = {}  # torch refuses nothing: only an ONNX export can
    predicted = evaluation.predict_tasks(exported.load_model(ckpt, data_dir=data_dir), split, tasks, batch_size,
                                         side=side, refused=refused)
    if not predicted:
        raise MtbertError(f"{ckpt}: no task could run on {side_name(side)}: {'; '.join(refused.values())}")
    results = evaluation.score_predictions(predicted)
    return results if side == ("torch", None) else {**results, "backend": side_name(side), "refused": refused}


def run(ckpt: Path, split: str, tasks: list[str] | None, data_dir: str | None, output: Path | None,
        batch_size: int, plots: bool, echo: Callable[[str], None], side: Side = ("torch", None),
        compare: bool = False) -> None:
    """Score, print the table, write the scores to `output` (default: default_output); with `plots`, also the
    report's figures and report.md (mtbert report); with `compare`, torch, ONNX Runtime fp32 and int8 side by
    side, with the label agreement of each ONNX Runtime side with torch."""
    _check_options(side, plots, compare)
    if output is not None:
        check_output_file(output, "--output")  # before the work, not after it
    if compare:
        results = evaluation.compare_sides(exported.load_model(ckpt, data_dir=data_dir), split, tasks, batch_size)
        if not results["tasks"]:
            raise MtbertError(f"{ckpt}: no task could run on every backend: {'; '.join(results['refused'].values())}")
        echo(evaluation.format_comparison(results))
        _skipped(results["refused"], len(results["tasks"]), echo)
    elif plots:
        from mtbert.commands.report import write_report  # matplotlib: only for the figures

        report = write_report(ckpt, split, tasks, data_dir, batch_size)
        results = report.results
        echo(evaluation.format_table(results))
        echo(f"wrote {len(report.files)} report files to {report.folder}"
             + (f" (replacing {len(report.replaced)} of an earlier report)" if report.replaced else ""))
    else:
        results = _score_side(ckpt, split, tasks, data_dir, batch_size, side)
        echo(evaluation.format_table(results))
        _skipped(results.get("refused", {}), len(evaluation.task_scores(results)), echo)
    target = output or default_output(ckpt, split, side, compare)
    existed = target.exists()
    write_text_atomically(target, json_text(results, indent=2) + "\n")
    echo(f"{wrote(existed)} {target}")
