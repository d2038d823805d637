"""Anchor/positive/negative sets for contrastive stages, and the stream that serves them as batches.

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
from collections.abc import Callable
from dataclasses import dataclass

import datasets
import numpy as np
import torch

from mtbert.config import Recipe
from mtbert.data.collate import attention_mask, pad
from mtbert.data.streams import TaskStream
from mtbert.errors import MtbertError
from mtbert.tasks import Task


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


def triplet_streams(recipe: Recipe, tasks: dict[str, Task], names: list[str], train: dict[str, datasets.Dataset],
                    tokenizer, *, first_stream_id: int, process_index: int = 0, num_processes: int = 1,
                    say: Callable[[str], None] = print) -> dict[str, TripletStream]:
    """The triplet stream of each task in `names`, from its tokenised training split (which keeps its text
    columns): negatives from the other named tasks as recipe.contrastive says; stream ids from first_stream_id."""
    sentences = {name: task_sentences(name, tasks[name].kind, train[name]) for name in names}
    streams = {}
    for i, name in enumerate(names):
        others = [text for other in names if other != name
                  for text in sentences[other].text_a + (sentences[other].text_b or [])]
        try:
            triplets = build_triplets(sentences[name], others, seed=recipe.seed,
                                      positive_min=recipe.contrastive.positive_min,
                                      negative_max=recipe.contrastive.negative_max,
                                      other_task_negatives=recipe.contrastive.other_task_negatives)
        except TripletError as e:
            raise MtbertError(f"stages: {e}") from None
        task = tasks[name]
        streams[name] = TripletStream(tokenize_triplets(triplets, tokenizer, recipe.model.max_length),
                                      task.batch_size, seed=recipe.seed, stream_id=first_stream_id + i,
                                      pad_id=tokenizer.pad_token_id or 0, num_processes=num_processes,
                                      process_index=process_index, max_examples=task.max_train_examples,
                                      length_pool=recipe.speed.length_pool)
        say(f"{name}: {len(triplets)} anchor/positive/negative triplets")
    return streams
