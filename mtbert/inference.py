"""Run a model over a tokenised split: predictions in the split's order, and their scores.

Examples are batched longest-first, so batches hold examples of similar length and waste little on
padding; the original order is restored at the end. A batch holds `batch_size` examples, or, with a
token budget, as many as fit in `max_tokens` padded tokens (up to `batch_size`), so short examples go
in larger batches. `gather` lets a multi-process caller collect the results of every process (the training
loop passes Accelerate's gather_for_metrics).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import datasets
import numpy as np
import torch
from tqdm.auto import tqdm

from mtbert.data.collate import collate
from mtbert.data.length_grouping import example_lengths
from mtbert.metrics import compute_metrics, main_score
from mtbert.objectives.supervised import predictions
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
        self.lengths = example_lengths(dataset)
        self.order = np.argsort(-self.lengths, kind="stable")

    def __len__(self) -> int:
        return len(self.order)

    def __getitem__(self, position: int) -> int:
        return int(self.order[position])


def token_budget_batches(sorted_lengths: np.ndarray, batch_size: int, max_tokens: int,
                         sequences_per_example: int = 1) -> list[list[int]]:
    """Cut positions 0..n-1 of examples sorted longest first into batches of at most `batch_size` examples
    and `max_tokens` padded tokens (examples x the first, longest length x sequences per example); an
    example longer than the budget goes alone."""
    batches, start = [], 0
    while start < len(sorted_lengths):
        per_example = int(sorted_lengths[start]) * sequences_per_example
        size = max(1, min(batch_size, max_tokens // max(per_example, 1)))
        batches.append(list(range(start, min(start + size, len(sorted_lengths)))))
        start += size
    return batches


def eval_loader(dataset: datasets.Dataset, batch_size: int, pad_id: int,
                max_tokens: int | None = None) -> torch.utils.data.DataLoader:
    columns = [c for c in dataset.column_names if c.startswith(("input_ids", "token_type_ids")) or c == "label"]
    rows = dataset.select_columns(columns)

    def collate_rows(indices: list[int]) -> dict[str, torch.Tensor]:
        batch = collate(rows[indices], pad_id)
        batch["index"] = torch.tensor(indices)
        return batch

    positions = _SortedRows(dataset)
    if max_tokens is None:
        return torch.utils.data.DataLoader(positions, batch_size=batch_size, shuffle=False, collate_fn=collate_rows)
    # A siamese pair is two sequences through the encoder.
    sequences = 2 if "input_ids_b" in dataset.column_names else 1
    batches = token_budget_batches(positions.lengths[positions.order], batch_size, max_tokens, sequences)
    return torch.utils.data.DataLoader(positions, batch_sampler=batches, collate_fn=collate_rows)


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


def agreement(task: Task, ours: TaskPredictions, theirs: TaskPredictions) -> dict:
    """How far `ours` are from `theirs` (a reference's predictions on the same examples): the share of equal
    labels and the largest probability difference, or for regression the largest score difference."""
    if task.kind == "regression":
        return {"examples": len(ours.predictions),
                "max_abs_score_diff": float(np.max(np.abs(ours.predictions - theirs.predictions)))}
    return {"examples": len(ours.predictions),
            "labels_equal": float(np.mean(ours.predictions == theirs.predictions)),
            "max_abs_probability_diff": float(np.max(np.abs(ours.probabilities - theirs.probabilities)))}
