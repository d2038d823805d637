"""Endless streams of training batches, one per task, each deterministic and resumable.

A task's examples are visited in a fresh random order each pass (a "task epoch"), derived from the
run seed, the task's position and the pass number, so the order never depends on how many processes
run or on what happened before a resume. Each step takes one global batch (batch size x processes)
and every process keeps its own slice of it: every process trains the same task at the same step,
and two processes at batch 16 see exactly the examples of one process at batch 32. With
`length_pool` set, each pass's order is length-grouped (see length_grouping.py), which depends on the
global batch size as well.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import datasets
import numpy as np
import torch

from mtbert.data.collate import collate
from mtbert.data.length_grouping import example_lengths, group_by_length


@dataclass
class StreamState:
    passes: int = 0
    "Completed passes over the task's examples."
    position: int = 0
    "Examples of the current pass already handed out."


class TaskStream:
    def __init__(self, dataset: datasets.Dataset, batch_size: int, *, seed: int, stream_id: int, pad_id: int,
                 num_processes: int = 1, process_index: int = 0, max_examples: int | None = None,
                 class_balanced: bool = False, length_pool: int = 0):
        self.dataset = dataset
        self.global_batch = batch_size * num_processes
        self.seed, self.stream_id, self.pad_id = seed, stream_id, pad_id
        self.num_processes, self.process_index = num_processes, process_index
        self.pass_size = min(len(dataset), max_examples) if max_examples else len(dataset)
        self.weights = _balancing_weights(dataset["label"]) if class_balanced else None
        self.length_pool = length_pool
        self.lengths = example_lengths(dataset) if length_pool else None
        self.state = StreamState()
        self._order = self._order_for(0)

    @property
    def batches_per_pass(self) -> int:
        return math.ceil(self.pass_size / self.global_batch)

    def _order_for(self, pass_index: int) -> torch.Tensor:
        seed = int(np.random.SeedSequence([self.seed, self.stream_id, pass_index]).generate_state(1)[0])
        generator = torch.Generator().manual_seed(seed)
        if self.weights is not None:
            order = torch.multinomial(self.weights, self.pass_size, replacement=True, generator=generator)
        else:
            order = torch.randperm(len(self.dataset), generator=generator)[: self.pass_size]
        if self.length_pool:
            order = group_by_length(order, self.lengths, self.global_batch, self.length_pool, generator)
        return order

    def next_batch(self) -> dict[str, torch.Tensor]:
        return collate(self.dataset[self.next_indices()], self.pad_id)

    def next_indices(self) -> list[int]:
        """This process's examples of the next batch (dataset indices); advances the stream like next_batch."""
        start = self.state.position
        # A last global batch too small to give every process an example is dropped.
        if self.pass_size - start < self.num_processes:
            self.state = StreamState(self.state.passes + 1, 0)
            self._order = self._order_for(self.state.passes)
            start = 0
        indices = self._order[start: start + self.global_batch]
        self.state.position = start + len(indices)
        return indices[self.process_index:: self.num_processes].tolist()

    def state_dict(self) -> dict:
        return {"passes": self.state.passes, "position": self.state.position}

    def load_state_dict(self, state: dict) -> None:
        self.state = StreamState(int(state["passes"]), int(state["position"]))
        self._order = self._order_for(self.state.passes)


def _balancing_weights(labels: list) -> torch.Tensor:
    """Weight each example inverse to its label's frequency, so classes are drawn equally often."""
    labels_t = torch.as_tensor(labels)
    if labels_t.is_floating_point():
        raise ValueError("class_balanced sampling needs class labels, not regression scores")
    counts = torch.bincount(labels_t)
    return 1.0 / counts[labels_t].double()


class StreamPositions:
    """Where each task's batch stream stands (its pass and position; the order follows from the seed), as a
    part of a run's resumable state."""

    def __init__(self, streams: dict[str, TaskStream]):
        self.streams = streams

    def state_dict(self) -> dict:
        return {name: stream.state_dict() for name, stream in self.streams.items()}

    def load_state_dict(self, state: dict) -> None:
        for name, stream in self.streams.items():
            stream.load_state_dict(state[name])
