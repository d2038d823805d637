"""Scoring an exported model on a split of its tasks: what `mtbert evaluate`, `report` and the tests use."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import torch

from mtbert import exported, speed
from mtbert.data.loading import load_split, require_labels
from mtbert.errors import MtbertError
from mtbert.inference import TaskPredictions, agreement, eval_loader, run_inference, score
from mtbert.metrics import overall_score
from mtbert.tasks import Task


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def select_tasks(all_tasks: dict[str, Task], names: list[str] | None) -> dict[str, Task]:
    if not names:
        return all_tasks
    unknown = [n for n in names if n not in all_tasks]
    if unknown:
        raise MtbertError(f"task(s) {', '.join(unknown)} not in this checkpoint; it has {', '.join(all_tasks)}")
    return {n: all_tasks[n] for n in names}


BACKENDS = ("torch", "onnxruntime")
"What runs a model's predictions: torch, or the task exported to ONNX and run by ONNX Runtime on the CPU."
Side = tuple[str, str | None]
"A backend and its quantisation (None, or int8 with onnxruntime): one column of `evaluate --compare-backends`."
COMPARED: tuple[Side, ...] = (("torch", None), ("onnxruntime", None), ("onnxruntime", "int8"))


def side_name(side: Side) -> str:
    """torch, onnxruntime or onnxruntime-int8: the side's name in tables, JSON keys and file names."""
    backend, quantize = side
    return backend if quantize is None else f"{backend}-{quantize}"


def check_side(side: Side) -> None:
    """An MtbertError (naming the option) for a backend or quantisation mtbert does not have."""
    backend, quantize = side
    if backend not in BACKENDS:
        raise MtbertError(f"--backend: expected {' or '.join(BACKENDS)}, got {backend!r}")
    if backend == "torch" and quantize is not None:
        raise MtbertError("--quantize is for --backend onnxruntime")
    if backend == "onnxruntime":
        from mtbert.commands.onnx_export import QUANTIZE
        from mtbert.onnx_model import require_onnx

        if quantize is not None and quantize not in QUANTIZE:
            raise MtbertError(f"--quantize: expected {' or '.join(QUANTIZE)}, got {quantize!r}")
        require_onnx()


def task_models(loaded: exported.LoadedModel, task: str, sides: Iterable[Side]) -> dict:
    """{side: what runs `task`'s predictions}: the torch model with the recipe's speed switches, and the ONNX
    Runtime sides from one export of the task (mtbert/commands/onnx_export.py); an export's refusal (a graph
    it cannot make dynamic or that differs from torch) is an MtbertError naming the task."""
    sides = list(sides)
    for side in sides:
        check_side(side)
    models = {}
    quantizations = tuple(quantize for backend, quantize in sides if backend == "onnxruntime")
    if quantizations:
        from mtbert.commands.onnx_export import onnxruntime_models

        loaded.model.to("cpu")  # exported from the CPU, whatever device an earlier task ran on
        models.update({("onnxruntime", q): m for q, m in onnxruntime_models(loaded, task, quantizations).items()})
    if ("torch", None) in sides:
        models[("torch", None)] = speed.set_switches(loaded.model, loaded.recipe.speed)
    return models


def model_device(model) -> torch.device | str:
    """Where a side's model runs: the torch model on the default device, ONNX Runtime's on the CPU."""
    return default_device() if isinstance(model, torch.nn.Module) else "cpu"


def evaluate_checkpoint(ckpt: str | Path, split: str = "dev", task_names: list[str] | None = None,
                        data_dir: str | None = None, batch_size: int = 128, progress: bool = True) -> dict:
    """{task: {metric: value, "main": score}, "overall": mean of the main scores}, predicted by torch."""
    loaded = exported.load_model(ckpt, data_dir=data_dir)
    return score_predictions(predict_tasks(loaded, split, task_names, batch_size, progress))


@dataclass
class SplitPredictions:
    """One task's predictions on a labelled split, with the example ids in the split's order."""

    task: Task
    ids: list[str]
    result: TaskPredictions


def predict_sides(loaded: exported.LoadedModel, split: str, task_names: list[str] | None, batch_size: int,
                  progress: bool, sides: Iterable[Side],
                  refused: dict[str, str] | None = None) -> dict[str, dict[Side, SplitPredictions]]:
    """{task: {side: predictions}}: each of the model's tasks (or `task_names`) read and tokenised once, then
    run by every side. A task some side cannot run goes into `refused` ({task: reason}) when it is given, and
    fails the whole otherwise."""
    sides = list(sides)
    for side in sides:
        check_side(side)  # a bad option fails before any work, never as a per-task refusal
    out = {}
    for name, task in select_tasks(loaded.tasks, task_names).items():
        data, tokenized = load_split(task, split, loaded.recipe.data_dir, loaded.tokenizer,
                                     loaded.recipe.model.max_length, progress=progress)
        require_labels(data, task, split)
        try:
            models = task_models(loaded, name, sides)
        except MtbertError as error:
            if refused is None:
                raise
            refused[name] = str(error)
            continue
        loader = eval_loader(tokenized, batch_size, loaded.tokenizer.pad_token_id or 0,
                             max_tokens=loaded.recipe.speed.eval_max_tokens)
        ids = list(data.dataset["id"])
        out[name] = {}
        for side in sides:
            model = models[side]
            device = model_device(model)
            out[name][side] = SplitPredictions(task, ids, run_inference(model.to(device), task, loader,
                                                                        device=device, progress=progress))
    return out


def predict_tasks(loaded: exported.LoadedModel, split: str, task_names: list[str] | None = None,
                  batch_size: int = 128, progress: bool = True, side: Side = ("torch", None),
                  refused: dict[str, str] | None = None) -> dict[str, SplitPredictions]:
    """Run a loaded model (by `side`) over a labelled split of each of its tasks (or of `task_names`)."""
    predicted = predict_sides(loaded, split, task_names, batch_size, progress, [side], refused)
    return {name: by_side[side] for name, by_side in predicted.items()}


def compare_sides(loaded: exported.LoadedModel, split: str, task_names: list[str] | None = None,
                  batch_size: int = 128, progress: bool = True, sides: Iterable[Side] = COMPARED) -> dict:
    """The same split scored by every side, and each other side's change and agreement against the first
    (torch): {"split", "tasks": {task: {"main_metric": its name, side: scores, "main_change": {side: main -
    the first's}, "agreement": {side: inference.agreement}}}, "overall": {side: mean main score over the
    compared tasks}, "refused": {task: why a side could not run it}}."""
    sides = list(sides)
    reference, others = side_name(sides[0]), [side_name(side) for side in sides[1:]]
    refused: dict[str, str] = {}
    tasks = {}
    for name, by_side in predict_sides(loaded, split, task_names, batch_size, progress, sides, refused).items():
        task = by_side[sides[0]].task
        results = {side_name(side): p.result for side, p in by_side.items()}
        scores = {side: score(task, result) for side, result in results.items()}
        tasks[name] = {"main_metric": "/".join(task.main_metric), **scores,
                       "main_change": {side: scores[side]["main"] - scores[reference]["main"] for side in others},
                       "agreement": {side: agreement(task, results[side], results[reference]) for side in others}}
    overall = {side: overall_score({n: t[side]["main"] for n, t in tasks.items()})
               for side in [reference, *others]} if tasks else {}
    return {"split": split, "tasks": tasks, "overall": overall, "refused": refused}


def score_predictions(predicted: dict[str, SplitPredictions]) -> dict:
    results: dict = {name: score(p.task, p.result) for name, p in predicted.items()}
    results["overall"] = overall_score({n: r["main"] for n, r in results.items()})
    return results


def task_scores(results: dict) -> dict[str, dict]:
    """The per-task entries of evaluate's results (those with a main score), without overall and the like."""
    return {name: values for name, values in results.items() if isinstance(values, dict) and "main" in values}


def _aligned(rows: list[list[str]]) -> str:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in rows)


def format_table(results: dict) -> str:
    """A plain-text table: one row per task, one column per metric."""
    tasks = task_scores(results)
    metric_names: list[str] = []
    for values in tasks.values():
        metric_names += [m for m in values if m not in metric_names and m != "main"]
    header = ["task", *metric_names, "main"]
    rows = [[name, *(f"{values[m]:.4f}" if m in values else "-" for m in metric_names), f"{values['main']:.4f}"]
            for name, values in tasks.items()]
    rows.append(["overall", *("" for _ in metric_names), f"{results['overall']:.4f}"])
    return _aligned([header, *rows])


def _agreement_text(agreed: dict) -> str:
    if "labels_equal" in agreed:
        return f"{agreed['labels_equal']:.2%} labels"
    return f"max |score diff| {agreed['max_abs_score_diff']:.2e}"


def format_comparison(compared: dict) -> str:
    """compare_sides' result as a table: per task its main metric by every side, each other side's change
    against the first and its agreement with the first's predictions."""
    names = list(compared["overall"])
    reference, others = names[0], names[1:]
    header = ["task", "metric", *names, *(f"{n} - {reference}" for n in others),
              *(f"{n} agreement" for n in others)]
    rows = [header]
    for task, entry in compared["tasks"].items():
        rows.append([task, entry["main_metric"], *(f"{entry[n]['main']:.4f}" for n in names),
                     *(f"{entry['main_change'][n]:+.4f}" for n in others),
                     *(_agreement_text(entry["agreement"][n]) for n in others)])
    if compared["overall"]:
        overall = compared["overall"]
        rows.append(["overall", "main", *(f"{overall[n]:.4f}" for n in names),
                     *(f"{overall[n] - overall[reference]:+.4f}" for n in others), *("" for _ in others)])
    return _aligned(rows)
