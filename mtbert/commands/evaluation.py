"""Scoring an exported model on a split of its tasks: what `mtbert evaluate`, `report` and the tests use."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from mtbert import exported, speed
from mtbert.data.loading import load_split, require_labels
from mtbert.errors import MtbertError
from mtbert.inference import TaskPredictions, eval_loader, run_inference, score
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


def evaluate_checkpoint(ckpt: str | Path, split: str = "dev", task_names: list[str] | None = None,
                        data_dir: str | None = None, batch_size: int = 128, progress: bool = True) -> dict:
    """{task: {metric: value, "main": score}, "overall": mean of the main scores}."""
    loaded = exported.load_model(ckpt, data_dir=data_dir)
    return score_predictions(predict_tasks(loaded, split, task_names, batch_size, progress))


@dataclass
class SplitPredictions:
    """One task's predictions on a labelled split, with the example ids in the split's order."""

    task: Task
    ids: list[str]
    result: TaskPredictions


def predict_tasks(loaded: exported.LoadedModel, split: str, task_names: list[str] | None = None,
                  batch_size: int = 128, progress: bool = True) -> dict[str, SplitPredictions]:
    """Run a loaded model over a labelled split of each of its tasks (or of `task_names`)."""
    device = default_device()
    model = loaded.model.to(device)
    speed.set_switches(model, loaded.recipe.speed)
    out = {}
    for name, task in select_tasks(loaded.tasks, task_names).items():
        data, tokenized = load_split(task, split, loaded.recipe.data_dir, loaded.tokenizer,
                                     loaded.recipe.model.max_length, progress=progress)
        require_labels(data, task, split)
        loader = eval_loader(tokenized, batch_size, loaded.tokenizer.pad_token_id or 0,
                             max_tokens=loaded.recipe.speed.eval_max_tokens)
        result = run_inference(model, task, loader, device=device, progress=progress)
        out[name] = SplitPredictions(task, list(data.dataset["id"]), result)
    return out


def score_predictions(predicted: dict[str, SplitPredictions]) -> dict:
    results: dict = {name: score(p.task, p.result) for name, p in predicted.items()}
    results["overall"] = overall_score({n: r["main"] for n, r in results.items()})
    return results


def format_table(results: dict) -> str:
    """A plain-text table: one row per task, one column per metric."""
    metric_names: list[str] = []
    for values in results.values():
        if isinstance(values, dict):
            metric_names += [m for m in values if m not in metric_names and m != "main"]
    header = ["task", *metric_names, "main"]
    rows = [[name, *(f"{values[m]:.4f}" if m in values else "-" for m in metric_names), f"{values['main']:.4f}"]
            for name, values in results.items() if isinstance(values, dict)]
    rows.append(["overall", *("" for _ in metric_names), f"{results['overall']:.4f}"])
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(row, widths)) for row in [header, *rows])
