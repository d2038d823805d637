"""Run a model over a tokenised split: predictions in the split's order, and their scores.

Examples are batched longest-first, so batches hold examples of similar length and waste little on
padding; the original order is restored at the end. `gather` lets a multi-process caller collect the
results of every process (train.py passes Accelerate's gather_for_metrics).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import datasets
import numpy as np
import torch
from tqdm.auto import tqdm

from mtbert.data.collate import collate
from mtbert.metrics import compute_metrics, main_score
from mtbert.objectives.losses import predictions
from mtbert.tasks import Task


@dataclass
class TaskPredictions:
    predictions: np.ndarray
    "A class index or a score per example, in the split's order."
    probabilities: np.ndarray | None
    "Class probabilities (N, C) for classification tasks."
    labels: np.ndarray | None
    "Gold labels, when the split has them."


class _SortedRows(torch.utils.data.Dataset):
    """Positions in length order; each item is the position, so the batch knows where it came from."""

    def __init__(self, dataset: datasets.Dataset):
        lengths = np.array([len(ids) for ids in dataset["input_ids"]])
        if "input_ids_b" in dataset.column_names:
            lengths = np.maximum(lengths, [len(ids) for ids in dataset["input_ids_b"]])
        self.order = np.argsort(-lengths, kind="stable")

    def __len__(self) -> int:
        return len(self.order)

    def __getitem__(self, position: int) -> int:
        return int(self.order[position])


def eval_loader(dataset: datasets.Dataset, batch_size: int, pad_id: int) -> torch.utils.data.DataLoader:
    columns = [c for c in dataset.column_names if c.startswith(("input_ids", "token_type_ids")) or c == "label"]
    rows = dataset.select_columns(columns)

    def collate_rows(indices: list[int]) -> dict[str, torch.Tensor]:
        batch = collate(rows[indices], pad_id)
        batch["index"] = torch.tensor(indices)
        return batch

    return torch.utils.data.DataLoader(_SortedRows(dataset), batch_size=batch_size, shuffle=False,
                                       collate_fn=collate_rows)


@torch.no_grad()
def run_inference(model: torch.nn.Module, task: Task, loader, *, device: torch.device | str = "cpu",
                  gather: Callable = lambda x: x, progress: bool = False) -> TaskPredictions:
    was_training = model.training
    model.eval()
    parts: dict[str, list[torch.Tensor]] = {"index": [], "pred": [], "prob": [], "label": []}
    for batch in tqdm(loader, desc=f"predict {task.name}", disable=not progress, leave=False):
        batch = {k: v.to(device) for k, v in batch.items()}
        outputs = model(task.name, batch)
        pred, prob = predictions(task.kind, outputs)
        gathered = gather({"index": batch["index"], "pred": pred, **({"prob": prob} if prob is not None else {}),
                           **({"label": batch["labels"]} if "labels" in batch else {})})
        for key, value in gathered.items():
            parts[key].append(value.cpu())
    model.train(was_training)
    index = torch.cat(parts["index"]).numpy()
    restore = np.argsort(index, kind="stable")

    def ordered(key: str) -> np.ndarray | None:
        return torch.cat(parts[key]).numpy()[restore] if parts[key] else None

    return TaskPredictions(ordered("pred"), ordered("prob"), ordered("label"))


def score(task: Task, result: TaskPredictions) -> dict[str, float]:
    """The task's metrics plus `main`, the task's main score."""
    values = compute_metrics(task.metrics, result.predictions, result.labels, num_labels=task.num_labels)
    values["main"] = main_score(values, task.main_metric)
    return values
