"""Streamed training data (`tasks.NAME.streaming: true`): a task's train file read line by line through a
`datasets.IterableDataset`, shuffled in a buffer and tokenised batch by batch, never read whole, cached or
held: for data that does not fit on the local disk (a file on a network mount) or in memory.

A `StreamedTaskStream` hands out batches as streams.TaskStream does (one global batch a step, each process
keeping its slice of it, a last batch too small for every process dropped) from this order: pass p of the
file goes through a shuffle buffer of `data.stream_buffer` examples seeded by (seed, task position, p).
Its state is (passes, position): the pass and the examples of it handed out. A resume rebuilds pass p's
order and skips `position` examples of it (`IterableDataset.skip`: the rows are read and parsed again,
not tokenised), so a resumed run sees exactly the batches of one that never stopped.

What a stream of unknown length cannot do: give its size to the sampler (proportional, temperature and
annealed sampling need it), define an epoch (a run with a streamed task needs max_steps), draw with class
weights or a capped pass (class_balanced, max_train_examples) or feed objectives that index the data
(contrastive, distillation): config.py refuses those in one line. speed.length_pool does not group a
streamed task's batches (it would need the pass's lengths); its other tasks are grouped as usual.
"""

from __future__ import annotations

import itertools
from pathlib import Path

import datasets
import numpy as np
import torch

from mtbert.data.collate import collate
from mtbert.data.encoding import encoder
from mtbert.data.reading import stream_rows
from mtbert.data.streams import StreamState
from mtbert.errors import MtbertError
from mtbert.tasks import Task


class StreamedSplit:
    """A task's train file as a stream of examples (id, text_a, text_b, label), in file order."""

    def __init__(self, task: Task, path: Path | None):
        if path is None:  # a task read from the hub: there is no file to stream
            raise MtbertError(f"tasks.{task.name}.streaming: task {task.name} has no train file to stream "
                              f"(tasks.{task.name}.train_file); a hub dataset is read whole, not streamed")
        self.task, self.path = task, path
        features = {"id": datasets.Value("string"), "text_a": datasets.Value("string"),
                    "text_b": datasets.Value("string"),
                    "label": datasets.Value("float32" if task.kind == "regression" else "int64")}
        self.dataset = datasets.IterableDataset.from_generator(
            _examples, features=datasets.Features(features), gen_kwargs={"task": task, "path": str(path)})

    def check(self) -> None:
        """Read the first example now, so that a missing file or a wrong column stops the run before training."""
        if next(iter(self.dataset), None) is None:
            raise MtbertError(f"{self.path}: the train split of task {self.task.name} has no examples")

    def identity(self) -> str:
        """What a resume compares in place of the number of examples (unknown): the file's size."""
        try:
            return f"streamed from {self.path.stat().st_size} bytes"
        except OSError:
            return "streamed"


def _examples(task: Task, path: str):
    for _, example in stream_rows(task, Path(path)):
        yield example


class StreamedTaskStream:
    """Batches of a streamed task, resumable exactly (see the module docstring); pass_size and batches_per_pass
    are unknown (None)."""

    pass_size = None
    batches_per_pass = None

    def __init__(self, split: StreamedSplit, batch_size: int, *, seed: int, stream_id: int, pad_id: int, tokenizer,
                 max_length: int, buffer_size: int, num_processes: int = 1, process_index: int = 0):
        self.split, self.global_batch = split, batch_size * num_processes
        self.seed, self.stream_id, self.pad_id, self.buffer_size = seed, stream_id, pad_id, buffer_size
        self.num_processes, self.process_index = num_processes, process_index
        self.encode = encoder(split.task, tokenizer, max_length)
        self.state = StreamState()
        self._examples = self._open(0, 0)

    def _open(self, pass_index: int, skip: int):
        seed = int(np.random.SeedSequence([self.seed, self.stream_id, pass_index]).generate_state(1)[0])
        order = self.split.dataset.shuffle(seed=seed, buffer_size=self.buffer_size)
        return iter(order.skip(skip) if skip else order)

    def next_examples(self) -> list[dict]:
        """This process's examples of the next batch; advances the stream."""
        taken = list(itertools.islice(self._examples, self.global_batch))
        if len(taken) < self.num_processes:  # the pass is over (a last batch too small for every process dropped)
            self.state = StreamState(self.state.passes + 1, 0)
            self._examples = self._open(self.state.passes, 0)
            taken = list(itertools.islice(self._examples, self.global_batch))
            if len(taken) < self.num_processes:
                raise MtbertError(f"{self.split.path}: task {self.split.task.name} has {len(taken)} training "
                                  f"example(s), fewer than the {self.num_processes} processes")
        self.state.position += len(taken)
        return taken[self.process_index:: self.num_processes]

    def next_batch(self) -> dict[str, torch.Tensor]:
        examples = self.next_examples()
        columns = {name: [e[name] for e in examples] for name in ("text_a", "text_b", "label")}
        return collate(columns | self.encode(columns), self.pad_id)

    def state_dict(self) -> dict:
        return {"passes": self.state.passes, "position": self.state.position}

    def load_state_dict(self, state: dict) -> None:
        self.state = StreamState(int(state["passes"]), int(state["position"]))
        self._examples = self._open(self.state.passes, self.state.position)
