"""Distillation: a multi-task student learns each task from the outputs of teacher models trained on it (knowledge
distillation, Hinton, Vinyals and Dean 2015; per-task teachers into one multi-task student, MT-DNN, Liu et al.
2019, "Improving Multi-Task Deep Neural Networks via Knowledge Distillation"), mixed with the gold labels.

The teachers are exported mtbert models (`distillation.teachers`); each teaches the student's tasks it has (same
name, same kind, same labels: anything else is refused), and several teachers of one task are averaged. The
student's loss on a task with teachers, T = distillation.temperature, a = distillation.weight:

| kind | teachers' target (the ensemble's mean) | teachers' term |
|---|---|---|
| classes | softmax(t / T) | cross-entropy of softmax(s / T) against it, times T^2 |
| binary | sigmoid(t / T) | binary cross-entropy of sigmoid(s / T) against it, times T^2 |
| regression | the score t | mean squared error of s against it |

    loss = loss_weight x ((1 - a) x gold loss + a x teachers' term)

(soft cross-entropy differs from the KL divergence by the target's entropy, a constant: the same gradient). A
task no teacher has trains on its gold labels alone. The logged task loss is the gold loss; the teachers' term is
logged as `distillation_loss`.

Each teacher runs once over each training file: its raw outputs for every example are cached under
MTBERT_CACHE/teacher/, keyed like the tokenisation cache (data/encoding.py) by the examples read, plus the
teacher's weights file and tokenizer, so a second run (or another temperature) reads them back. The batches then
carry each example's target (`teacher`), looked up by its position in the training split.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import datasets
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

from mtbert import exported, speed
from mtbert.data.collate import collate
from mtbert.data.encoding import cache_dir, encoding_spec, examples_fingerprint, tokenize_split, tokenizer_fingerprint
from mtbert.data.reading import SplitData
from mtbert.errors import MtbertError
from mtbert.files import write_tensors_atomically
from mtbert.inference import eval_loader
from mtbert.objectives.base import LossMeter, ObjectiveContext, StageLike, TaskLoss, TrainingModel
from mtbert.objectives.supervised import LOSSES, Supervised
from mtbert.pretrained import SAFETENSORS_FILE
from mtbert.tasks import Task

CACHE_VERSION = 1


# ---------------------------------------------------------------------------------------------
# Teachers and their outputs


def check_teacher_task(student: Task, teacher: Task, folder: str) -> None:
    """A teacher's task must predict what the student's does: the same kind and labels."""
    where = f"distillation.teachers: {folder}: task {student.name}"
    if teacher.kind != student.kind:
        raise MtbertError(f"{where} is {teacher.kind} there and {student.kind} here")
    if student.kind == "classes" and teacher.num_labels != student.num_labels:
        raise MtbertError(f"{where} has {teacher.num_labels} classes there and {student.num_labels} here")
    if (teacher.label_names or None) != (student.label_names or None) and student.kind != "regression":
        raise MtbertError(f"{where} has labels {teacher.label_names} there and {student.label_names} here")
    if student.kind == "regression" and teacher.label_range != student.label_range:
        raise MtbertError(f"{where} scores in {teacher.label_range} there and {student.label_range} here")


def load_teachers(folders: list[str], tasks: dict[str, Task]) -> dict[str, list[tuple[str, exported.LoadedModel]]]:
    """{student task: [(folder, teacher)]}; a teacher that teaches none of the tasks, or a task differently, is an
    error naming it."""
    teaching: dict[str, list[tuple[str, exported.LoadedModel]]] = {}
    for folder in folders:
        loaded = exported.load_model(folder)
        common = [name for name in loaded.tasks if name in tasks]
        if not common:
            raise MtbertError(f"distillation.teachers: {folder} has task(s) {', '.join(loaded.tasks)}, none of the "
                              f"student's ({', '.join(tasks)})")
        for name in common:
            check_teacher_task(tasks[name], loaded.tasks[name], folder)
            teaching.setdefault(name, []).append((folder, loaded))
    return teaching


def _without_tokens(dataset: datasets.Dataset) -> datasets.Dataset:
    return dataset.remove_columns([c for c in dataset.column_names if c.startswith(("input_ids", "token_type_ids"))])


def teacher_cache_key(examples: datasets.Dataset, folder: str, teacher: exported.LoadedModel, task: str) -> str:
    """What was read, and which teacher (its weights file, which holds its configuration and recipe, and its
    tokenizer) turned it into outputs."""
    weights = hashlib.sha256(Path(folder, SAFETENSORS_FILE).read_bytes()).hexdigest()
    parts = [CACHE_VERSION, examples_fingerprint(examples), weights, tokenizer_fingerprint(teacher.tokenizer),
             task, teacher.recipe.model.max_length, encoding_spec(teacher.tasks[task])]
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:24]


@torch.no_grad()
def teacher_outputs(folder: str, teacher: exported.LoadedModel, task: str, train: datasets.Dataset,
                    context: ObjectiveContext) -> torch.Tensor:
    """The teacher's raw outputs (logits or scores) for every example of the training split, in its order:
    read from the cache, or computed once and cached."""
    examples = _without_tokens(train)
    key = teacher_cache_key(examples, folder, teacher, task)
    path = cache_dir() / "teacher" / f"{task}-{key}.safetensors"
    if path.is_file():
        return load_file(str(path))["outputs"]
    spec = teacher.tasks[task]
    tokenized = tokenize_split(SplitData(examples, source=f"{task} train", labelled=True), spec, teacher.tokenizer,
                               teacher.recipe.model.max_length, progress=False)
    model = speed.set_switches(teacher.model, context.recipe.speed).to(context.device).eval()
    loader = eval_loader(tokenized, context.recipe.eval.batch_size, teacher.tokenizer.pad_token_id or 0,
                         max_tokens=context.recipe.speed.eval_max_tokens)
    outputs: list[torch.Tensor] = [torch.empty(0)] * len(tokenized)
    for batch in loader:
        index = batch.pop("index").tolist()
        values = model(task, {k: v.to(context.device) for k, v in batch.items()}).float().cpu()
        for position, value in zip(index, values):
            outputs[position] = value
    stacked = torch.stack(outputs).contiguous()
    path.parent.mkdir(parents=True, exist_ok=True)
    write_tensors_atomically(path, {"outputs": stacked}, {"teacher": str(folder), "task": task})
    context.say(f"distillation: {folder}'s outputs for the {len(stacked)} {task} training examples cached in {path}")
    return stacked


def ensemble_target(kind: str, outputs: list[torch.Tensor], temperature: float) -> torch.Tensor:
    """The teachers' mean target: class probabilities (N, C), a probability (N,) or a score (N,)."""
    if kind == "classes":
        return torch.stack([(o / temperature).softmax(-1) for o in outputs]).mean(0)
    if kind == "binary":
        return torch.stack([(o / temperature).sigmoid() for o in outputs]).mean(0)
    return torch.stack(outputs).mean(0)


def distillation_loss(kind: str, outputs: torch.Tensor, target: torch.Tensor, temperature: float) -> torch.Tensor:
    """The teachers' term: soft cross-entropy at temperature T, times T^2 (classes, binary); squared error."""
    outputs = outputs.float()
    if kind == "classes":
        return -(target * (outputs / temperature).log_softmax(-1)).sum(-1).mean() * temperature ** 2
    if kind == "binary":
        return F.binary_cross_entropy_with_logits(outputs / temperature, target) * temperature ** 2
    return F.mse_loss(outputs, target)


class TargetStream:
    """A task's training batches (its TaskStream, whose position the run saves) with each example's target."""

    def __init__(self, stream, targets: torch.Tensor):
        self.stream, self.targets = stream, targets

    @property
    def pass_size(self) -> int:
        return self.stream.pass_size

    @property
    def batches_per_pass(self) -> int:
        return self.stream.batches_per_pass

    def next_batch(self) -> dict[str, torch.Tensor]:
        indices = self.stream.next_indices()
        batch = collate(self.stream.dataset[indices], self.stream.pad_id)
        batch["teacher"] = self.targets[indices]
        return batch


# ---------------------------------------------------------------------------------------------
# The objective


class Distillation(Supervised):
    """Stages with `objective: distillation`. Checkpoint part `distillation_losses`: the teachers' terms since
    the last log record (the targets are the cache's, the stream positions the run's)."""

    def __init__(self, context: ObjectiveContext, stages):
        super().__init__(context, stages)
        settings = context.recipe.distillation
        self.weight, self.temperature = settings.weight, settings.temperature
        names = list(dict.fromkeys(name for config in stages.values() for name in config.tasks or context.tasks))
        teaching = load_teachers(settings.teachers, {name: context.tasks[name] for name in names})
        self.taught = list(teaching)
        self.streams = dict(context.streams)
        for name, teachers in teaching.items():
            outputs = [teacher_outputs(folder, teacher, name, context.train[name], context)
                       for folder, teacher in teachers]
            target = ensemble_target(context.tasks[name].kind, outputs, self.temperature)
            self.streams[name] = TargetStream(context.streams[name], target)
        self.terms = LossMeter(context.device)

    def state_parts(self):
        return {"distillation_losses": self.terms}

    def loss(self, model: TrainingModel, task: str, batch: dict[str, torch.Tensor], *, stage: StageLike,
             step: int) -> TaskLoss:
        spec = self.tasks[task]
        outputs = self.outputs(model, task, batch)
        gold = LOSSES[spec.loss](outputs, batch["labels"])
        if "teacher" not in batch:
            return TaskLoss(spec.loss_weight * gold, gold)
        taught = distillation_loss(spec.kind, outputs, batch["teacher"], self.temperature)
        self.terms.add(task, taught)
        return TaskLoss(spec.loss_weight * ((1 - self.weight) * gold + self.weight * taught), gold)

    def log_values(self, stage: StageLike) -> dict:
        return {"distillation_loss": self.terms.means()}

    def describe(self, stage: StageLike) -> str:
        taught = [name for name in stage.tasks if name in self.taught]
        alone = [name for name in stage.tasks if name not in self.taught]
        return (f"distillation of {', '.join(taught) or 'no task'} (weight {self.weight:g}, T {self.temperature:g})"
                + (f"; gold labels alone for {', '.join(alone)}" if alone else ""))
