"""Contrastive objectives on pooled sentence vectors, and the anchor/positive/negative sets they train on.

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

Sets, from a task's labelled training examples (`build_triplets`):
  single-sentence classes or binary (sst)  anchor a sentence, positive another of the same label,
                                           negative one of another label
  sentence-pair binary (quora)             anchor and positive a duplicate pair; negative the other question of a
                                           non-duplicate pair of the same anchor when there is one (a hard
                                           negative), else of a random non-duplicate pair
  sentence-pair regression (sts)           anchor and positive a pair scored in the high range (3-5); negative
                                           the other sentence of a low-range pair (0-2), of the same anchor when
                                           there is one
With probability `other_task_negatives` a triplet's negative is instead a sentence of another task.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass

import datasets
import numpy as np
import torch
import torch.nn.functional as F

from mtbert.data.collate import attention_mask, pad
from mtbert.data.streams import TaskStream

OBJECTIVES = ("ranking", "triplet", "lse_hinge", "lse_smooth")


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
    raise ValueError(f"unknown contrastive objective {objective!r}; known: {', '.join(OBJECTIVES)}")


# ---------------------------------------------------------------------------------------------
# Anchor / positive / negative sets


@dataclass(frozen=True)
class TaskSentences:
    """A task's labelled training examples as the set builder reads them."""

    name: str
    kind: str
    "classes, binary or regression."
    text_a: list[str]
    text_b: list[str] | None
    "None for a single-sentence task."
    labels: list


class TripletError(ValueError):
    pass


def build_triplets(task: TaskSentences, others: list[str], *, seed: int, positive_min: float = 3.0,
                   negative_max: float = 2.0, other_task_negatives: float = 0.0) -> list[tuple[str, str, str]]:
    """(anchor, positive, negative) texts from a task's examples, as the module docstring says.

    others: sentences of the other tasks, where a negative comes from with probability other_task_negatives."""
    rng = np.random.default_rng([seed, *task.name.encode()])
    if task.text_b is None:
        triplets = _same_label_triplets(task, rng)
    elif task.kind == "binary":
        labels = [int(x) for x in task.labels]
        triplets = _pair_triplets(task, [x == 1 for x in labels], [x == 0 for x in labels], rng)
    elif task.kind == "regression":
        scores = [float(x) for x in task.labels]
        triplets = _pair_triplets(task, [s >= positive_min for s in scores], [s <= negative_max for s in scores], rng)
    else:
        raise TripletError(f"task {task.name}: contrastive sets are built from single-sentence tasks with classes, "
                           f"binary sentence-pair tasks and sentence-pair regression tasks, not a {task.kind} "
                           f"pair task")
    if other_task_negatives and others:
        swap = rng.random(len(triplets)) < other_task_negatives
        picks = rng.integers(len(others), size=len(triplets))
        triplets = [(a, p, others[k]) if s else (a, p, n) for (a, p, n), s, k in zip(triplets, swap, picks)]
    if not triplets:
        raise TripletError(f"task {task.name}: its training examples give no anchor/positive/negative triplet")
    return triplets


def _same_label_triplets(task: TaskSentences, rng: np.random.Generator) -> list[tuple[str, str, str]]:
    by_label: dict = defaultdict(list)
    for i, label in enumerate(task.labels):
        by_label[label].append(i)
    if len(by_label) < 2:
        raise TripletError(f"task {task.name}: same-label positives and other-label negatives need two labels or more")
    everyone = np.arange(len(task.labels))
    triplets = []
    for i, label in enumerate(task.labels):
        same = by_label[label]
        if len(same) < 2:
            continue
        j = same[rng.integers(len(same))]
        while j == i:
            j = same[rng.integers(len(same))]
        k = int(everyone[rng.integers(len(everyone))])
        while task.labels[k] == label:
            k = int(everyone[rng.integers(len(everyone))])
        triplets.append((task.text_a[i], task.text_a[j], task.text_a[k]))
    return triplets


def _pair_triplets(task: TaskSentences, positive: list[bool], negative: list[bool],
                   rng: np.random.Generator) -> list[tuple[str, str, str]]:
    hard: dict[str, list[str]] = defaultdict(list)  # anchor -> the other sentences of its negative pairs
    negatives = []
    for a, b, is_negative in zip(task.text_a, task.text_b, negative):
        if is_negative:
            hard[a].append(b)
            hard[b].append(a)
            negatives.append(b)
    if not negatives:
        raise TripletError(f"task {task.name}: no negative pair to draw negatives from")
    triplets = []
    for a, b, is_positive in zip(task.text_a, task.text_b, positive):
        if is_positive:
            own = hard.get(a)
            n = own[rng.integers(len(own))] if own else negatives[rng.integers(len(negatives))]
            triplets.append((a, b, n))
    return triplets


def task_sentences(name: str, kind: str, dataset: datasets.Dataset) -> TaskSentences:
    """The texts and labels of a task's (tokenised) training split, which keeps its text columns."""
    columns = dataset.column_names
    return TaskSentences(name, kind, list(dataset["text_a"]), list(dataset["text_b"]) if "text_b" in columns else None,
                         list(dataset["label"]))


def tokenize_triplets(triplets: list[tuple[str, str, str]], tokenizer, max_length: int) -> datasets.Dataset:
    """Token ids of each triplet's three sentences, each encoded alone: columns input_ids (anchors),
    positive_ids, negative_ids."""
    sentences = list(dict.fromkeys(s for triplet in triplets for s in triplet))
    ids = tokenizer(sentences, truncation=True, max_length=max_length, return_attention_mask=False,
                    return_token_type_ids=False)["input_ids"]
    index = {s: i for i, s in enumerate(sentences)}
    return datasets.Dataset.from_dict({
        "input_ids": [ids[index[a]] for a, _, _ in triplets],
        "positive_ids": [ids[index[p]] for _, p, _ in triplets],
        "negative_ids": [ids[index[n]] for _, _, n in triplets],
    })


class TripletStream(TaskStream):
    """A task's triplets as an endless, resumable stream (TaskStream's order and state); each batch is one
    single-sentence batch of 3B rows: anchors, then positives, then negatives."""

    def next_batch(self) -> dict[str, torch.Tensor]:
        rows = self.dataset[self.next_indices()]
        sentences = rows["input_ids"] + rows["positive_ids"] + rows["negative_ids"]
        ids = pad(sentences, self.pad_id)  # (3B, T)
        return {"input_ids": ids, "attention_mask": attention_mask(sentences), "token_type_ids": torch.zeros_like(ids)}
