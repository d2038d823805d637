"""SMART (Jiang et al., 2020): smoothness-inducing adversarial regularisation and a Bregman proximal
point step with a momentum teacher.

Adversarial term. The task's branch runs from its embeddings' output (`MultiTaskModel.embed`), once
clean and once with noise added: Gaussian noise of scale sigma, then `steps` ascent steps of size
`step_size` along the normalised gradient of the divergence between perturbed and clean outputs, each
followed by a projection onto the epsilon-ball (infinity norm or L2, per example). The final noise is
a constant: the term's gradient reaches the parameters, never the noise. Divergence: symmetric KL in
fp32 for classes (a binary task's logit is read as two classes), squared error for regression.

Proximal term. A teacher, a copy of the model that no gradient reaches, follows the model after each
optimizer step, theta~ <- (1 - beta) theta + beta theta~; the loss adds mu x the divergence between the
model's outputs and the teacher's on the same batch, which keeps each update close to the last ones.

The objective (`Smart`) owns the teacher, its beta schedule and the terms' log; the terms themselves run on
the unwrapped model (`TrainingModel.module`), inside the autocast of mixed precision, and join the training
forward's graph, so one backward (and one gradient reduction across processes) carries everything.
"""

from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from mtbert.config import Recipe, SmartConfig, StageConfig, TaskSmartConfig
from mtbert.errors import MtbertError
from mtbert.objectives.base import LossMeter, ObjectiveContext, StageLike, TrainingModel
from mtbert.objectives.supervised import Supervised

NORMS = ("inf", "l2")


@dataclass(frozen=True)
class SmartSettings:
    """One task's SMART coefficients in one stage: its own `smart:` values over the recipe's `smart:` section,
    where every default lives (config.SmartConfig: the paper's)."""

    adv_weight: float
    "lambda_s: weight of the adversarial (smoothness) term."
    prox_weight: float
    "mu: weight of the proximal term (divergence from the momentum teacher)."
    epsilon: float
    "Radius of the ball the perturbation is projected onto."
    sigma: float
    "Standard deviation of the initial Gaussian perturbation."
    step_size: float
    "eta: size of each ascent step (along the normalised gradient)."
    steps: int
    "K: ascent steps on the perturbation."
    norm: str
    "The ball's norm: inf or l2 (per example, over all its token vectors)."
    dropout_off: bool
    "Compute the adversarial term with dropout off (clean and perturbed outputs in eval mode)."

    @classmethod
    def of(cls, recipe_smart: SmartConfig, task_smart: TaskSmartConfig | None = None) -> SmartSettings:
        """The recipe's values, each replaced by the task's where it sets one."""
        values = {}
        for f in dataclasses.fields(cls):
            own = getattr(task_smart, f.name) if task_smart is not None else None
            values[f.name] = getattr(recipe_smart, f.name) if own is None else own
        return cls(**values)


# ---------------------------------------------------------------------------------------------
# Divergences


def _two_class_logits(logits: torch.Tensor) -> torch.Tensor:
    """A binary task's one logit z per example as two-class logits [0, z]: softmax gives [1 - p, p]."""
    return torch.stack([torch.zeros_like(logits), logits], dim=-1)  # (B, 2)


def symmetric_kl(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """KL(softmax b || softmax a) + KL(softmax a || softmax b), in fp32, averaged over examples.

    In each direction the reference distribution is held constant (as the SMART reference code does),
    so each side gets the gradient of its own log-probabilities."""
    log_a, log_b = F.log_softmax(a.float(), dim=-1), F.log_softmax(b.float(), dim=-1)
    kl_b_a = F.kl_div(log_a, log_b.detach(), log_target=True, reduction="batchmean")
    kl_a_b = F.kl_div(log_b, log_a.detach(), log_target=True, reduction="batchmean")
    return kl_b_a + kl_a_b


def divergence(kind: str, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """How far outputs `a` are from outputs `b`: symmetric KL for classes and binary, squared error for regression."""
    if kind == "regression":
        return F.mse_loss(a.float(), b.float())
    if kind == "binary":
        a, b = _two_class_logits(a), _two_class_logits(b)
    return symmetric_kl(a, b)


# ---------------------------------------------------------------------------------------------
# The adversarial term


def _per_example(x: torch.Tensor) -> torch.Tensor:
    return x.reshape(x.shape[0], -1)  # (B, T*H)


def normalise(direction: torch.Tensor, norm: str) -> torch.Tensor:
    """Scale each example's (T, H) block to unit infinity or L2 norm."""
    flat = _per_example(direction)
    size = flat.abs().amax(1) if norm == "inf" else flat.norm(dim=1)  # (B,)
    return direction / (size.view(-1, *[1] * (direction.dim() - 1)) + 1e-12)


def project(noise: torch.Tensor, epsilon: float, norm: str) -> torch.Tensor:
    """The nearest point of the epsilon-ball (per example) to `noise`."""
    if norm == "inf":
        return noise.clamp(-epsilon, epsilon)
    size = _per_example(noise).norm(dim=1)  # (B,)
    factor = (epsilon / size.clamp(min=1e-30)).clamp(max=1.0)  # (B,)
    return noise * factor.view(-1, *[1] * (noise.dim() - 1))


def adversarial_noise(model: nn.Module, task: str, kind: str, embedded, clean: torch.Tensor,
                      settings: SmartSettings) -> torch.Tensor:
    """The perturbation of the embeddings' output that (locally) most changes the outputs: Gaussian
    start, `steps` normalised ascent steps, each projected onto the epsilon-ball. Padding stays unperturbed.
    Returned detached: a constant for the loss that uses it."""
    hidden = embedded.hidden.detach()  # the ascent needs the noise's gradient only
    real = embedded.attention_mask.to(hidden.dtype).unsqueeze(-1)  # (B, T, 1)
    noise = torch.randn_like(hidden) * settings.sigma * real  # (B, T, H)
    target = clean.detach()
    for _ in range(settings.steps):
        noise.requires_grad_(True)
        perturbed = model(task, embedded=embedded._replace(hidden=hidden + noise))
        (grad,) = torch.autograd.grad(divergence(kind, perturbed, target), noise)
        noise = noise.detach() + settings.step_size * normalise(grad, settings.norm)
        noise = project(noise, settings.epsilon, settings.norm) * real
    return noise.detach()


def adversarial_loss(model: nn.Module, task: str, kind: str, batch: dict[str, torch.Tensor],
                     clean: torch.Tensor | None, settings: SmartSettings) -> torch.Tensor:
    """R_s: the divergence between the outputs on the perturbed and the clean embeddings of `batch`.

    model: a MultiTaskModel (not a DDP wrapper: these forwards add to the graph of the wrapper's call,
    whose single backward then carries every gradient). clean: the training forward's outputs, reused
    when dropout stays on; with settings.dropout_off both outputs are computed again in eval mode."""
    was_training = model.training
    if settings.dropout_off:
        model.eval()
    try:
        embedded = model.embed(task, batch)
        if settings.dropout_off or clean is None:
            clean = model(task, embedded=embedded)
        noise = adversarial_noise(model, task, kind, embedded, clean, settings)
        perturbed = model(task, embedded=embedded.perturbed(noise))
        return divergence(kind, perturbed, clean)
    finally:
        model.train(was_training)


# ---------------------------------------------------------------------------------------------
# The proximal term's teacher


@dataclass(frozen=True)
class BetaSchedule:
    """beta for the first `switch` fraction of a stage's optimizer steps, then `final` (the paper: 0.99
    for the first 10% of the updates, 0.999 after; config.SmartConfig's beta, beta_final, beta_switch)."""

    beta: float
    final: float
    switch: float

    def at(self, step: int, steps: int) -> float:
        """beta after optimizer step `step` (0-based) of `steps`."""
        return self.beta if step < self.switch * steps else self.final


class MomentumTeacher:
    """A copy of the model, no gradient, in eval mode, that follows it: theta~ <- (1 - beta) theta + beta theta~."""

    def __init__(self, model: nn.Module):
        self.model = copy.deepcopy(model).requires_grad_(False).eval()

    def reset(self, model: nn.Module) -> None:
        """Start again from `model`'s current weights (a stage that begins the proximal term)."""
        self.model.load_state_dict(model.state_dict())

    @torch.no_grad()
    def update(self, model: nn.Module, beta: float) -> None:
        """One momentum step towards `model`, whose parameters must be named as the teacher's."""
        mine = dict(self.model.named_parameters())
        for name, param in model.named_parameters():
            if param.requires_grad:  # frozen copies never change: nothing to follow
                mine[name].mul_(beta).add_(param.detach().to(mine[name].dtype), alpha=1.0 - beta)

    @torch.no_grad()
    def outputs(self, task: str, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.model(task, batch)

    def state_dict(self) -> dict:
        return self.model.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.model.load_state_dict(state)


def proximal_loss(kind: str, outputs: torch.Tensor, teacher_outputs: torch.Tensor) -> torch.Tensor:
    """The Bregman proximal term: the divergence between the model's outputs and the teacher's."""
    return divergence(kind, outputs, teacher_outputs.detach())


# ---------------------------------------------------------------------------------------------
# The objective


def stage_settings(recipe: Recipe, stage: StageConfig) -> dict[str, SmartSettings]:
    """The SMART settings of each task of `stage` that trains with SMART there ({}: none does)."""
    if stage.objective != "supervised":
        return {}
    settings = {}
    for task in stage.tasks or list(recipe.tasks):
        own = recipe.tasks[task].smart
        enabled = own.enabled if own is not None and own.enabled is not None else recipe.smart.enabled
        if stage.smart is not None:
            enabled = stage.smart and (own is None or own.enabled is not False)
        if enabled:
            settings[task] = SmartSettings.of(recipe.smart, own)
    return settings


class Smart(Supervised):
    """The supervised loss plus, for each task with SMART in the stage, adv_weight x the adversarial term and
    prox_weight x the proximal term. After each optimizer step the teacher follows the model with the beta
    of the step's place in its stage. Checkpoint parts: `smart_losses` (the terms since the last log record)
    and, when a stage uses the proximal term, `smart_teacher`."""

    def __init__(self, context: ObjectiveContext, stages: dict[int, StageConfig]):
        super().__init__(context, stages)
        if context.deepspeed:
            raise MtbertError("smart: SMART is not available under DeepSpeed (its extra forwards and teacher run on "
                              "the whole model); use DDP (accelerate_configs/multi_gpu.yaml) or switch smart off")
        self.settings = {index: stage_settings(context.recipe, config) for index, config in stages.items()}
        self.beta = BetaSchedule(context.recipe.smart.beta, context.recipe.smart.beta_final,
                                 context.recipe.smart.beta_switch)
        self.terms = LossMeter(context.device)
        self.teacher = None
        if any(self._uses_teacher(index) for index in stages):
            self.teacher = MomentumTeacher(context.model)
            self.teacher.model.to(context.device)

    def _uses_teacher(self, index: int) -> bool:
        return any(s.prox_weight > 0 for s in self.settings[index].values())

    def state_parts(self) -> dict:
        return {"smart_losses": self.terms} | ({"smart_teacher": self.teacher} if self.teacher is not None else {})

    def start_stage(self, model: TrainingModel, stage: StageLike) -> None:
        if self._uses_teacher(stage.index):
            self.teacher.reset(model.module)  # the proximal term starts from the weights of now

    def regulariser(self, model: TrainingModel, task: str, batch: dict[str, torch.Tensor], outputs: torch.Tensor,
                    stage: StageLike) -> torch.Tensor | float:
        settings = self.settings[stage.index].get(task)
        if settings is None:
            return 0.0
        kind, total = self.tasks[task].kind, 0.0
        with model.autocast():
            if settings.adv_weight:
                adversarial = adversarial_loss(model.module, task, kind, batch, outputs, settings)
                self.terms.add(f"{task}.adv", adversarial)
                total = total + settings.adv_weight * adversarial
            if settings.prox_weight:
                proximal = proximal_loss(kind, outputs, self.teacher.outputs(task, batch))
                self.terms.add(f"{task}.prox", proximal)
                total = total + settings.prox_weight * proximal
        return total

    def after_step(self, model: TrainingModel, *, stage: StageLike, step: int) -> None:
        if self._uses_teacher(stage.index):
            self.teacher.update(model.module, self.beta.at(step - stage.start, stage.steps))

    def log_values(self, stage: StageLike) -> dict:
        return super().log_values(stage) | {"smart_loss": self.terms.means()}  # adversarial and proximal terms

    def describe(self, stage: StageLike) -> str:
        return f"supervised + SMART ({', '.join(self.settings[stage.index])})"
