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

Nothing here knows of devices or processes: the train loop calls these with the unwrapped model.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

NORMS = ("inf", "l2")


@dataclass(frozen=True)
class SmartSettings:
    """One task's SMART coefficients (the paper's defaults)."""

    adv_weight: float = 1.0
    "lambda_s: weight of the adversarial (smoothness) term."
    prox_weight: float = 1.0
    "mu: weight of the proximal term (divergence from the momentum teacher)."
    epsilon: float = 1e-5
    "Radius of the ball the perturbation is projected onto."
    sigma: float = 1e-5
    "Standard deviation of the initial Gaussian perturbation."
    step_size: float = 1e-3
    "eta: size of each ascent step (along the normalised gradient)."
    steps: int = 1
    "K: ascent steps on the perturbation."
    norm: str = "inf"
    "The ball's norm: inf or l2 (per example, over all its token vectors)."
    dropout_off: bool = False
    "Compute the adversarial term with dropout off (clean and perturbed outputs in eval mode)."


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
    for the first 10% of the updates, 0.999 after)."""

    beta: float = 0.99
    final: float = 0.999
    switch: float = 0.1

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
