"""The objective interface: what the training loop calls, without knowing which objective runs.

An objective turns a task's batch into the loss that is back-propagated and owns whatever else that
takes: the batches it draws (a stream per task), state a resumed run needs (SMART's teacher, learned
loss weights), an update after each optimizer step. Each stage of a run trains one objective
(`Stage.objective`); one object serves every stage of its class, and is told the stage at each call.
The loop (mtbert/training/loop.py), for each optimizer step of a stage:

    objective.start_stage(model, stage)                          at the stage's first step
    for each micro-batch:
        for each task the sampler gives:
            batch = objective.streams[task].next_batch()         moved to the device
            out = objective.loss(model, task, batch, stage=stage, step=step)
        objective.backward(model, {task: out.loss, ...}, accelerator.backward)
        clip gradients when they sync; optimizer step (unless a non-finite step is skipped)
    objective.after_step(model, stage=stage, step=step)          unless the step was skipped
    log (with objective.log_values(stage)), evaluate, save (with objective.state_parts()) when due

| member                                     | the loop calls it                       | gives                         |
|--------------------------------------------|-----------------------------------------|-------------------------------|
| `streams`                                  | planning the stages; for every batch    | {task: stream}                |
| `parameters()`                             | once, building the optimizer            | learned tensors ([])          |
| `state_parts()`                            | once, building the resumable state      | {part name: stateful} ({})    |
| `start_stage(model, stage)`                | at the first step of each of its stages |                               |
| `loss(model, task, batch, *, stage, step)` | for each task of each micro-batch       | `TaskLoss(loss, logged)`      |
| `backward(model, losses, backward)`        | once per micro-batch                    | (has back-propagated)         |
| `after_step(model, *, stage, step)`        | after each optimizer step it took       |                               |
| `log_values(stage)`                        | at each log record of its stages        | entries for the record ({})   |
| `describe(stage)`                          | once per stage, for the run's header    | a few words                   |

- a stream has `next_batch()` (a dict of host tensors), `pass_size` and `batches_per_pass` (data/streams.py).
- `batch`: the stream's batch on the device, e.g. `input_ids`, `attention_mask`, `token_type_ids` (B, T),
  the same with `_b` for a siamese pair's second sentences, `labels` (B,).
- `stage`: the Stage (its `index`, `start`, `steps`, `tasks`); `step`: the optimizer step, 0-based.
- `TaskLoss.loss`: a scalar tensor, what backward receives of the task (its loss_weight and any
  regulariser in it); `TaskLoss.logged`: a scalar tensor, the task's own loss, averaged into the log.
- `losses`: {task: `TaskLoss.loss`} in sampling order; `backward(tensor)` is Accelerate's (it scales for
  gradient accumulation and mixed precision, and steps DeepSpeed). The default backward of the sum is
  what an objective that balances tasks (GradNorm, FAMO, gradient surgery) replaces: it has every
  task's loss of the micro-batch apart, and may take per-task gradients before its one backward.
- parts: named as they are stored in checkpoints (a resumed run restores them by name).
- a start-of-stage hook is not called again when a run resumes mid-stage: its effect is in the checkpoint.

`model` is a `TrainingModel`: calling it runs the prepared model (under several processes, the wrapper
whose backward averages gradients); `model.module` is the MultiTaskModel itself, for forwards that join
the same graph and for copies (SMART's teacher); `model.autocast()` is the mixed-precision context such
forwards need. `model.sync_gradients()` says whether the current micro-batch ends the optimizer step (an
objective that gathers per-task gradients over the step's micro-batches combines them then), and
`model.average(tensor)` is a tensor's mean over the processes (an objective that keeps state of its own,
learned loss weights, or takes gradients itself, keeps every process equal with it).

A new objective is one module: a subclass built from `(ObjectiveContext, {stage index: StageConfig})`,
plus its line in objectives/registry.py (docs/architecture.md walks through one).
"""

from __future__ import annotations

import contextlib
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, NamedTuple, Protocol

import torch
from torch import nn

from mtbert.config import Recipe, StageConfig
from mtbert.tasks import Task


class TaskLoss(NamedTuple):
    """One task's share of a micro-batch."""

    loss: torch.Tensor
    "Scalar: what backward receives of this task (weighted, regularisers included)."
    logged: torch.Tensor
    "Scalar: the task's own loss, averaged into the log."


@dataclass(frozen=True)
class TrainingModel:
    """The model as an objective sees it while training."""

    forward: Callable[..., Any]
    """The prepared model: training forwards go through it, so that its backward syncs every process (under DDP a
    micro-batch of several tasks runs beside the wrapper, its gradients averaged at sync: launch.TrainingForward)."""
    module: nn.Module
    "The MultiTaskModel itself: extra forwards whose graph joins the training forward's; copies of it."
    autocast: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext
    "The mixed-precision context that forwards on `module` run in."
    sync_gradients: Callable[[], bool] = lambda: True
    "Whether the micro-batch being trained is the last of its optimizer step (its gradients are then complete)."
    average: Callable[[torch.Tensor], torch.Tensor] = lambda tensor: tensor
    "The mean of a tensor over every process (the tensor itself with one): keeps an objective's own state equal."

    def __call__(self, *args, **kwargs):
        return self.forward(*args, **kwargs)


class StageLike(Protocol):
    """What an objective reads of a stage (mtbert/training/stages.py's Stage)."""

    index: int
    start: int
    steps: int
    tasks: list[str]


@dataclass
class ObjectiveContext:
    """What objectives are built from: the run as set up before the model is handed to Accelerate."""

    recipe: Recipe
    tasks: dict[str, Task]
    streams: dict[str, Any]
    "The run's batches of every task (TaskStream); their positions are saved with the run."
    train: dict[str, Any]
    "Each task's tokenised training split (with its text columns)."
    tokenizer: Any
    model: nn.Module
    "The MultiTaskModel, not yet prepared."
    device: torch.device
    process_index: int = 0
    num_processes: int = 1
    deepspeed: bool = False
    "DeepSpeed runs the model: its parameters may be sharded across processes."
    loss_scaling: bool = False
    "fp16's loss scaler multiplies every loss before backward (Accelerate's or DeepSpeed's)."
    say: Callable[[str], None] = field(default=print)
    "Prints a line once (on the main process)."


class Objective:
    """The base class: one backward of the summed task losses, no state, nothing after a step."""

    streams: dict[str, Any]

    def __init__(self, context: ObjectiveContext, stages: dict[int, StageConfig]):
        """`stages`: the recipe's stages this objective trains, by index."""
        self.streams = context.streams

    def parameters(self) -> list[torch.Tensor]:
        return []

    def state_parts(self) -> dict[str, Any]:
        return {}

    def start_stage(self, model: TrainingModel, stage: StageLike) -> None:
        pass

    def loss(self, model: TrainingModel, task: str, batch: dict[str, torch.Tensor], *, stage: StageLike,
             step: int) -> TaskLoss:
        raise NotImplementedError

    def backward(self, model: TrainingModel, losses: dict[str, torch.Tensor],
                 backward: Callable[[torch.Tensor], None]) -> None:
        total = torch.zeros((), device=next(iter(losses.values())).device)
        for loss in losses.values():
            total = total + loss
        backward(total)

    def after_step(self, model: TrainingModel, *, stage: StageLike, step: int) -> None:
        pass

    def log_values(self, stage: StageLike) -> dict:
        return {}

    def describe(self, stage: StageLike) -> str:
        raise NotImplementedError


class LossMeter:
    """Losses by name since the last log record, averaged at the next one (resumable: a checkpoint part)."""

    def __init__(self, device: torch.device):
        self.device = device
        self.losses: dict[str, list[torch.Tensor]] = defaultdict(list)

    def add(self, name: str, loss: torch.Tensor) -> None:
        self.losses[name].append(loss.detach())

    def means(self) -> dict[str, float]:
        means = {n: torch.stack(v).mean().item() for n, v in self.losses.items() if v}
        self.losses.clear()
        return means

    def state_dict(self) -> dict:
        return {n: torch.stack(v).float().cpu() for n, v in self.losses.items() if v}

    def load_state_dict(self, state: dict) -> None:
        self.losses.clear()
        for name, values in state.items():
            self.losses[name] = list(values.to(self.device).unbind())
