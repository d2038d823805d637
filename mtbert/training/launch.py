"""The one adapter to Accelerate and DeepSpeed: the accelerator a recipe asks for, the DeepSpeed config filled
from the recipe, what ZeRO needs done differently (its gradient buffer, its optimizer shards in checkpoints),
the exported model gathered from every process, and the check that every process ends with the same weights.

Runs the same under `accelerate launch` (any number of processes) and as a plain `mtbert train`. The loop
(loop.py) uses the accelerator in plain Accelerate idiom; rank checks appear only where files are written.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator, DistributedDataParallelKwargs
from accelerate.utils import (
    DistributedType,
    InitProcessGroupKwargs,
    broadcast_object_list,
    gather_object,
    is_mlu_available,
    is_npu_available,
    is_xpu_available,
    set_seed,
)

from mtbert import exported, speed
from mtbert.config import Recipe
from mtbert.errors import MtbertError
from mtbert.objectives.base import TrainingModel
from mtbert.training.checkpoints import Processes, Stateful
from mtbert.training.tracking import logging_dir


def make_accelerator(recipe: Recipe) -> Accelerator:
    handlers = [DistributedDataParallelKwargs(find_unused_parameters=True)]  # a step trains one task's head
    deepspeed = os.environ.get("ACCELERATE_USE_DEEPSPEED", "false").lower() == "true"
    several = int(os.environ.get("WORLD_SIZE", "1")) > 1
    no_device = not (torch.cuda.is_available() or is_xpu_available() or is_npu_available() or is_mlu_available())
    if deepspeed and no_device:
        # Without a GPU, Accelerate starts DeepSpeed with no process-group backend and then counts a single
        # process; naming gloo gives DeepSpeed on CPU processes a real process group.
        handlers.append(InitProcessGroupKwargs(backend="gloo"))
    # Likewise processes started by torchrun (Accelerate's launcher for several processes) on a machine
    # without GPUs would each count themselves alone: run them on the CPU, with gloo.
    cpu = several and no_device and not deepspeed
    trackers = recipe.tracking.trackers
    return Accelerator(gradient_accumulation_steps=recipe.train.grad_accum, kwargs_handlers=handlers, cpu=cpu,
                       mixed_precision=speed.mixed_precision(recipe.speed), log_with=trackers or None,
                       project_dir=logging_dir(recipe) if trackers else None)

def configure_deepspeed(accelerator: Accelerator, recipe: Recipe) -> None:
    """Fill the DeepSpeed config's "auto" values from the recipe; refuse values that contradict it."""
    plugin = accelerator.state.deepspeed_plugin
    config = plugin.deepspeed_config
    source = os.environ.get("ACCELERATE_DEEPSPEED_CONFIG_FILE") or "the DeepSpeed config"
    if plugin.zero_stage not in (1, 2, 3):
        raise MtbertError(f"{source}: zero_optimization.stage is {plugin.zero_stage}; mtbert runs DeepSpeed with "
                          f"ZeRO stage 1, 2 or 3 (see accelerate_configs/)")
    for section in ("optimizer", "scheduler"):
        if section in config:
            raise MtbertError(f"{source}: remove its '{section}' section; mtbert builds the optimizer and the "
                              f"learning-rate schedule from the recipe (train.optimizer, train.lr, ...)")
    if recipe.train.on_nonfinite == "skip":
        raise MtbertError("train.on_nonfinite: skip is not available under DeepSpeed, whose engine steps inside "
                          "backward; use stop (fp16 runs skip overflowing steps by DeepSpeed's loss scaler)")
    from_recipe = {"train_micro_batch_size_per_gpu": ("train.batch_size", recipe.train.batch_size),
                   "gradient_accumulation_steps": ("train.grad_accum", recipe.train.grad_accum),
                   "gradient_clipping": ("train.grad_clip", float(recipe.train.grad_clip or 0.0))}
    for key, (recipe_key, value) in from_recipe.items():
        if config.get(key, "auto") == "auto":
            config[key] = value
        elif config[key] != value:
            raise MtbertError(f"{source}: {key} is {config[key]}, but {recipe_key} is {value}; set it to \"auto\"")
    zero = config.setdefault("zero_optimization", {})
    gather = "stage3_gather_16bit_weights_on_model_save"
    if plugin.zero_stage == 3:
        if zero.get(gather, "auto") == "auto":
            zero[gather] = True
        elif not zero[gather]:
            raise MtbertError(f"{source}: zero_optimization.{gather} must be true: the exported model "
                              f"is the whole model, gathered from every process")

def from_main_process(values: list) -> list:
    """`values` (a list of picklable objects) as the main process holds them, on every process."""
    broadcast_object_list(values)
    return values


def from_every_process(items: list) -> list:
    """Every process's `items`, concatenated in process order, on every process."""
    return gather_object(items)


def seed_everything(seed: int) -> None:
    """Python's, NumPy's and torch's generators (on every device) from the recipe's seed."""
    set_seed(seed)


def is_deepspeed(accelerator: Accelerator) -> bool:
    return accelerator.distributed_type == DistributedType.DEEPSPEED


def processes(accelerator: Accelerator) -> Processes:
    """The run's processes as checkpoints see them."""
    return Processes(accelerator.process_index, accelerator.num_processes, accelerator.wait_for_everyone)


def prepare(accelerator: Accelerator, recipe: Recipe, model: torch.nn.Module,
            optimizer: torch.optim.Optimizer) -> tuple[Any, Any]:
    """The model and optimizer handed to Accelerate (wrapped for several processes, or a DeepSpeed engine)."""
    if is_deepspeed(accelerator):
        configure_deepspeed(accelerator, recipe)
    return accelerator.prepare(model, optimizer)


def training_model(accelerator: Accelerator, model) -> TrainingModel:
    """The prepared model as objectives see it (objectives/base.py)."""
    return TrainingModel(forward=TrainingForward(accelerator, model), module=accelerator.unwrap_model(model),
                         autocast=accelerator.autocast, sync_gradients=lambda: accelerator.sync_gradients,
                         average=lambda tensor: accelerator.reduce(tensor, reduction="mean"))


class TrainingForward:
    """The training forward: through the prepared model, except under DDP in a micro-batch that holds several tasks
    (sampling all_tasks). DDP prepares each backward's gradient reduction at a forward, from that forward's outputs
    alone (find_unused_parameters): after a second task's forward the first task's head counts as unused, and its
    gradient then breaks the reduction ("marked as ready twice"). Such micro-batches run on the module itself,
    where DDP's hooks stay idle, and the step's gradients are averaged over the processes by hand when they sync
    (after_backward): every process forwards the same tasks, so the same parameters hold gradients."""

    def __init__(self, accelerator: Accelerator, model) -> None:
        self.model, self.module, self.autocast = model, accelerator.unwrap_model(model), accelerator.autocast
        self.ddp = isinstance(model, torch.nn.parallel.DistributedDataParallel)
        self.beside_ddp = False
        "This micro-batch's forwards run on the module (several tasks under DDP)."
        self.by_hand = False
        "A forward of this optimizer step ran on the module: its gradients await averaging."

    def __call__(self, *args, **kwargs):
        if self.beside_ddp:
            self.by_hand = True
            with self.autocast():
                return self.module(*args, **kwargs)
        return self.model(*args, **kwargs)


@contextlib.contextmanager
def micro_batch(trainee: TrainingModel, tasks: list[str]):
    """The forwards of one micro-batch of `tasks` (see TrainingForward)."""
    forward = trainee.forward
    forward.beside_ddp = forward.ddp and len(tasks) > 1
    try:
        yield
    finally:
        forward.beside_ddp = False


def average_gradients(module: torch.nn.Module, average: Callable[[torch.Tensor], torch.Tensor]) -> None:
    """Every gradient the processes hold, replaced by its mean over them (in one reduction)."""
    grads = [p.grad for p in module.parameters() if p.grad is not None]
    if grads:
        flat = average(torch.cat([g.reshape(-1) for g in grads]))
        for grad, mean in zip(grads, flat.split([g.numel() for g in grads])):
            grad.copy_(mean.view_as(grad))


def exact_gradient_norm(accelerator: Accelerator) -> bool:
    """Whether the guard may watch the norm clipping computes: not under fp16's loss scaler or DeepSpeed, which
    deal with non-finite gradients themselves (and the scaler must not unscale a step that is then skipped)."""
    return launch_info(accelerator)["zero_stage"] is None and accelerator.scaler is None


def loss_scaling(accelerator: Accelerator) -> bool:
    """Whether fp16's loss scaler multiplies losses before backward (Accelerate's, or DeepSpeed's fp16 section)."""
    if is_deepspeed(accelerator):
        return bool(accelerator.state.deepspeed_plugin.deepspeed_config.get("fp16", {}).get("enabled") is True)
    return accelerator.scaler is not None


def after_backward(accelerator: Accelerator, model, trainee: TrainingModel) -> None:
    """What the step that syncs gradients needs after backward: under ZeRO-3, its gradient buffer cleared; the
    gradients of forwards that ran beside DDP (TrainingForward), averaged over the processes."""
    if launch_info(accelerator)["zero_stage"] == 3:
        clear_zero3_gradients(model)  # DeepSpeed stepped inside backward
    if trainee.forward.by_hand:
        average_gradients(trainee.module, trainee.average)
        trainee.forward.by_hand = False

def clear_zero3_gradients(engine) -> None:
    """After a ZeRO-3 optimizer step, zero the flat buffer its gradient partitions live in.

    DeepSpeed (0.19) builds each step's gradients from that buffer without clearing it, so a parameter
    that gets no gradient in a step (another task's head) is updated again with its previous gradient.
    Cleared, it gets a zero gradient, as under ZeRO-1/2. (Its optimizer state still moves: weight decay
    and momentum, as for any flat ZeRO partition; DDP's AdamW skips such parameters.)"""
    buffer = getattr(engine.optimizer, "grad_partitions_flat_buffer", None)
    if buffer is not None:
        buffer.zero_()

def launch_info(accelerator: Accelerator) -> dict:
    """How the run is launched, as far as its checkpoints depend on it."""
    deepspeed = is_deepspeed(accelerator)
    return {"num_processes": accelerator.num_processes, "distributed_type": str(accelerator.distributed_type.value),
            "mixed_precision": accelerator.mixed_precision, "device": accelerator.device.type,
            "zero_stage": accelerator.state.deepspeed_plugin.zero_stage if deepspeed else None}

def model_parts(accelerator: Accelerator, model, optimizer) -> list[tuple[str, Stateful, bool]]:
    """The model's and optimizer's parts of the resumable state, as (name, part, per process).

    Without DeepSpeed every process holds the same model and optimizer, saved once. Under ZeRO each
    process saves its own optimizer shard with the fp32 master weights; under ZeRO-3 these also restore
    the (partitioned) model, under ZeRO-1/2 the full model is saved besides. fp16's loss scaler is saved too.
    """
    zero_stage = launch_info(accelerator)["zero_stage"]
    parts = []
    if zero_stage != 3:
        parts.append(("model", accelerator.unwrap_model(model), False))
    if zero_stage is None:
        parts.append(("optimizer", optimizer, False))
    else:
        parts.append(("zero_optimizer", ZeroOptimizerState(model, accelerator.process_index,
                                                           accelerator.num_processes), True))
    if accelerator.scaler is not None:
        parts.append(("grad_scaler", accelerator.scaler, False))
    return parts

class ZeroOptimizerState:
    """This process's shard of a DeepSpeed ZeRO optimizer (fp32 master weights and optimizer moments),
    plus the engine's step counters, stored without pickle.

    DeepSpeed's own save_checkpoint writes the same state with torch.save; here its state_dict is taken
    apart into plain data: the loss scaler object becomes its numeric fields (restored into the engine's
    own scaler) and the parameter-slice map, only used by DeepSpeed's universal checkpoints, is dropped.
    Loading puts each process's shard back into the same place, so a resume needs the same number of
    processes and the same ZeRO stage (the run checks both before loading).
    """

    _ENGINE_COUNTERS = ("global_steps", "global_samples", "micro_steps", "skipped_steps")

    def __init__(self, engine, process_index: int, num_processes: int):
        self.engine, self.process_index, self.num_processes = engine, process_index, num_processes

    def state_dict(self) -> dict:
        with self._checkpoint_event():
            optimizer_state = dict(self.engine.optimizer.state_dict())
        scaler = optimizer_state.pop("loss_scaler")
        optimizer_state.pop("param_slice_mappings", None)
        return {"optimizer": optimizer_state, "loss_scaler": _plain_fields(scaler),
                "engine": {name: getattr(self.engine, name) for name in self._ENGINE_COUNTERS}}

    def load_state_dict(self, state: dict) -> None:
        optimizer = self.engine.optimizer
        for name, value in state["loss_scaler"].items():
            current = getattr(optimizer.loss_scaler, name, None)
            if isinstance(current, torch.Tensor):
                current.copy_(value)
            elif hasattr(optimizer.loss_scaler, name):
                setattr(optimizer.loss_scaler, name, value)
        shard = dict(state["optimizer"], loss_scaler=optimizer.loss_scaler)
        shards = [None] * self.num_processes
        shards[self.process_index] = shard
        with self._checkpoint_event():
            optimizer.load_state_dict(shards, load_optimizer_states=True, load_from_fp32_weights=True)
        for name, value in state["engine"].items():
            setattr(self.engine, name, value)

    @contextlib.contextmanager
    def _checkpoint_event(self):
        """What DeepSpeed's engine does around its own checkpoint save and load: under ZeRO-3, partition
        every parameter first and afterwards gather again the small ones kept whole on every process."""
        optimizer = self.engine.optimizer
        if hasattr(optimizer, "checkpoint_event_prologue"):
            optimizer.checkpoint_event_prologue()
        yield
        if hasattr(optimizer, "checkpoint_event_epilogue"):
            optimizer.checkpoint_event_epilogue()

def _plain_fields(obj: Any) -> dict:
    """The attributes of `obj` that are plain numbers, strings, dtypes or tensors (a loss scaler's state)."""
    return {name: value for name, value in vars(obj).items()
            if value is None or isinstance(value, (bool, int, float, str, torch.dtype, torch.Tensor))}

def export(accelerator: Accelerator, model, tokenizer, output: Path, recipe_text: str, metrics: dict) -> None:
    """Export the model once, from the main process, with every weight (gathered from all processes
    under ZeRO-3, which makes this a step every process takes)."""
    accelerator.wait_for_everyone()
    weights = accelerator.get_state_dict(model)
    if accelerator.is_main_process:
        exported.export_model(accelerator.unwrap_model(model), tokenizer, output, recipe=recipe_text,
                              metrics=metrics, state_dict=weights)


def weights_digest(model: torch.nn.Module) -> bytes:
    """SHA-256 of every weight's name and bytes."""
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    return digest.digest()

def verify_replicas(accelerator: Accelerator, model) -> None:
    """Every process must end with the same weights (DDP and ZeRO-1/2 keep whole copies); ZeRO-3
    shards them, so there is nothing to compare."""
    if accelerator.num_processes == 1 or launch_info(accelerator)["zero_stage"] == 3:
        return
    digest = weights_digest(accelerator.unwrap_model(model))
    mine = torch.tensor(list(digest), dtype=torch.int64, device=accelerator.device)
    everyone = accelerator.gather(mine[None]).cpu()  # (processes, 32)
    differing = [i for i in range(everyone.shape[0]) if not torch.equal(everyone[i], everyone[0])]
    if differing:
        raise MtbertError(f"process(es) {', '.join(map(str, differing))} ended with weights that differ from "
                          f"process 0's; the exported model is process 0's")
    accelerator.print(f"weights identical on all {accelerator.num_processes} processes (sha256 {digest.hex()[:16]})")
