"""What stops a run, or a step, safely: the non-finite guard, the vote that makes every process stop at the
same step, and the signals (SIGTERM, SIGINT) that ask a run to stop after saving a checkpoint.
"""

from __future__ import annotations

import signal
import threading
from pathlib import Path
from typing import Any

import torch

from mtbert.errors import MtbertError


class NonFiniteGuard:
    """Notices the first step whose training signal is non-finite, without a host sync per step.

    It watches what backward receives, per task: the task's loss plus its regularisers, times its
    loss_weight (a loss finite on its own can overflow once weighted), and, where clipping computes it,
    the gradient norm (a finite loss can still give non-finite gradients; fp16's loss scaler and
    DeepSpeed deal with their own). Watching the unweighted loss alone let such a step through: the
    optimizer stepped on it, the weights became NaN, and the next step's task, whichever it was, was the
    first non-finite loss seen and got the blame.

    observe() only updates a tensor where the loss lives: per task, and for the gradients, the first
    step it was non-finite. found() reads it back, agreed by every process (the earliest step any of
    them saw), and names every task non-finite at that step (several share a step under all_tasks or
    gradient accumulation). It is called where the loop syncs anyway: logging, evaluation, checkpoints
    and stops, or at every step when such steps are skipped.
    """

    NONE = 2**62

    def __init__(self, task_names: list[str], device: torch.device, distributed: bool):
        self.names, self.distributed = task_names, distributed
        self.first = torch.full((len(task_names) + 1,), self.NONE, dtype=torch.int64, device=device)  # tasks, grads

    def _mark(self, slot: int, step: int, value: torch.Tensor) -> None:
        current = self.first[slot]
        self.first[slot] = torch.where(torch.isfinite(value.detach()), current, current.clamp(max=step))

    def observe(self, step: int, task: str, term: torch.Tensor) -> None:
        """`term`: what the task adds to the loss backward receives (weighted, regularisers included)."""
        self._mark(self.names.index(task), step, term)

    def observe_gradients(self, step: int, norm: torch.Tensor) -> None:
        self._mark(len(self.names), step, norm)

    def found(self) -> tuple[int, list[str]] | None:
        """(step, tasks) of the first non-finite step on any process: the tasks whose loss was non-finite
        then, or [] when only the gradients were; None if there was none."""
        first = self.first.clone()
        if self.distributed:
            torch.distributed.all_reduce(first, op=torch.distributed.ReduceOp.MIN)
        steps = first.tolist()
        step = min(steps)
        if step == self.NONE:
            return None
        return step, [name for name, first_step in zip(self.names, steps) if first_step == step]

    @staticmethod
    def describe(tasks: list[str]) -> str:
        if not tasks:
            return "non-finite gradients (every task's loss was finite)"
        return f"non-finite loss on task{'s' if len(tasks) > 1 else ''} {', '.join(tasks)}"

    def reset(self) -> None:
        self.first.fill_(self.NONE)

    def stop_if_found(self, last_checkpoint: Path | None) -> None:
        found = self.found()
        if found:
            step, tasks = found
            keep = "no checkpoint was saved before it"
            if last_checkpoint:
                keep = (f"the last good checkpoint is {last_checkpoint} (continue from it with --resume latest, "
                        f"perhaps with train.on_nonfinite=skip)")
            raise MtbertError(f"{self.describe(tasks)} at step {step}; training stopped, {keep}")

class StopVote:
    """Whether any process received SIGTERM/SIGINT, agreed at every step so that all of them stop at the
    same one. The vote goes through a small CPU (gloo) process group: it never waits for the GPU."""

    def __init__(self, num_processes: int):
        self.group = torch.distributed.new_group(backend="gloo") if num_processes > 1 else None

    def agree(self, received: int | None) -> int:
        """The signal number to stop for (the largest any process got), or 0 to go on."""
        if self.group is None:
            return received or 0
        vote = torch.tensor([received or 0], dtype=torch.int64)
        torch.distributed.all_reduce(vote, op=torch.distributed.ReduceOp.MAX, group=self.group)
        return int(vote.item())

class TrainingInterrupted(Exception):
    """The run stopped on SIGTERM or SIGINT after saving a resumable checkpoint."""

    def __init__(self, signum: int, step: int, checkpoint: Path):
        self.signum, self.step, self.checkpoint = signum, step, checkpoint
        name = signal.Signals(signum).name
        super().__init__(f"stopped by {name} after step {step}; resumable checkpoint {checkpoint} "
                         f"(continue with: mtbert train RECIPE --resume latest)")

    @property
    def exit_code(self) -> int:
        return 128 + self.signum  # the shell's convention for "ended by signal N"

class StopSignals:
    """While active, SIGTERM and SIGINT do not kill the process: they ask the loop to stop at the end of
    the current step (it then saves a checkpoint). A second SIGINT interrupts at once.

    Signal handlers can only be set from the main thread; elsewhere this does nothing.
    """

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self) -> None:
        self.received: int | None = None
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> StopSignals:
        if threading.current_thread() is threading.main_thread():
            for signum in self.SIGNALS:
                self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous.clear()

    def _handle(self, signum: int, frame) -> None:
        if self.received == signal.SIGINT and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.received = self.received or signum
