"""The training loop, in plain Accelerate idiom: prepare, accumulate, backward, clip on sync, step.

Runs the same under `accelerate launch` (any number of processes) and as a plain `mtbert train`.
Only this module and checkpoint.py know about Accelerate; rank checks appear only where files are
written.
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import torch
from accelerate import Accelerator, DistributedDataParallelKwargs
from accelerate.utils import set_seed
from tqdm.auto import tqdm

from mtbert import checkpoint, speed
from mtbert.config import PromptConfig, Recipe, dump_recipe
from mtbert.data.loading import load_split, load_tokenizer, require_labels
from mtbert.data.sampling import TaskSampler, total_steps
from mtbert.data.streams import TaskStream
from mtbert.errors import MtbertError
from mtbert.inference import eval_loader, run_inference, score
from mtbert.metrics import overall_score
from mtbert.model.bert import BertConfig, BertModel
from mtbert.model.heads import HeadSpec
from mtbert.model.multitask import MultiTaskConfig, MultiTaskModel, TaskHeadSpec
from mtbert.objectives.losses import LOSSES
from mtbert.optim import build_optimizer
from mtbert.tasks import Task, resolve_tasks

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
        encoder = BertModel.from_pretrained(model_cfg.init)
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
    config = MultiTaskConfig(encoder=encoder.config, tasks={name: head_spec(t) for name, t in tasks.items()},
                             sharing=recipe.model.sharing)
    return MultiTaskModel(config, encoder)


def parameter_counts(model: MultiTaskModel) -> dict[str, int]:
    counts = {"total": 0, "trainable": 0, "frozen": 0}
    for _, p in model.named_parameters():
        counts["total"] += p.numel()
        counts["trainable" if p.requires_grad else "frozen"] += p.numel()
    counts["encoder"] = sum(p.numel() for p in model.encoder.parameters())
    for name in model.config.tasks:
        own = list(model.heads[name].parameters()) if name in model.heads else []
        own += list(model.poolers[name].parameters()) if name in model.poolers else []
        counts[f"task:{name}"] = sum(p.numel() for p in own)
    return counts


def optimizer_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    """Weight decay on weight matrices only; biases and LayerNorm parameters are not decayed."""
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        (no_decay if param.ndim < 2 or "LayerNorm" in name else decay).append(param)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def linear_schedule(optimizer: torch.optim.Optimizer, warmup: int, total: int) -> torch.optim.lr_scheduler.LambdaLR:
    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / (warmup + 1)
        return max(0.0, (total - step) / max(1, total - warmup))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


# ---------------------------------------------------------------------------------------------
# The run


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


def train(recipe: Recipe) -> dict:
    """Train, evaluate on dev as the recipe says, export the best (or last) model; return its metrics."""
    accelerator = Accelerator(gradient_accumulation_steps=recipe.train.grad_accum,
                              mixed_precision=speed.mixed_precision(recipe.speed),
                              # A step trains one task; the other heads get no gradient, which DDP must allow.
                              kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=True)])
    set_seed(recipe.seed)
    with accelerator.main_process_first():
        data = load_run_data(recipe, accelerator)
    tasks, tokenizer = data.tasks, data.tokenizer
    model = speed.prepare_model(build_model(recipe, tasks, tokenizer), recipe.speed)
    counts = parameter_counts(model)
    accelerator.print("parameters: " + ", ".join(f"{k} {v:,}" for k, v in counts.items()))

    pad_id = tokenizer.pad_token_id or 0
    streams = {name: TaskStream(data.train[name], task.batch_size, seed=recipe.seed, stream_id=i, pad_id=pad_id,
                                num_processes=accelerator.num_processes, process_index=accelerator.process_index,
                                max_examples=task.max_train_examples, class_balanced=task.class_balanced,
                                length_pool=recipe.speed.length_pool)
               for i, (name, task) in enumerate(tasks.items())}
    sampler = TaskSampler(recipe.sampling.strategy, {n: s.pass_size for n, s in streams.items()},
                          {n: s.batches_per_pass for n, s in streams.items()}, seed=recipe.seed,
                          temperature=recipe.sampling.temperature, anneal_decay=recipe.sampling.anneal_decay,
                          epochs=recipe.train.epochs)
    accum = recipe.train.grad_accum
    steps = total_steps(sampler.steps_per_epoch, recipe.train.epochs, accum, recipe.train.max_steps)
    steps_per_epoch = math.ceil(sampler.steps_per_epoch / accum)
    eval_every = recipe.eval.every_steps or steps_per_epoch
    accelerator.print(f"tasks: {', '.join(tasks)} | sampling {recipe.sampling.strategy} | "
                      f"{steps_per_epoch} steps per epoch | {steps} steps | eval every {eval_every} steps")

    optimizer = build_optimizer(recipe.train.optimizer, optimizer_groups(model, recipe.train.weight_decay),
                                lr=recipe.train.lr, betas=recipe.train.betas, eps=recipe.train.eps,
                                **speed.optimizer_options(recipe.speed, recipe.train.optimizer))
    # Stepped by hand once per optimizer step: the schedule is counted in optimizer steps whatever the
    # number of processes, so it is not handed to accelerator.prepare (which would step it per process).
    scheduler = linear_schedule(optimizer, int(recipe.train.warmup_ratio * steps), steps)
    model, optimizer = accelerator.prepare(model, optimizer)
    dev_loaders = {name: accelerator.prepare(eval_loader(ds.select(range(min(len(ds), recipe.eval.max_examples)))
                                                         if recipe.eval.max_examples else ds,
                                                         recipe.eval.batch_size, pad_id,
                                                         max_tokens=recipe.speed.eval_max_tokens))
                   for name, ds in data.dev.items()}

    output = Path(recipe.output_dir)
    recipe_text = dump_recipe(stored_recipe(recipe, tasks))
    log = RunLog(output / "train_log.jsonl", enabled=accelerator.is_main_process)
    best: dict | None = None
    losses: dict[str, list[torch.Tensor]] = defaultdict(list)
    tokens = 0
    started = time.perf_counter()
    bar = tqdm(total=steps, desc="train", disable=not accelerator.is_local_main_process, dynamic_ncols=True)
    model.train()
    for step in range(steps):
        for micro in range(accum):
            micro_step = step * accum + micro
            with accelerator.accumulate(model):
                loss = torch.zeros((), device=accelerator.device)
                for name in sampler.tasks_at(micro_step):
                    host_batch = streams[name].next_batch()
                    tokens += speed.real_tokens(host_batch)  # counted on the host: no wait for the device
                    batch = {k: v.to(accelerator.device, non_blocking=True) for k, v in host_batch.items()}
                    task_loss = LOSSES[tasks[name].loss](model(name, batch), batch["labels"])
                    loss = loss + tasks[name].loss_weight * task_loss
                    losses[name].append(task_loss.detach())
                accelerator.backward(loss)
                if accelerator.sync_gradients and recipe.train.grad_clip:
                    accelerator.clip_grad_norm_(model.parameters(), recipe.train.grad_clip)
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
        scheduler.step()
        bar.update(1)
        done = step + 1
        if done % recipe.train.log_every == 0 or done == steps:
            means = {n: torch.stack(v).mean().item() for n, v in losses.items() if v}
            elapsed = time.perf_counter() - started
            bar.set_postfix({n: f"{v:.3f}" for n, v in means.items()})
            log.write({"step": done, "lr": scheduler.get_last_lr()[0], "loss": means,
                       "tokens_per_s": tokens * accelerator.num_processes / elapsed, "elapsed_s": elapsed})
            losses.clear()
        if done % eval_every == 0 or done == steps:
            metrics = evaluate_dev(model, tasks, dev_loaders, accelerator)
            log.write({"step": done, "dev": metrics})
            accelerator.print(f"step {done}: dev " + format_scores(metrics))
            is_best = best is None or metrics["overall"] > best["overall"] or not recipe.eval.keep_best
            if is_best:
                best = metrics | {"step": done}
                accelerator.wait_for_everyone()
                if accelerator.is_main_process:
                    checkpoint.export_model(accelerator.unwrap_model(model), tokenizer, output,
                                            recipe=recipe_text, metrics=best)
    bar.close()
    accelerator.wait_for_everyone()
    accelerator.end_training()
    accelerator.print(f"exported the {'best' if recipe.eval.keep_best else 'last'} model "
                      f"(step {best['step']}, overall {best['overall']:.4f}) to {output}")
    return best


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
                                   gather=accelerator.gather_for_metrics)
        results[name] = score(tasks[name], prediction)
    results["overall"] = overall_score({name: r["main"] for name, r in results.items()})
    return results


def format_scores(metrics: dict) -> str:
    parts = []
    for name, values in metrics.items():
        if isinstance(values, dict):
            parts.append(f"{name} " + " ".join(f"{k} {v:.4f}" for k, v in values.items() if k != "main"))
    return " | ".join(parts) + f" | overall {metrics['overall']:.4f}"


class RunLog:
    """The JSONL log every run writes: one record per logging step and per evaluation."""

    def __init__(self, path: Path, enabled: bool):
        self.path, self.enabled = path, enabled
        if enabled:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text("")

    def write(self, record: dict) -> None:
        if self.enabled:
            with self.path.open("a") as f:
                f.write(json.dumps(record) + "\n")
