"""The training loop, in plain Accelerate idiom: prepare, accumulate, backward, clip on sync, step.

Runs the same under `accelerate launch` (any number of processes) and as a plain `mtbert train`.
Only this module and checkpoint.py know about Accelerate; rank checks appear only where files are
written.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import sys
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
import yaml
from accelerate import Accelerator, DistributedDataParallelKwargs
from accelerate.utils import (
    DistributedType,
    InitProcessGroupKwargs,
    is_mlu_available,
    is_npu_available,
    is_xpu_available,
    set_seed,
)
from tqdm.auto import tqdm

from mtbert import exported, files, speed
from mtbert.config import PromptConfig, Recipe, dump_recipe, sharing_spec
from mtbert.data.loading import load_split, load_tokenizer, require_labels
from mtbert.data.streams import TaskStream
from mtbert.errors import MtbertError
from mtbert.inference import eval_loader, run_inference, score
from mtbert.metrics import overall_score
from mtbert.model.accounting import format_counts, parameter_counts
from mtbert.model.bert import BertConfig, BertModel
from mtbert.model.heads import HeadSpec
from mtbert.model.multitask import MultiTaskConfig, MultiTaskModel, TaskHeadSpec
from mtbert.model.plan import SharingPlanError
from mtbert.objectives.contrastive import (
    TripletError,
    TripletStream,
    build_triplets,
    contrastive_loss,
    task_sentences,
    tokenize_triplets,
)
from mtbert.objectives.smart import BetaSchedule, MomentumTeacher, adversarial_loss, proximal_loss
from mtbert.objectives.supervised import LOSSES
from mtbert.pretrained import load_encoder
from mtbert.tasks import Task, resolve_tasks
from mtbert.training import faults, run_folder
from mtbert.training.checkpoints import (
    RESUME_MAY_CHANGE,
    Processes,
    RandomState,
    StopSignals,
    TrainingInterrupted,
    TrainingState,
    ZeroOptimizerState,
    find_checkpoint,
    first_difference,
    latest_checkpoint,
    prune,
    read_manifest,
)
from mtbert.training.optim import build_optimizer
from mtbert.training.stages import Stage, plan_stages, stage_at, stage_configs
from mtbert.training.tracking import check_trackers, hyperparameters, logging_dir, project_name, tracker_values

# ---------------------------------------------------------------------------------------------
# Building the model from a recipe


def head_spec(task: Task) -> TaskHeadSpec:
    encoding = "cross" if task.prompt is not None else "single" if not task.is_pair else task.pair_encoding
    head = task.head
    return TaskHeadSpec(kind=task.kind, num_outputs=task.num_outputs, pooler=task.pooler, encoding=encoding,
                        siamese_regression=task.siamese_regression, label_range=task.label_range,
                        head=HeadSpec(type=head.type, layers=head.layers, hidden_size=head.hidden_size,
                                      activation=head.activation, dropout=head.dropout, style=head.style))


def build_encoder(recipe: Recipe, tokenizer) -> BertModel:
    model_cfg = recipe.model
    if model_cfg.init == "random":
        size = model_cfg.size
        config = BertConfig(vocab_size=len(tokenizer), hidden_size=size.hidden_size,
                            num_hidden_layers=size.num_layers, num_attention_heads=size.num_heads,
                            intermediate_size=size.intermediate_size,
                            max_position_embeddings=size.max_position_embeddings,
                            pad_token_id=tokenizer.pad_token_id or 0)
        encoder = BertModel(config)
    else:
        encoder = load_encoder(model_cfg.init, allow_pickle=model_cfg.allow_pickle)
        if len(tokenizer) > encoder.config.vocab_size:
            raise MtbertError(f"model.tokenizer has {len(tokenizer)} tokens but the encoder {model_cfg.init} "
                              f"has only {encoder.config.vocab_size} word embeddings")
    if model_cfg.dropout is not None:
        # Dropout rates are fixed when modules are built: rebuild with the new rates, keep the weights.
        rebuilt = BertModel(dataclasses.replace(encoder.config, hidden_dropout_prob=model_cfg.dropout,
                                                attention_probs_dropout_prob=model_cfg.dropout))
        rebuilt.load_state_dict(encoder.state_dict())
        encoder = rebuilt
    if model_cfg.max_length > encoder.config.max_position_embeddings:
        raise MtbertError(f"model.max_length {model_cfg.max_length} exceeds the encoder's "
                          f"{encoder.config.max_position_embeddings} positions")
    return encoder


def build_model(recipe: Recipe, tasks: dict[str, Task], tokenizer) -> MultiTaskModel:
    encoder = build_encoder(recipe, tokenizer)
    try:  # the plan meets the encoder's real layer count here when model.init is a hub name
        config = MultiTaskConfig(encoder=encoder.config, tasks={name: head_spec(t) for name, t in tasks.items()},
                                 sharing=sharing_spec(recipe.model.sharing))
    except SharingPlanError as e:
        raise MtbertError(str(e)) from None
    return MultiTaskModel(config, encoder)


def optimizer_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    """Weight decay on weight matrices only; biases and LayerNorm parameters are not decayed."""
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        (no_decay if param.ndim < 2 or "LayerNorm" in name else decay).append(param)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


# ---------------------------------------------------------------------------------------------
# The run

PARAMETERS_FILE = "parameters.json"


@dataclass
class RunData:
    tasks: dict[str, Task]
    tokenizer: object
    train: dict
    dev: dict


def load_run_data(recipe: Recipe, accelerator: Accelerator | None = None) -> RunData:
    """Tokenizer and tokenised train/dev splits for every task; problems surface before any training."""
    say = accelerator.print if accelerator else print
    tasks = resolve_tasks(recipe)
    tokenizer = load_tokenizer(recipe.model.tokenizer or recipe.model.init)
    train, dev = {}, {}
    progress = accelerator is None or accelerator.is_local_main_process
    for name, task in tasks.items():
        for split, store in (("train", train), ("dev", dev)):
            data, tokenized = load_split(task, split, recipe.data_dir, tokenizer, recipe.model.max_length,
                                         report=say, progress=progress)
            require_labels(data, task, split)
            store[name] = tokenized
    return RunData(tasks, tokenizer, train, dev)


def train(recipe: Recipe, resume: str | None = None, overwrite: bool = False) -> dict:
    """Train, evaluate on dev as the recipe says, export the best (or last) model; return its metrics.

    A resumable checkpoint is saved every `train.checkpoint_every` steps, at the end, and when SIGTERM
    or SIGINT stops the run (which then raises TrainingInterrupted). resume: `latest`, `auto` or a
    checkpoint folder to continue from; the run ends as if it had never stopped (mtbert/resume.py).
    A fresh run refuses an output_dir holding files mtbert did not write unless `overwrite`, and touches an
    earlier run's folder only once it produces something (mtbert/run_folder.py).
    """
    check_trackers(recipe.tracking.trackers)
    accelerator = make_accelerator(recipe)
    processes = Processes(accelerator.process_index, accelerator.num_processes, accelerator.wait_for_everyone)
    faults.arm(accelerator.process_index)
    output = Path(recipe.output_dir)
    checkpoints = output / "checkpoints"
    resume_from = None
    if resume:
        resume_from = find_checkpoint(resume, checkpoints, say=lambda line: accelerator.print(line, file=sys.stderr))
    if resume_from is None:
        run_folder.claim(output, overwrite=overwrite)
    set_seed(recipe.seed)
    with accelerator.main_process_first():
        data = load_run_data(recipe, accelerator)
    tasks, tokenizer = data.tasks, data.tokenizer
    model = speed.prepare_model(build_model(recipe, tasks, tokenizer), recipe.speed)
    counts = parameter_counts(model)
    accelerator.print(format_counts(counts))

    pad_id = tokenizer.pad_token_id or 0
    streams = {name: TaskStream(data.train[name], task.batch_size, seed=recipe.seed, stream_id=i, pad_id=pad_id,
                                num_processes=accelerator.num_processes, process_index=accelerator.process_index,
                                max_examples=task.max_train_examples, class_balanced=task.class_balanced,
                                length_pool=recipe.speed.length_pool)
               for i, (name, task) in enumerate(tasks.items())}
    triplet_streams = build_triplet_streams(recipe, data, accelerator, pad_id)
    accum = recipe.train.grad_accum
    stages = plan_stages(recipe, streams, triplet_streams, accum)
    steps = stages[-1].end
    eval_every = recipe.eval.every_steps or stages[0].steps_per_epoch
    accelerator.print(f"tasks: {', '.join(tasks)} | sampling {recipe.sampling.strategy} | "
                      f"{stages[0].steps_per_epoch} steps per epoch | {steps} steps | eval every {eval_every} steps"
                      + (f" | SMART on {', '.join(stages[0].smart)}" if stages[0].smart else "")
                      if not recipe.stages else "\n".join(stage.describe() for stage in stages))
    teacher = smart_teacher(model, stages, accelerator)

    optimizer = build_optimizer(recipe.train.optimizer, optimizer_groups(model, recipe.train.weight_decay),
                                lr=recipe.train.lr, betas=recipe.train.betas, eps=recipe.train.eps,
                                **speed.optimizer_options(recipe.speed, recipe.train.optimizer))
    # Stepped by hand once per optimizer step: the schedule is counted in optimizer steps whatever the
    # number of processes, so it is not handed to accelerator.prepare (which would step it per process).
    # Each stage has its own warm-up and linear decay at its own peak learning rate.
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: stage_at(stages, step).lr_factor(step, recipe.train.lr))
    if accelerator.distributed_type == DistributedType.DEEPSPEED:
        configure_deepspeed(accelerator, recipe)
    model, optimizer = accelerator.prepare(model, optimizer)
    if teacher is not None:
        teacher.model.to(accelerator.device)
    dev_loaders = {name: accelerator.prepare(eval_loader(ds.select(range(min(len(ds), recipe.eval.max_examples)))
                                                         if recipe.eval.max_examples else ds,
                                                         recipe.eval.batch_size, pad_id,
                                                         max_tokens=recipe.speed.eval_max_tokens))
                   for name, ds in data.dev.items()}

    recipe_text = dump_recipe(stored_recipe(recipe, tasks))
    progress, losses, smart_losses = Progress(), LossMeter(accelerator.device), LossMeter(accelerator.device)
    extra_state = {"triplet_streams": StreamPositions(triplet_streams)} if triplet_streams else {}
    if any(stage.smart for stage in stages):
        extra_state["smart_losses"] = smart_losses
    if teacher is not None:
        extra_state["smart_teacher"] = teacher
    state = training_state(accelerator, model, optimizer, scheduler, streams, progress, losses, extra_state)
    run_info = {"recipe": recipe_text, "launch": launch_info(accelerator),
                "train_examples": {name: len(ds) for name, ds in data.train.items()}}
    if resume_from:
        check_resumable(resume_from, run_info)
        state.load(resume_from, processes)
        accelerator.print(f"resumed from {resume_from}: step {progress.step} of {steps}")
    if recipe.tracking.trackers:
        accelerator.init_trackers(project_name(recipe), config=hyperparameters(recipe))
    log = RunLog(output / "train_log.jsonl", enabled=accelerator.is_main_process,
                 keep_bytes=progress.log_bytes if resume_from else None,
                 trackers=accelerator.log if recipe.tracking.trackers else None,
                 before_first_write=lambda: begin_output(output, recipe.name, counts, fresh=resume_from is None))
    zero_stage = run_info["launch"]["zero_stage"]
    guard = NonFiniteGuard(list(tasks), accelerator.device, distributed=accelerator.num_processes > 1)
    stop_vote = StopVote(accelerator.num_processes)
    tokens = 0
    started = time.perf_counter()
    bar = tqdm(total=steps, initial=progress.step, desc="train", disable=not accelerator.is_local_main_process,
               dynamic_ncols=True)
    model.train()
    saved = None
    with StopSignals() as signals:
        for step in range(progress.step, steps):
            stage = stage_at(stages, step)
            if step == stage.start and teacher is not None and stage.uses_teacher:
                teacher.reset(accelerator.unwrap_model(model))  # the proximal term starts from the weights of now
            nonfinite = None
            for micro in range(accum):
                with accelerator.accumulate(model):
                    loss = torch.zeros((), device=accelerator.device)
                    for name in stage.tasks_at(step, micro, accum):
                        host_batch = (triplet_streams if stage.contrastive else streams)[name].next_batch()
                        tokens += speed.real_tokens(host_batch)  # counted on the host: no wait for the device
                        batch = {k: v.to(accelerator.device, non_blocking=True) for k, v in host_batch.items()}
                        if stage.contrastive:
                            vectors = model(name, batch, vectors=True)  # (3B, H): anchors, positives, negatives
                            task_loss = contrastive_loss(stage.objective, vectors, scale=recipe.contrastive.scale,
                                                         margin=recipe.contrastive.margin)
                            regulariser = 0.0
                        else:
                            outputs = model(name, batch)
                            task_loss = LOSSES[tasks[name].loss](outputs, batch["labels"])
                            regulariser = smart_terms(accelerator, model, teacher, stage, tasks[name], batch, outputs,
                                                      smart_losses)
                        task_loss = faults.loss(step + 1, task_loss)
                        term = tasks[name].loss_weight * (task_loss + regulariser)  # what backward gets of it
                        guard.observe(step + 1, name, term)
                        loss = loss + term
                        losses.add(name, task_loss)
                    accelerator.backward(loss)
                    if accelerator.sync_gradients:
                        if zero_stage == 3:
                            clear_zero3_gradients(model)  # DeepSpeed stepped inside backward
                        # The clipped norm tells non-finite gradients of finite losses; fp16's loss scaler and
                        # DeepSpeed deal with theirs (and the scaler must not unscale a step that is then skipped).
                        watch_gradients = recipe.train.grad_clip and zero_stage is None and accelerator.scaler is None
                        if watch_gradients:
                            guard.observe_gradients(step + 1, accelerator.clip_grad_norm_(model.parameters(),
                                                                                          recipe.train.grad_clip))
                        # Skipping needs the answer now (one host sync per step); stopping reads it lazily below.
                        nonfinite = guard.found() if recipe.train.on_nonfinite == "skip" else None
                        if recipe.train.grad_clip and not watch_gradients and nonfinite is None:
                            accelerator.clip_grad_norm_(model.parameters(), recipe.train.grad_clip)
                    if nonfinite is None:
                        optimizer.step()
                    optimizer.zero_grad(set_to_none=True)
            if teacher is not None and stage.uses_teacher and nonfinite is None:
                beta = BetaSchedule(recipe.smart.beta, recipe.smart.beta_final, recipe.smart.beta_switch)
                teacher.update(accelerator.unwrap_model(model), beta.at(step - stage.start, stage.steps))
            scheduler.step()
            bar.update(1)
            done = progress.step = step + 1
            if nonfinite is not None:
                progress.skipped_steps.append(done)
                log.write({"step": done, "skipped": guard.describe(nonfinite[1])})
                accelerator.print(f"step {done}: {guard.describe(nonfinite[1])}; step skipped")
                guard.reset()
            log_due = done % recipe.train.log_every == 0 or done == steps
            eval_due = done == stage.end or (done % recipe.eval.every_steps == 0 if recipe.eval.every_steps
                                             else (done - stage.start) % stage.steps_per_epoch == 0)
            save_due = done == steps or (recipe.train.checkpoint_every and done % recipe.train.checkpoint_every == 0)
            stop_signal = stop_vote.agree(signals.received)
            if log_due or eval_due or save_due or stop_signal:
                # Only this run's checkpoints: an earlier run's in a folder not yet taken over are no way back.
                guard.stop_if_found(latest_checkpoint(checkpoints) if resume_from or saved else None)
            if log_due:
                means = losses.means()
                elapsed = time.perf_counter() - started
                bar.set_postfix({n: f"{v:.3f}" for n, v in means.items()})
                record = {"step": done, "lr": scheduler.get_last_lr()[0], "loss": means}
                if stage.smart:
                    record["smart_loss"] = smart_losses.means()  # adversarial and proximal terms, per task
                if recipe.stages:
                    record["stage"] = stage.name
                if stage.sampling.strategy == "annealed":  # p(task) moves over the run: log where it stands
                    record["task_p"] = stage.probabilities_at(step)
                log.write(record | {"tokens_per_s": tokens * accelerator.num_processes / elapsed, "elapsed_s": elapsed})
            if eval_due:
                metrics = evaluate_dev(model, tasks, dev_loaders, accelerator)
                log.write({"step": done, "dev": metrics})
                accelerator.print(f"step {done}: dev " + format_scores(metrics))
                if not recipe.eval.keep_best or replaces_best(metrics["overall"], progress.best):
                    progress.best = metrics | {"step": done}
                    export(accelerator, model, tokenizer, output, recipe_text, progress.best)
            if save_due or stop_signal:
                progress.log_bytes = log.size()
                saved = state.save(checkpoints, done, processes, run_info)
                if accelerator.is_main_process:
                    prune(checkpoints, recipe.train.keep_checkpoints)
            faults.after_step(done)
            if stop_signal:
                bar.close()
                raise TrainingInterrupted(stop_signal, done, saved)
    bar.close()
    if accelerator.device.type == "cuda":  # for mtbert sweep: peak GPU memory, which only this process can see
        log.write({"step": steps, "cuda_max_memory_allocated": torch.cuda.max_memory_allocated(accelerator.device)})
    accelerator.wait_for_everyone()
    verify_replicas(accelerator, model)
    accelerator.end_training()
    best = progress.best
    accelerator.print(f"exported the {'best' if recipe.eval.keep_best else 'last'} model "
                      f"(step {best['step']}, overall {best['overall']:.4f}) to {output}")
    return best


def build_triplet_streams(recipe: Recipe, data: RunData, accelerator: Accelerator,
                          pad_id: int) -> dict[str, TripletStream]:
    """Anchor/positive/negative streams of the tasks that contrastive stages train on (none without one)."""
    names = list(dict.fromkeys(name for config in stage_configs(recipe) if config.objective != "supervised"
                               for name in config.tasks or recipe.tasks))
    sentences = {name: task_sentences(name, data.tasks[name].kind, data.train[name]) for name in names}
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
        task = data.tasks[name]
        streams[name] = TripletStream(tokenize_triplets(triplets, data.tokenizer, recipe.model.max_length),
                                      task.batch_size, seed=recipe.seed, stream_id=len(data.tasks) + i, pad_id=pad_id,
                                      num_processes=accelerator.num_processes, process_index=accelerator.process_index,
                                      max_examples=task.max_train_examples, length_pool=recipe.speed.length_pool)
        accelerator.print(f"{name}: {len(triplets)} anchor/positive/negative triplets")
    return streams


def smart_teacher(model: MultiTaskModel, stages: list[Stage], accelerator: Accelerator) -> MomentumTeacher | None:
    """SMART's momentum teacher when a stage uses the proximal term (made before the model is prepared)."""
    if any(stage.smart for stage in stages) and accelerator.distributed_type == DistributedType.DEEPSPEED:
        raise MtbertError("smart: SMART is not available under DeepSpeed (its extra forwards and teacher run on the "
                          "whole model); use DDP (accelerate_configs/multi_gpu.yaml) or switch smart off")
    return MomentumTeacher(model) if any(stage.uses_teacher for stage in stages) else None


def smart_terms(accelerator: Accelerator, model, teacher: MomentumTeacher | None, stage: Stage, task: Task,
                batch: dict, outputs: torch.Tensor, meter: LossMeter) -> torch.Tensor | float:
    """SMART's weighted adversarial and proximal terms for one task's batch (0 when the stage does not use
    SMART for it). The extra forwards run on the unwrapped model inside the autocast of mixed precision;
    their graph joins the training forward's, so one backward (and one DDP reduction) carries everything."""
    settings = stage.smart.get(task.name)
    if settings is None:
        return 0.0
    module = accelerator.unwrap_model(model)
    total = 0.0
    with accelerator.autocast():
        if settings.adv_weight:
            adversarial = adversarial_loss(module, task.name, task.kind, batch, outputs, settings)
            meter.add(f"{task.name}.adv", adversarial)
            total = total + settings.adv_weight * adversarial
        if settings.prox_weight:
            proximal = proximal_loss(task.kind, outputs, teacher.outputs(task.name, batch))
            meter.add(f"{task.name}.prox", proximal)
            total = total + settings.prox_weight * proximal
    return total


def stored_recipe(recipe: Recipe, tasks: dict[str, Task]) -> Recipe:
    """The recipe as a checkpoint keeps it: `prompt: builtin` written out as its template, so a model
    keeps predicting with the exact text it was trained on if a built-in template changes later."""
    frozen = dataclasses.replace(recipe, tasks=dict(recipe.tasks))
    for name, cfg in recipe.tasks.items():
        if cfg.prompt == "builtin":
            template = tasks[name].prompt
            frozen.tasks[name] = dataclasses.replace(cfg, prompt=PromptConfig(template.question, template.context))
    return frozen


def evaluate_dev(model, tasks: dict[str, Task], loaders: dict, accelerator: Accelerator) -> dict:
    results = {}
    for name, loader in loaders.items():
        prediction = run_inference(model, tasks[name], loader, device=accelerator.device,
                                   gather=accelerator.gather_for_metrics, progress=accelerator.is_local_main_process)
        results[name] = score(tasks[name], prediction)
    results["overall"] = overall_score({name: r["main"] for name, r in results.items()})
    return results


def replaces_best(overall: float, best: dict | None) -> bool:
    """Whether a dev evaluation with this overall score replaces the exported best (eval.keep_best).

    A higher score replaces a lower one (a tie keeps the earlier). A non-finite score (a correlation of
    constant predictions on a small dev set is NaN) never replaces a finite one, and a finite one always
    replaces a non-finite one: NaN compares false with everything, so a NaN best would otherwise block
    every later model. Among non-finite scores the later replaces the earlier, as without keep_best: a
    run that never scores finitely exports its last model."""
    if best is None or not math.isfinite(best["overall"]):
        return True
    return math.isfinite(overall) and overall > best["overall"]


def format_scores(metrics: dict) -> str:
    parts = []
    for name, values in metrics.items():
        if isinstance(values, dict):
            parts.append(f"{name} " + " ".join(f"{k} {v:.4f}" for k, v in values.items() if k != "main"))
    return " | ".join(parts) + f" | overall {metrics['overall']:.4f}"


def begin_output(output: Path, name: str, counts: dict, fresh: bool) -> None:
    """What a run does to its folder when it first produces something (not before: a run that fails early
    leaves an earlier run's folder as it was): a fresh run takes the folder over from an earlier run, then
    the parameter counts are written."""
    if fresh:
        run_folder.take_over(output, name)
    files.write_text_atomically(output / PARAMETERS_FILE, json.dumps(counts, indent=2) + "\n")


class RunLog:
    """The JSONL log every run writes: one record per logging step and per evaluation. With `trackers`
    (accelerator.log), each record also goes to the recipe's trackers, flattened (tracking.py).

    The file is opened at the first record, or when its size is first asked (right before a checkpoint
    is saved), not before; `before_first_write` runs then, once. keep_bytes: resuming, keep the log as
    it was at the checkpoint (what came after is written again); otherwise the log starts empty.
    A write that fails (a full disk) is an MtbertError naming the file."""

    def __init__(self, path: Path, enabled: bool, keep_bytes: int | None = None, trackers=None,
                 before_first_write: Callable[[], None] | None = None):
        self.path, self.enabled, self.trackers = path, enabled, trackers
        self.keep_bytes, self.before_first_write = keep_bytes, before_first_write
        self.started = False

    def start(self) -> None:
        if self.started or not self.enabled:
            return
        if self.before_first_write is not None:
            self.before_first_write()
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            if self.keep_bytes is None or not self.path.is_file():
                self.path.write_text("")
            else:
                with self.path.open("r+b") as f:
                    f.truncate(self.keep_bytes)
        except OSError as error:
            raise files.cannot_write(self.path, error) from None
        self.started = True

    def write(self, record: dict) -> None:
        if self.enabled:
            self.start()
            try:
                with self.path.open("a") as f:
                    f.write(files.json_text(record) + "\n")
            except OSError as error:
                raise files.cannot_write(self.path, error) from None
            if self.trackers is not None:
                self.trackers(tracker_values(record), step=record["step"])

    def size(self) -> int:
        if not self.enabled:
            return 0
        self.start()
        return self.path.stat().st_size


# ---------------------------------------------------------------------------------------------
# Processes, DeepSpeed, and the state a checkpoint saves


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
    deepspeed = accelerator.distributed_type == DistributedType.DEEPSPEED
    return {"num_processes": accelerator.num_processes, "distributed_type": str(accelerator.distributed_type.value),
            "mixed_precision": accelerator.mixed_precision, "device": accelerator.device.type,
            "zero_stage": accelerator.state.deepspeed_plugin.zero_stage if deepspeed else None}


@dataclass
class Progress:
    """Where the run stands, as a checkpoint saves it."""

    step: int = 0
    "Optimizer steps done."
    best: dict | None = None
    "Dev metrics (and step) of the model exported so far."
    log_bytes: int = 0
    "Length of train_log.jsonl at the checkpoint; a resume cuts off what was logged after it."
    skipped_steps: list[int] = field(default_factory=list)
    "Steps skipped for a non-finite loss (train.on_nonfinite: skip)."

    def state_dict(self) -> dict:
        return dataclasses.asdict(self)

    def load_state_dict(self, state: dict) -> None:
        for f in dataclasses.fields(self):
            setattr(self, f.name, state[f.name])


class LossMeter:
    """Per-task losses since the last log record, averaged at the next one."""

    def __init__(self, device: torch.device):
        self.device = device
        self.losses: dict[str, list[torch.Tensor]] = defaultdict(list)

    def add(self, task: str, loss: torch.Tensor) -> None:
        self.losses[task].append(loss.detach())

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


class StreamPositions:
    """Where each task's batch stream stands (its pass and position; the order follows from the seed)."""

    def __init__(self, streams: dict[str, TaskStream]):
        self.streams = streams

    def state_dict(self) -> dict:
        return {name: stream.state_dict() for name, stream in self.streams.items()}

    def load_state_dict(self, state: dict) -> None:
        for name, stream in self.streams.items():
            stream.load_state_dict(state[name])


def training_state(accelerator: Accelerator, model, optimizer, scheduler, streams: dict[str, TaskStream],
                   progress: Progress, losses: LossMeter, extra: dict | None = None) -> TrainingState:
    """Everything a checkpoint must hold for a resumed run to continue exactly (`extra`: more named parts).

    Without DeepSpeed every process holds the same model and optimizer, saved once. Under ZeRO each
    process saves its own optimizer shard with the fp32 master weights; under ZeRO-3 these also restore
    the (partitioned) model, under ZeRO-1/2 the full model is saved besides. Random states are per process.
    """
    state = TrainingState()
    zero_stage = launch_info(accelerator)["zero_stage"]
    if zero_stage != 3:
        state.add("model", accelerator.unwrap_model(model))
    if zero_stage is None:
        state.add("optimizer", optimizer)
    else:
        state.add("zero_optimizer", ZeroOptimizerState(model, accelerator.process_index, accelerator.num_processes),
                  per_process=True)
    if accelerator.scaler is not None:
        state.add("grad_scaler", accelerator.scaler)
    state.add("scheduler", scheduler)
    state.add("streams", StreamPositions(streams))
    state.add("progress", progress)
    state.add("losses", losses)
    for name, part in (extra or {}).items():  # the objectives' state: triplet streams, SMART's teacher
        state.add(name, part)
    state.add("rng", RandomState(), per_process=True)  # last: nothing restored after it may draw numbers
    return state


def check_resumable(folder: Path, run_info: dict) -> None:
    """Refuse to resume from a checkpoint whose run differs from this one in a way that matters."""
    saved = read_manifest(folder)["info"]
    difference = first_difference(yaml.safe_load(saved["recipe"]), yaml.safe_load(run_info["recipe"]))
    if difference:
        key, before, now = difference
        raise MtbertError(f"--resume {folder}: recipe key {key} was {before!r} in that run and is {now!r} now; "
                          f"resume with the same recipe (only {', '.join(sorted(RESUME_MAY_CHANGE))} may change)")
    for section in ("launch", "train_examples"):
        difference = first_difference(saved.get(section), run_info[section], section)
        if difference:
            key, before, now = difference
            what = "launch configuration" if section == "launch" else "training data"
            raise MtbertError(f"--resume {folder}: {key} was {before!r} in that run and is {now!r} now; "
                              f"resume with the same {what}")


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
