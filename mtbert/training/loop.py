"""The training loop, in plain Accelerate idiom: accumulate, backward, clip on sync, step; then log, evaluate
and save when due. It does not know which objective runs: each stage's objective gives the losses
(objectives/base.py). setup.py builds the run, launch.py adapts Accelerate and DeepSpeed.
"""

from __future__ import annotations

import math
import time
from typing import TYPE_CHECKING

import torch
from tqdm.auto import tqdm

from mtbert import speed
from mtbert.config import Recipe
from mtbert.inference import run_inference, score
from mtbert.metrics import overall_score
from mtbert.tasks import Task
from mtbert.training import faults, launch
from mtbert.training.checkpoints import latest_checkpoint, prune
from mtbert.training.guards import StopSignals, TrainingInterrupted
from mtbert.training.setup import Run, setup
from mtbert.training.stages import Stage, stage_at

if TYPE_CHECKING:
    from accelerate import Accelerator


def train(recipe: Recipe, resume: str | None = None, overwrite: bool = False) -> dict:
    """Train, evaluate on dev as the recipe says, export the best (or last) model; return its metrics.

    A resumable checkpoint is saved every `train.checkpoint_every` steps, at the end, and when SIGTERM
    or SIGINT stops the run (which then raises TrainingInterrupted). resume: `latest`, `auto` or a
    checkpoint folder to continue from; the run ends as if it had never stopped (training/checkpoints.py).
    A fresh run refuses an output_dir holding files mtbert did not write unless `overwrite`, and touches an
    earlier run's folder only once it produces something (training/run_folder.py).
    """
    return fit(setup(recipe, resume=resume, overwrite=overwrite))


def fit(run: Run) -> dict:
    """Train `run` from its progress to its last step; return the exported model's dev metrics."""
    accelerator, model, optimizer = run.accelerator, run.model, run.optimizer
    accum, speedometer = run.recipe.train.grad_accum, Speedometer()
    bar = tqdm(total=run.steps, initial=run.progress.step, desc="train",
               disable=not accelerator.is_local_main_process, dynamic_ncols=True)
    model.train()
    with StopSignals() as signals:
        for step in range(run.progress.step, run.steps):
            stage = stage_at(run.stages, step)
            objective = stage.objective
            if step == stage.start:
                objective.start_stage(run.trainee, stage)
            nonfinite = None
            for micro in range(accum):
                tasks = stage.tasks_at(step, micro, accum)
                with accelerator.accumulate(model), launch.micro_batch(run.trainee, tasks):
                    losses = {}
                    for task in tasks:
                        batch = speedometer.to_device(objective.streams[task].next_batch(), accelerator.device)
                        out = faults.loss(step + 1, objective.loss(run.trainee, task, batch, stage=stage, step=step))
                        run.guard.observe(step + 1, task, out.loss)
                        run.losses.add(task, out.logged)
                        losses[task] = out.loss
                    objective.backward(run.trainee, losses, accelerator.backward)
                    if accelerator.sync_gradients:
                        nonfinite = _clip_and_check(run, step)
                    if nonfinite is None:
                        optimizer.step()
                    optimizer.zero_grad(set_to_none=True)
            if nonfinite is None:
                objective.after_step(run.trainee, stage=stage, step=step)
            run.schedule.step()
            bar.update(1)
            run.progress.step = step + 1
            stop = _after_step(run, stage, step, nonfinite, signals.received, speedometer, bar)
            if stop:
                bar.close()
                raise TrainingInterrupted(stop, step + 1, run.saved)
    bar.close()
    return _finish(run)


class Speedometer:
    """Tokens trained on (counted on the host: no wait for the device) and the time since the loop began."""

    def __init__(self) -> None:
        self.tokens, self.started = 0, time.perf_counter()

    def to_device(self, host_batch: dict[str, torch.Tensor], device: torch.device) -> dict[str, torch.Tensor]:
        self.tokens += speed.real_tokens(host_batch)
        return {k: v.to(device, non_blocking=True) for k, v in host_batch.items()}

    def elapsed(self) -> float:
        return time.perf_counter() - self.started


def _clip_and_check(run: Run, step: int) -> tuple[int, list[str]] | None:
    """At the micro-batch whose gradients sync: clip, and when non-finite steps are skipped, whether this one is
    (then the optimizer does not step)."""
    accelerator, train = run.accelerator, run.recipe.train
    launch.after_backward(accelerator, run.model, run.trainee)
    # The clipped norm tells non-finite gradients of finite losses (where the launch lets the guard read it).
    watch_gradients = train.grad_clip and launch.exact_gradient_norm(accelerator)
    if watch_gradients:
        run.guard.observe_gradients(step + 1, accelerator.clip_grad_norm_(run.model.parameters(), train.grad_clip))
    # Skipping needs the answer now (one host sync per step); stopping reads it lazily, in _after_step.
    nonfinite = run.guard.found() if train.on_nonfinite == "skip" else None
    if train.grad_clip and not watch_gradients and nonfinite is None:
        accelerator.clip_grad_norm_(run.model.parameters(), train.grad_clip)
    return nonfinite


def _after_step(run: Run, stage: Stage, step: int, nonfinite: tuple[int, list[str]] | None, received: int | None,
                speedometer: Speedometer, bar) -> int:
    """Log, evaluate and save when due; return the signal to stop for (agreed by every process), or 0."""
    recipe, done = run.recipe, step + 1
    if nonfinite is not None:
        run.progress.skipped_steps.append(done)
        run.log.write({"step": done, "skipped": run.guard.describe(nonfinite[1])})
        run.accelerator.print(f"step {done}: {run.guard.describe(nonfinite[1])}; step skipped")
        run.guard.reset()
    log_due = done % recipe.train.log_every == 0 or done == run.steps
    run_evaluates = (done % recipe.eval.every_steps == 0 if recipe.eval.every_steps
                     else (done - stage.start) % stage.steps_per_epoch == 0)
    due = tasks_due(run.data.tasks, done, run_evaluates, stage_end=done == stage.end)
    eval_due = bool(due)
    save_due = done == run.steps or (recipe.train.checkpoint_every and done % recipe.train.checkpoint_every == 0)
    stop = run.stop_vote.agree(received)
    if log_due or eval_due or save_due or stop:
        # Only this run's checkpoints: an earlier run's in a folder not yet taken over are no way back.
        run.guard.stop_if_found(latest_checkpoint(run.checkpoints) if run.resume_from or run.saved else None)
    if log_due:
        _log(run, stage, step, speedometer, bar)
    if eval_due:
        _evaluate(run, done, due)
    if save_due or stop:
        run.progress.log_bytes = run.log.size()
        run.saved = run.state.save(run.checkpoints, done, run.processes, run.run_info)
        if run.accelerator.is_main_process:
            prune(run.checkpoints, recipe.train.keep_checkpoints)
    faults.after_step(done)
    return stop


def _log(run: Run, stage: Stage, step: int, speedometer: Speedometer, bar) -> None:
    means = run.losses.means()
    bar.set_postfix({n: f"{v:.3f}" for n, v in means.items()})
    record = {"step": step + 1, "lr": run.schedule.lr, "loss": means} | stage.objective.log_values(stage)
    if run.recipe.stages:
        record["stage"] = stage.name
    if stage.sampling.strategy == "annealed":  # p(task) moves over the run: log where it stands
        record["task_p"] = stage.probabilities_at(step)
    elapsed = speedometer.elapsed()
    run.log.write(record | {"tokens_per_s": speedometer.tokens * run.accelerator.num_processes / elapsed,
                            "elapsed_s": elapsed})


def tasks_due(tasks: dict[str, Task], done: int, run_evaluates: bool, stage_end: bool) -> list[str]:
    """The tasks evaluated on dev after optimizer step `done`: all of them at a stage's end; between, a task with
    its own eval_every when `done` is a multiple of it (0: never between), the others when the run evaluates."""
    if stage_end:
        return list(tasks)
    return [name for name, task in tasks.items()
            if (run_evaluates if task.eval_every is None else task.eval_every and done % task.eval_every == 0)]


def _evaluate(run: Run, done: int, due: list[str]) -> None:
    """Score the due tasks on dev; export the model when it is the best so far (or always, without keep_best)."""
    measured = evaluate_dev(run.model, run.data.tasks, {n: run.dev_loaders[n] for n in due}, run.accelerator)
    metrics, record = latest_scores(run.progress.dev_scores, measured, done, list(run.data.tasks))
    run.log.write({"step": done} | record)
    run.accelerator.print(f"step {done}: dev " + format_scores(record["dev"]))
    if metrics is None:  # some task has no score yet: no overall, nothing to choose between
        return
    if not run.recipe.eval.keep_best or replaces_best(metrics["overall"], run.progress.best):
        run.progress.best = metrics | {"step": done}
        launch.export(run.accelerator, run.model, run.data.tokenizer, run.output, run.recipe_text, run.progress.best)


def latest_scores(scores: dict, measured: dict, done: int, tasks: list[str]) -> tuple[dict | None, dict]:
    """Fold the dev metrics `measured` at step `done` (some tasks, "overall" among them) into `scores`, each task's
    latest {step, metrics}; return the metrics the run's overall stands on and the log record's fields.

    The overall score is the mean of every task's latest main score, whether measured now or at an earlier step
    (tasks.*.eval_every): the record names the carried tasks and their steps under "dev_carried". Until every
    task has been scored once there is no overall (None, and the record lists the rest under "dev_pending")."""
    for name in tasks:
        if name in measured:
            scores[name] = {"step": done, "metrics": measured[name]}
    record = {"dev": {n: measured[n] for n in tasks if n in measured}}
    pending = [n for n in tasks if n not in scores]
    if pending:
        return None, record | {"dev_pending": pending}
    metrics = {n: scores[n]["metrics"] for n in tasks}
    metrics["overall"] = overall_score({n: m["main"] for n, m in metrics.items()})
    record["dev"]["overall"] = metrics["overall"]
    carried = {n: scores[n]["step"] for n in tasks if scores[n]["step"] != done}
    return metrics, record | ({"dev_carried": carried} if carried else {})


def _finish(run: Run) -> dict:
    accelerator = run.accelerator
    if accelerator.device.type == "cuda":  # for mtbert sweep: peak GPU memory, which only this process can see
        run.log.write({"step": run.steps,
                       "cuda_max_memory_allocated": torch.cuda.max_memory_allocated(accelerator.device)})
    accelerator.wait_for_everyone()
    launch.verify_replicas(accelerator, run.model)
    accelerator.end_training()
    best = run.progress.best
    accelerator.print(f"exported the {'best' if run.recipe.eval.keep_best else 'last'} model "
                      f"(step {best['step']}, overall {best['overall']:.4f}) to {run.output}")
    return best


def evaluate_dev(model, tasks: dict[str, Task], loaders: dict, accelerator: Accelerator) -> dict:
    """Each loader's task's dev metrics, and "overall": the mean of their main scores."""
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
    return " | ".join(parts) + (f" | overall {metrics['overall']:.4f}" if "overall" in metrics else "")
