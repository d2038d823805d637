"""A run built from its recipe, in small named steps, before the loop (loop.py) trains it.

    recipe -> accelerator, output folder -> data (tokeniser, tokenised splits) -> model -> task streams
           -> objectives (one per stage, objectives/registry.py) -> stages -> optimizer and learning-rate
           schedule -> prepared by Accelerate -> dev loaders -> resumable state (restored when resuming)
           -> log, trackers, guards: one `Run`

The steps run in the order their random numbers are drawn (the seed is set once, before the data), so
the same recipe and seed give the same run.
"""

from __future__ import annotations

import dataclasses
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from mtbert import speed
from mtbert.config import PromptConfig, Recipe, dump_recipe, sharing_spec
from mtbert.data.loading import load_split, load_tokenizer, require_labels
from mtbert.data.reading import split_path
from mtbert.data.streamed import StreamedSplit, StreamedTaskStream
from mtbert.data.streams import StreamPositions, TaskStream
from mtbert.errors import MtbertError
from mtbert.exported import LoadedModel
from mtbert.inference import eval_loader
from mtbert.model.accounting import format_counts, parameter_counts
from mtbert.model.bert import BertConfig, BertModel
from mtbert.model.heads import HeadSpec
from mtbert.model.multitask import MultiTaskConfig, MultiTaskModel, TaskHeadSpec
from mtbert.model.plan import SharingPlanError
from mtbert.objectives.base import LossMeter, Objective, ObjectiveContext, TrainingModel
from mtbert.objectives.registry import build_objectives
from mtbert.pretrained import load_encoder
from mtbert.tasks import Task, resolve_tasks
from mtbert.training import adding, faults, launch, machines
from mtbert.training.checkpoints import Processes, find_checkpoint
from mtbert.training.guards import NonFiniteGuard, StopVote
from mtbert.training.optim import build_optimizer
from mtbert.training.run_folder import begin_output, claim
from mtbert.training.stages import LearningRateSchedule, Stage, plan_stages
from mtbert.training.state import Progress, TrainingState, check_resumable, training_state
from mtbert.training.tracking import RunLog, check_trackers, hyperparameters, project_name

if TYPE_CHECKING:
    from accelerate import Accelerator

# ---------------------------------------------------------------------------------------------
# The model and its data from a recipe (also what bench, validate and the tests build)

def head_spec(task: Task) -> TaskHeadSpec:
    encoding = "cross" if task.prompt is not None else "single" if not task.is_pair else task.pair_encoding
    head = task.head
    return TaskHeadSpec(kind=task.kind, num_outputs=task.num_outputs, pooler=task.pooler, encoding=encoding,
                        siamese_regression=task.siamese_regression, label_range=task.label_range,
                        head=HeadSpec(type=head.type, layers=head.layers, hidden_size=head.hidden_size,
                                      activation=head.activation, dropout=head.dropout, style=head.style),
                        pooler_options=task.pooler_options)

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

def build_model(recipe: Recipe, tasks: dict[str, Task], tokenizer,
                trained: LoadedModel | None = None) -> MultiTaskModel:
    """The recipe's model; with `trained` (model.add_to), that model extended by the recipe's new tasks."""
    if trained is not None:
        return adding.extended_model(recipe, {name: head_spec(t) for name, t in tasks.items()}, trained)
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
            if split == "train" and task.streaming:  # read line by line while training (data/streamed.py)
                store[name] = StreamedSplit(task, split_path(task, "train", recipe.data_dir))
                store[name].check()
                continue
            data, tokenized = load_split(task, split, recipe.data_dir, tokenizer, recipe.model.max_length,
                                         report=say, progress=progress, workers=recipe.data.workers)
            require_labels(data, task, split)
            store[name] = tokenized
    return RunData(tasks, tokenizer, train, dev)

def stored_recipe(recipe: Recipe, tasks: dict[str, Task]) -> Recipe:
    """The recipe as a checkpoint keeps it: `prompt: builtin` written out as its template, so a model
    keeps predicting with the exact text it was trained on if a built-in template changes later."""
    frozen = dataclasses.replace(recipe, tasks=dict(recipe.tasks))
    for name, cfg in recipe.tasks.items():
        if cfg.prompt == "builtin":
            template = tasks[name].prompt
            frozen.tasks[name] = dataclasses.replace(cfg, prompt=PromptConfig(template.question, template.context))
    return frozen

# ---------------------------------------------------------------------------------------------
# The run


@dataclass
class Run:
    """Everything a run is made of once set up; loop.fit trains it."""

    recipe: Recipe
    accelerator: Accelerator
    processes: Processes
    output: Path
    resume_from: Path | None
    "The checkpoint this run continues from; None for a fresh run."
    data: RunData
    model: Any
    "The model as Accelerate prepared it (wrapped for several processes, or a DeepSpeed engine)."
    trainee: TrainingModel
    "The same, as objectives see it."
    optimizer: Any
    schedule: LearningRateSchedule
    stages: list[Stage]
    dev_loaders: dict
    state: TrainingState
    progress: Progress
    losses: LossMeter
    "Each task's loss since the last log record."
    run_info: dict
    "What a checkpoint records of the run, for the resume check: recipe, launch, training data sizes."
    recipe_text: str
    "The resolved recipe, as outputs and checkpoints store it."
    log: RunLog
    guard: NonFiniteGuard
    stop_vote: StopVote
    saved: Path | None = None
    "The last checkpoint this run saved."

    @property
    def steps(self) -> int:
        return self.stages[-1].end

    @property
    def checkpoints(self) -> Path:
        return self.output / "checkpoints"


def setup(recipe: Recipe, resume: str | None = None, overwrite: bool = False) -> Run:
    """Build a run; resume: `latest`, `auto` or a checkpoint folder to continue from (its state restored)."""
    check_trackers(recipe.tracking.trackers)
    accelerator = launch.make_accelerator(recipe)
    machines.check_machines(recipe, accelerator)
    faults.arm(accelerator.process_index)
    output = Path(recipe.output_dir)
    resume_from = _setup_output(output, accelerator, resume, overwrite)
    launch.seed_everything(recipe.seed)
    trained = adding.trained_model(recipe)  # model.add_to: the run trains new tasks on that model
    if trained is not None:
        recipe = adding.extended_recipe(recipe, trained)
    with accelerator.main_process_first():
        data = load_run_data(recipe, accelerator)
    model = speed.prepare_model(build_model(recipe, data.tasks, data.tokenizer, trained), recipe.speed)
    counts = parameter_counts(model)
    accelerator.print(format_counts(counts))
    streams = _setup_streams(recipe, data, accelerator)
    objectives = build_objectives(_objective_context(recipe, data, streams, model, accelerator))
    stages = plan_stages(recipe, objectives, recipe.train.grad_accum)
    accelerator.print(_describe(recipe, stages))
    optimizer, schedule = _setup_optimizer(recipe, model, stages)
    model, optimizer = launch.prepare(accelerator, recipe, model, optimizer)
    dev_loaders = _setup_dev_loaders(recipe, data, accelerator)
    progress, losses = Progress(), LossMeter(accelerator.device)
    state = training_state(launch.model_parts(accelerator, model, optimizer), scheduler=schedule,
                           streams=StreamPositions(streams), progress=progress, losses=losses,
                           objective_parts=_objective_parts(stages))
    run_info = {"recipe": dump_recipe(stored_recipe(recipe, data.tasks)), "launch": launch.launch_info(accelerator),
                "train_examples": {name: ds.identity() if isinstance(ds, StreamedSplit) else len(ds)
                                   for name, ds in data.train.items()}}
    processes = launch.processes(accelerator)
    if resume_from:
        check_resumable(resume_from, run_info)
        state.load(resume_from, processes)
        accelerator.print(f"resumed from {resume_from}: step {progress.step} of {stages[-1].end}")
    return Run(recipe=recipe, accelerator=accelerator, processes=processes, output=output, resume_from=resume_from,
               data=data, model=model, trainee=launch.training_model(accelerator, model), optimizer=optimizer,
               schedule=schedule, stages=stages, dev_loaders=dev_loaders,
               state=state, progress=progress, losses=losses, run_info=run_info, recipe_text=run_info["recipe"],
               log=_setup_log(recipe, accelerator, output, counts, progress, resume_from),
               guard=NonFiniteGuard(list(data.tasks), accelerator.device, distributed=accelerator.num_processes > 1),
               stop_vote=StopVote(accelerator.num_processes))


def _setup_output(output: Path, accelerator: Accelerator, resume: str | None, overwrite: bool) -> Path | None:
    """The checkpoint to resume from, if any; a fresh run checks that output_dir may be written into."""
    resume_from = None
    if resume:
        resume_from = find_checkpoint(resume, output / "checkpoints",
                                      say=lambda line: accelerator.print(line, file=sys.stderr))
    if resume_from is None:
        claim(output, overwrite=overwrite)
    return resume_from


def _setup_streams(recipe: Recipe, data: RunData, accelerator: Accelerator) -> dict[str, TaskStream]:
    """Each task's training batches, in an order that follows from the seed alone."""
    pad_id, streams = data.tokenizer.pad_token_id or 0, {}
    for i, (name, task) in enumerate(data.tasks.items()):
        if task.streaming:
            streams[name] = StreamedTaskStream(
                data.train[name], task.batch_size, seed=recipe.seed, stream_id=i, pad_id=pad_id,
                tokenizer=data.tokenizer, max_length=recipe.model.max_length, buffer_size=recipe.data.stream_buffer,
                num_processes=accelerator.num_processes, process_index=accelerator.process_index)
            continue
        streams[name] = TaskStream(data.train[name], task.batch_size, seed=recipe.seed, stream_id=i, pad_id=pad_id,
                                   num_processes=accelerator.num_processes, process_index=accelerator.process_index,
                                   max_examples=task.max_train_examples, class_balanced=task.class_balanced,
                                   length_pool=recipe.speed.length_pool)
    return streams


def _objective_context(recipe: Recipe, data: RunData, streams: dict[str, TaskStream], model: MultiTaskModel,
                       accelerator: Accelerator) -> ObjectiveContext:
    return ObjectiveContext(recipe=recipe, tasks=data.tasks, streams=streams, train=data.train,
                            tokenizer=data.tokenizer, model=model, device=accelerator.device,
                            process_index=accelerator.process_index, num_processes=accelerator.num_processes,
                            deepspeed=launch.is_deepspeed(accelerator), loss_scaling=launch.loss_scaling(accelerator),
                            say=accelerator.print)


def _unique_objectives(stages: list[Stage]) -> list[Objective]:
    return list({id(stage.objective): stage.objective for stage in stages}.values())


def _objective_parts(stages: list[Stage]) -> dict:
    return {name: part for objective in _unique_objectives(stages) for name, part in objective.state_parts().items()}


def _describe(recipe: Recipe, stages: list[Stage]) -> str:
    """The run's plan, printed before training: one line, or one per stage."""
    if recipe.stages:
        return "\n".join(stage.describe() for stage in stages)
    stage = stages[0]
    objective = stage.objective.describe(stage)
    eval_every = recipe.eval.every_steps or stage.steps_per_epoch
    own = [f"{name} {task.eval_every or 'at the end'}" for name, task in recipe.tasks.items()
           if task.eval_every is not None]
    return (f"tasks: {', '.join(stage.tasks)} | sampling {recipe.sampling.strategy} | {stage.steps_per_epoch} steps "
            f"per epoch | {stage.steps} steps | eval every {eval_every} steps"
            + (f" ({', '.join(own)})" if own else "") + ("" if objective == "supervised" else f" | {objective}"))


def _setup_optimizer(recipe: Recipe, model: MultiTaskModel,
                     stages: list[Stage]) -> tuple[torch.optim.Optimizer, LearningRateSchedule]:
    """The optimizer over the model's trainable parameters (and any an objective learns), and the schedule
    that sets its learning rate at every step (the rate given here is replaced before the first step)."""
    groups = optimizer_groups(model, recipe.train.weight_decay)
    learned = [p for objective in _unique_objectives(stages) for p in objective.parameters()]
    if learned:
        groups.append({"params": learned, "weight_decay": 0.0})
    optimizer = build_optimizer(recipe.train.optimizer, groups, lr=stages[0].lr, betas=recipe.train.betas,
                                eps=recipe.train.eps, **speed.optimizer_options(recipe.speed, recipe.train.optimizer))
    return optimizer, LearningRateSchedule(optimizer, stages, reference_lr=recipe.train.lr)


def _setup_dev_loaders(recipe: Recipe, data: RunData, accelerator: Accelerator) -> dict:
    """Each task's dev batches (its first eval_examples, default eval.max_examples, if set), split across
    processes."""
    pad_id = data.tokenizer.pad_token_id or 0
    budgets = {name: data.tasks[name].eval_examples for name in data.dev}
    return {name: accelerator.prepare(eval_loader(ds.select(range(min(len(ds), budgets[name])))
                                                  if budgets[name] else ds,
                                                  recipe.eval.batch_size, pad_id,
                                                  max_tokens=recipe.speed.eval_max_tokens))
            for name, ds in data.dev.items()}


def _setup_log(recipe: Recipe, accelerator: Accelerator, output: Path, counts: dict, progress: Progress,
               resume_from: Path | None) -> RunLog:
    """The JSONL log (cut back to the checkpoint's length when resuming) and the recipe's trackers."""
    if recipe.tracking.trackers:
        accelerator.init_trackers(project_name(recipe), config=hyperparameters(recipe))
    return RunLog(output / "train_log.jsonl", enabled=accelerator.is_main_process,
                  keep_bytes=progress.log_bytes if resume_from else None,
                  trackers=accelerator.log if recipe.tracking.trackers else None,
                  before_first_write=lambda: begin_output(output, recipe.name, counts, fresh=resume_from is None))
