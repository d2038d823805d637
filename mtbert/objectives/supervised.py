"""The supervised objective: each task's own loss, by its kind, times its loss_weight. Also the matching
turn of model outputs into predictions.

| kind | loss (`LOSSES`) | outputs (B, ...) | labels (B,) |
|---|---|---|---|
| classes | cross_entropy | logits (B, C) | class index |
| binary | bce_with_logits | one logit (B,) | 0 or 1 |
| regression | mse | score (B,) | score |
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from mtbert.objectives.base import Objective, StageLike, TaskLoss, TrainingModel


def cross_entropy(outputs: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(outputs.float(), labels.long())


def bce_with_logits(outputs: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    return F.binary_cross_entropy_with_logits(outputs.float(), labels.float())


def mse(outputs: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    return F.mse_loss(outputs.float(), labels.float())


LOSSES = {"cross_entropy": cross_entropy, "bce_with_logits": bce_with_logits, "mse": mse}


def predictions(kind: str, outputs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(prediction, class probabilities or None): a class index per example, or a score."""
    outputs = outputs.float()
    if kind == "classes":
        probs = outputs.softmax(-1)
        return probs.argmax(-1), probs
    if kind == "binary":
        p = outputs.sigmoid()
        return (p > 0.5).long(), torch.stack([1 - p, p], dim=-1)
    return outputs, None


class Supervised(Objective):
    """Each task's loss (`LOSSES[task.loss]`) on its outputs and labels, plus `regulariser` (none here),
    times the task's loss_weight: `balancing.method: static`. A stage whose recipe or own `balancing:` names
    the method logs those weights as `task_weights` (constant), as the other balancing methods log theirs; a
    recipe without `balancing:` logs none."""

    def __init__(self, context, stages):
        super().__init__(context, stages)
        self.tasks = context.tasks
        self.static_logged = {index for index, config in stages.items()
                              if (config.balancing or context.recipe.balancing) is not None}

    def loss(self, model: TrainingModel, task: str, batch: dict[str, torch.Tensor], *, stage: StageLike,
             step: int) -> TaskLoss:
        outputs = self.outputs(model, task, batch)  # (B, C) or (B,)
        task_loss = LOSSES[self.tasks[task].loss](outputs, batch["labels"])
        regulariser = self.regulariser(model, task, batch, outputs, stage)
        return TaskLoss(self.tasks[task].loss_weight * (task_loss + regulariser), task_loss)

    def outputs(self, model: TrainingModel, task: str, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """The training forward: through the prepared model, whose backward syncs every process."""
        return model(task, batch)

    def regulariser(self, model: TrainingModel, task: str, batch: dict[str, torch.Tensor], outputs: torch.Tensor,
                    stage: StageLike) -> torch.Tensor | float:
        """What a subclass adds to the task's loss before its weight (SMART's terms)."""
        return 0.0

    def log_values(self, stage: StageLike) -> dict:
        if stage.index not in self.static_logged:
            return {}
        return {"task_weights": {name: self.tasks[name].loss_weight for name in stage.tasks}}

    def describe(self, stage: StageLike) -> str:
        return "supervised"
