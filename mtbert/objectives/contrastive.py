"""The contrastive objective: a loss on pooled sentence vectors of anchors, positives and negatives.

Losses (anchors a, positives p, negatives n: (B, H) each):
  ranking    multiple-negatives ranking: cross-entropy over scale x cos(a_i, c_j), the candidates c being
             every positive of the batch (the others' positives are in-batch negatives) and every negative;
             the right answer for a_i is p_i
  triplet    max(0, |a - p| - |a - n| + margin), Euclidean distance
  lse_hinge  max(0, d(a_i, p_i) - log sum_j exp d(a_i, n_j)) over the batch's negatives n_j, Euclidean d: the
             log-sum-exp hinge as published. log sum_j exp d(a_i, n_j) >= max_j d(a_i, n_j), so it is zero, with
             zero gradient, whenever the positive is closer than the farthest negative of the batch: on real
             data nearly always, and a stage using it then trains nothing (its logged loss is 0.0)
  lse_smooth log(1 + sum_j exp(d(a_i, p_i) - d(a_i, n_j))), Euclidean d, the batch's negatives n_j: the smooth
             form, never zero, which keeps pulling positives in and pushing negatives out; this one trains

The anchor/positive/negative sets they train on are built in mtbert/data/triplets.py.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from mtbert.config import StageConfig
from mtbert.data.streams import StreamPositions
from mtbert.data.triplets import triplet_streams
from mtbert.objectives.base import Objective, ObjectiveContext, StageLike, TaskLoss, TrainingModel

LOSS_NAMES = ("ranking", "triplet", "lse_hinge", "lse_smooth")


def multiple_negatives_ranking_loss(anchors: torch.Tensor, positives: torch.Tensor,
                                    negatives: torch.Tensor | None = None, scale: float = 20.0) -> torch.Tensor:
    """Cross-entropy over the in-batch similarity matrix: row i scores a_i against every candidate."""
    candidates = positives if negatives is None else torch.cat([positives, negatives])  # (B or 2B, H)
    scores = scale * F.normalize(anchors.float(), dim=-1) @ F.normalize(candidates.float(), dim=-1).T  # (B, C)
    return F.cross_entropy(scores, torch.arange(anchors.shape[0], device=anchors.device))


def triplet_loss(anchors: torch.Tensor, positives: torch.Tensor, negatives: torch.Tensor,
                 margin: float = 1.0) -> torch.Tensor:
    """max(0, |a - p| - |a - n| + margin), Euclidean, averaged."""
    a, p, n = anchors.float(), positives.float(), negatives.float()
    return F.relu((a - p).norm(dim=-1) - (a - n).norm(dim=-1) + margin).mean()


def lse_hinge_loss(anchors: torch.Tensor, positives: torch.Tensor, negatives: torch.Tensor) -> torch.Tensor:
    """max(0, d(a_i, p_i) - log sum_j exp d(a_i, n_j)), Euclidean d, the batch's negatives n_j, averaged.

    The published form, kept as such: it is zero (and so is its gradient) as soon as the positive is closer
    than the farthest negative, which real data nearly always gives; lse_smooth_loss is the form that trains."""
    a, p, n = anchors.float(), positives.float(), negatives.float()
    positive = (a - p).norm(dim=-1)  # (B,)
    negative = torch.cdist(a, n)  # (B, B)
    return F.relu(positive - negative.logsumexp(dim=-1)).mean()


def lse_smooth_loss(anchors: torch.Tensor, positives: torch.Tensor, negatives: torch.Tensor) -> torch.Tensor:
    """log(1 + sum_j exp(d(a_i, p_i) - d(a_i, n_j))), Euclidean d, the batch's negatives n_j, averaged.

    A softplus of every positive-negative distance gap at once: positive whatever the distances, its
    gradient shrinks as the positive gets closer than the negatives but never vanishes."""
    a, p, n = anchors.float(), positives.float(), negatives.float()
    gaps = (a - p).norm(dim=-1)[:, None] - torch.cdist(a, n)  # (B, B): d(a_i, p_i) - d(a_i, n_j)
    zero = gaps.new_zeros(gaps.shape[0], 1)  # exp(0) = the 1 in log(1 + ...), computed stably in one logsumexp
    return torch.cat([zero, gaps], dim=1).logsumexp(dim=1).mean()


def contrastive_loss(objective: str, vectors: torch.Tensor, *, scale: float = 20.0,
                     margin: float = 1.0) -> torch.Tensor:
    """The objective on (3B, H) vectors: anchors, then positives, then negatives."""
    anchors, positives, negatives = vectors.chunk(3)
    if objective == "ranking":
        return multiple_negatives_ranking_loss(anchors, positives, negatives, scale)
    if objective == "triplet":
        return triplet_loss(anchors, positives, negatives, margin)
    if objective == "lse_hinge":
        return lse_hinge_loss(anchors, positives, negatives)
    if objective == "lse_smooth":
        return lse_smooth_loss(anchors, positives, negatives)
    raise ValueError(f"unknown contrastive objective {objective!r}; known: {', '.join(LOSS_NAMES)}")


class Contrastive(Objective):
    """The stage's loss (its `objective:` is one of LOSS_NAMES) on each task's anchor, positive and negative
    vectors, times the task's loss_weight. Batches come from each task's triplet stream (data/triplets.py),
    one set for every contrastive stage of the run: checkpoint part `triplet_streams`."""

    def __init__(self, context: ObjectiveContext, stages: dict[int, StageConfig]):
        recipe = context.recipe
        self.tasks, self.settings = context.tasks, recipe.contrastive
        self.losses = {index: config.objective for index, config in stages.items()}
        names = list(dict.fromkeys(name for config in stages.values() for name in config.tasks or recipe.tasks))
        self.streams = triplet_streams(recipe, context.tasks, names, context.train, context.tokenizer,
                                       first_stream_id=len(context.tasks), process_index=context.process_index,
                                       num_processes=context.num_processes, say=context.say)

    def state_parts(self) -> dict:
        return {"triplet_streams": StreamPositions(self.streams)}

    def loss(self, model: TrainingModel, task: str, batch: dict[str, torch.Tensor], *, stage: StageLike,
             step: int) -> TaskLoss:
        vectors = model(task, batch, vectors=True)  # (3B, H): anchors, positives, negatives
        task_loss = contrastive_loss(self.losses[stage.index], vectors, scale=self.settings.scale,
                                     margin=self.settings.margin)
        return TaskLoss(self.tasks[task].loss_weight * task_loss, task_loss)

    def describe(self, stage: StageLike) -> str:
        return self.losses[stage.index]
