"""SMART's pieces on a tiny model: the adversarial term, its perturbation, divergences, the momentum teacher."""

import dataclasses
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

from mtbert.config import SmartConfig, StageConfig
from mtbert.errors import MtbertError
from mtbert.model.bert import BertConfig
from mtbert.model.multitask import MultiTaskConfig, MultiTaskModel, TaskHeadSpec
from mtbert.objectives.base import TrainingModel
from mtbert.objectives.smart import (
    BetaSchedule,
    MomentumTeacher,
    Smart,
    SmartSettings,
    adversarial_loss,
    adversarial_noise,
    divergence,
    proximal_loss,
    stage_settings,
    symmetric_kl,
)
from mtbert.objectives.supervised import Supervised

from helpers import objective_context

ENCODER = BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                     intermediate_size=32, max_position_embeddings=64, hidden_dropout_prob=0.0,
                     attention_probs_dropout_prob=0.0)
TASKS = {"cls": TaskHeadSpec(kind="classes", num_outputs=3), "bin": TaskHeadSpec(kind="binary", num_outputs=1),
         "reg": TaskHeadSpec(kind="regression", num_outputs=1, encoding="siamese", pooler="mean")}
def smart_settings(**values) -> SmartSettings:
    """The recipe's default settings (config.SmartConfig: the paper's), with `values` instead."""
    return dataclasses.replace(SmartSettings.of(SmartConfig()), **values)


# Large enough a ball that the term is far from float rounding on a tiny random model.
STRONG = smart_settings(epsilon=1e-1, sigma=1e-2, step_size=1.0, steps=2, dropout_off=True)


def model(unpad: bool = False) -> MultiTaskModel:
    torch.manual_seed(0)
    m = MultiTaskModel(MultiTaskConfig(ENCODER, TASKS, "shared")).train()
    m.encoder.unpad = unpad
    return m


def batch(pair: bool = False) -> dict[str, torch.Tensor]:
    ids = torch.tensor([[2, 7, 8, 9, 3, 0], [2, 11, 12, 3, 0, 0], [2, 5, 6, 7, 8, 3]])
    out = {"input_ids": ids, "attention_mask": (ids != 0).long(), "token_type_ids": torch.zeros_like(ids)}
    if pair:
        ids_b = torch.tensor([[2, 9, 3], [2, 13, 3], [2, 14, 3]])
        out |= {"input_ids_b": ids_b, "attention_mask_b": torch.ones_like(ids_b),
                "token_type_ids_b": torch.zeros_like(ids_b)}
    return out


def task_batch(task: str) -> dict[str, torch.Tensor]:
    return batch(pair=TASKS[task].encoding == "siamese")


@pytest.mark.parametrize("task", list(TASKS))
@pytest.mark.parametrize("unpad", [False, True])
def test_adversarial_term_is_positive_and_zero_for_a_constant_model(task, unpad):
    m = model(unpad)
    kind = TASKS[task].kind
    assert adversarial_loss(m, task, kind, task_batch(task), None, STRONG).item() > 1e-8
    with torch.no_grad():  # the head ignores its input: every output is its bias
        m.heads[task][-1].weight.zero_()
    assert adversarial_loss(m, task, kind, task_batch(task), None, STRONG).item() == 0.0


@pytest.mark.parametrize("norm", ["inf", "l2"])
def test_the_perturbation_stays_in_the_ball_and_off_padding(norm):
    m, b = model(), batch()
    settings = smart_settings(epsilon=1e-3, sigma=1e-2, step_size=1.0, norm=norm)
    embedded = m.embed("cls", b)
    noise = adversarial_noise(m, "cls", "classes", embedded, m("cls", b), settings)
    assert not noise.requires_grad and noise.grad_fn is None
    flat = noise.reshape(3, -1)
    size = flat.abs().amax(1) if norm == "inf" else flat.norm(dim=1)
    assert (size <= 1e-3 * (1 + 1e-6)).all() and (size > 0.5e-3).all()  # the big steps end on the ball
    assert (noise[b["attention_mask"] == 0] == 0).all()


def test_the_perturbation_ascends_the_divergence():
    m, b = model().eval(), batch()
    embedded = m.embed("cls", b)
    clean = m("cls", b).detach()
    torch.manual_seed(1)  # a random corner of the same ball
    start = torch.randn_like(embedded.hidden).sign() * 1e-3 * b["attention_mask"].unsqueeze(-1)
    ascended = adversarial_noise(m, "cls", "classes", embedded, clean,
                                 smart_settings(epsilon=1e-3, sigma=1e-3, step_size=1e-2, steps=3))
    at = [divergence("classes", m("cls", embedded=embedded.perturbed(n)), clean).item() for n in (start, ascended)]
    assert at[1] > 2 * at[0]  # the same size of noise, chosen by gradient, moves the outputs more


def test_its_gradient_reaches_the_parameters_and_not_the_noise():
    m, b = model(), batch()
    embedded = m.embed("cls", b)
    clean = m("cls", embedded=embedded)
    noise = adversarial_noise(m, "cls", "classes", embedded, clean, STRONG)
    m.zero_grad(set_to_none=True)
    divergence("classes", m("cls", embedded=embedded.perturbed(noise)), clean).backward()
    assert noise.grad is None
    branch = m.encoder_for("cls")
    for param in (branch.embeddings.word_embeddings.weight, branch.encoder.layer[0].attention.self.query.weight,
                  m.heads["cls"][-1].weight):
        assert param.grad is not None and param.grad.abs().sum() > 0
    # Through adversarial_loss (training outputs reused, dropout on) the same holds.
    m.zero_grad(set_to_none=True)
    adversarial_loss(m, "cls", "classes", b, m("cls", b), smart_settings(epsilon=1e-2, sigma=1e-3)).backward()
    assert m.heads["cls"][-1].weight.grad.abs().sum() > 0


def test_dropout_off_computes_in_eval_mode_and_restores_training():
    torch.manual_seed(0)
    config = dataclasses.replace(ENCODER, hidden_dropout_prob=0.5)
    m = MultiTaskModel(MultiTaskConfig(config, TASKS, "shared")).train()
    with torch.no_grad():
        m.heads["cls"][-1].weight.zero_()
    # Constant model: zero with dropout off; with dropout on, the clean training outputs reused are constant too.
    assert adversarial_loss(m, "cls", "classes", batch(), None, smart_settings(dropout_off=True)).item() == 0.0
    assert m.training


def test_symmetric_kl_is_the_sum_of_both_kl_directions_in_fp32():
    torch.manual_seed(0)
    a, b = torch.randn(4, 3, dtype=torch.bfloat16), torch.randn(4, 3, dtype=torch.bfloat16)
    p, q = a.float().softmax(-1), b.float().softmax(-1)
    expected = ((q * (q.log() - p.log())).sum(-1) + (p * (p.log() - q.log())).sum(-1)).mean()
    got = symmetric_kl(a, b)
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, expected)
    assert symmetric_kl(a, a).item() == 0.0
    # A binary logit is read as two classes [0, z]; regression is squared error.
    z, y = torch.randn(5), torch.randn(5)
    torch.testing.assert_close(divergence("binary", z, y), symmetric_kl(torch.stack([0 * z, z], -1),
                                                                        torch.stack([0 * y, y], -1)))
    torch.testing.assert_close(divergence("regression", z, y), F.mse_loss(z, y))


def test_teacher_follows_its_update_rule_exactly():
    m = model()
    m.encoder.copies["shared"].embeddings.requires_grad_(False)  # a frozen part: never followed, never changes
    teacher = MomentumTeacher(m)
    start = {k: v.clone() for k, v in teacher.model.state_dict().items()}
    assert all(not p.requires_grad for p in teacher.model.parameters()) and not teacher.model.training
    betas = [0.99, 0.999]
    seen = []
    for beta in betas:
        with torch.no_grad():
            for p in m.parameters():
                if p.requires_grad:
                    p.add_(torch.randn_like(p))
        seen.append({k: v.detach().clone() for k, v in m.named_parameters()})
        teacher.update(m, beta)
    for name, value in teacher.model.named_parameters():
        if name.startswith("encoder.copies.shared.embeddings."):
            assert torch.equal(value, start[name])
            continue
        once = (1 - betas[0]) * seen[0][name] + betas[0] * start[name]
        twice = (1 - betas[1]) * seen[1][name] + betas[1] * once
        torch.testing.assert_close(value, twice, atol=1e-6, rtol=1e-6)
    # reset: the teacher starts again from the model.
    teacher.reset(m)
    assert all(torch.equal(v, m.state_dict()[k]) for k, v in teacher.state_dict().items())


def test_teacher_update_of_one_step_is_bit_exact():
    m = model()
    teacher = MomentumTeacher(m)
    before = {k: v.clone() for k, v in teacher.model.named_parameters()}
    with torch.no_grad():
        for p in m.parameters():
            p.mul_(1.5)
    teacher.update(m, 0.9)
    for name, param in m.named_parameters():
        expected = before[name].clone().mul_(0.9).add_(param.detach(), alpha=0.1)  # beta theta~ + (1 - beta) theta
        assert torch.equal(teacher.model.get_parameter(name), expected)


def test_beta_schedule_switches_after_its_fraction_of_the_steps():
    schedule = BetaSchedule(0.99, 0.999, 0.1)
    assert [schedule.at(step, 50) for step in (0, 4, 5, 49)] == [0.99, 0.99, 0.999, 0.999]


def test_proximal_term_is_zero_at_the_teacher_and_positive_away_from_it():
    m, b = model(), batch()
    teacher = MomentumTeacher(m)
    m.eval()  # the teacher runs without dropout
    assert proximal_loss("classes", m("cls", b), teacher.outputs("cls", b)).item() == 0.0
    with torch.no_grad():
        m.heads["cls"][-1].weight.add_(0.5)
    term = proximal_loss("classes", m("cls", b), teacher.outputs("cls", b))
    assert term.item() > 0
    term.backward()
    assert m.heads["cls"][-1].weight.grad.abs().sum() > 0
    assert all(p.grad is None for p in teacher.model.parameters())


# ---------------------------------------------------------------------------------------------
# The objective, through the interface


def smart_context(tmp_path, tokenizer_dir, *overrides):
    return objective_context(tmp_path, tokenizer_dir, ["smart.enabled=true", *overrides])


def stage(index=0, start=0, steps=10, tasks=("sst", "quora", "sts")):
    return SimpleNamespace(index=index, start=start, steps=steps, tasks=list(tasks))


def test_smart_adds_its_weighted_terms_to_the_supervised_loss_and_logs_them(tmp_path, tokenizer_dir):
    context = smart_context(tmp_path, tokenizer_dir, "tasks.sst.smart={adv_weight: 2.0, prox_weight: 0.0}")
    objective = Smart(context, {0: StageConfig()})
    model = TrainingModel(context.model.eval(), context.model)  # no dropout: both losses see the same outputs
    batch = context.streams["sst"].next_batch()
    torch.manual_seed(0)
    out = objective.loss(model, "sst", batch, stage=stage(), step=0)
    plain = Supervised(context, {0: StageConfig()}).loss(model, "sst", batch, stage=stage(), step=0)
    terms = objective.log_values(stage())["smart_loss"]
    assert set(terms) == {"sst.adv"} and terms["sst.adv"] > 0  # prox_weight 0: no proximal term for sst
    assert torch.equal(out.logged, plain.logged)
    assert out.loss.item() == pytest.approx(plain.loss.item() + 2.0 * terms["sst.adv"], rel=1e-5)
    assert objective.log_values(stage()) == {"smart_loss": {}}  # read at each record
    assert objective.describe(stage()) == "supervised + SMART (sst, quora, sts)"


def test_the_teacher_starts_from_the_stage_s_weights_and_follows_with_the_stage_s_beta(tmp_path, tokenizer_dir):
    context = smart_context(tmp_path, tokenizer_dir, "smart.beta=0.5", "smart.beta_final=0.9", "smart.beta_switch=0.2")
    objective = Smart(context, {1: StageConfig()})
    assert set(objective.state_parts()) == {"smart_losses", "smart_teacher"}
    module = context.model
    model, teacher = TrainingModel(module, module), objective.teacher.model
    weight = lambda m: m.heads["sst"][-1].weight  # noqa: E731
    with torch.no_grad():
        weight(module).add_(1.0)  # the weights moved on since the teacher was made (an earlier stage)
    objective.start_stage(model, stage(index=1, start=10, steps=10))
    assert torch.equal(weight(teacher), weight(module))
    before = weight(teacher).clone()
    with torch.no_grad():
        weight(module).add_(1.0)
    objective.after_step(model, stage=stage(index=1, start=10, steps=10), step=11)  # 2nd of 10 steps: beta 0.5
    assert torch.allclose(weight(teacher), before + 0.5)
    objective.after_step(model, stage=stage(index=1, start=10, steps=10), step=12)  # 3rd: past the switch, 0.9
    assert torch.allclose(weight(teacher), before + 0.5 + 0.1 * 0.5)


def test_no_teacher_without_a_proximal_term_and_none_under_deepspeed(tmp_path, tokenizer_dir):
    context = smart_context(tmp_path, tokenizer_dir, "smart.prox_weight=0")
    objective = Smart(context, {0: StageConfig()})
    assert objective.teacher is None and set(objective.state_parts()) == {"smart_losses"}
    objective.start_stage(TrainingModel(context.model, context.model), stage())  # nothing to reset
    context.deepspeed = True
    with pytest.raises(MtbertError, match="^smart: SMART is not available under DeepSpeed"):
        Smart(context, {0: StageConfig()})


def test_a_task_s_settings_override_the_recipe_s_and_a_stage_may_switch_smart_off(tmp_path, tokenizer_dir):
    context = smart_context(tmp_path, tokenizer_dir, "tasks.sts.smart={enabled: false}",
                            "tasks.quora.smart={epsilon: 0.5}")
    settings = stage_settings(context.recipe, StageConfig())
    assert list(settings) == ["sst", "quora"] and settings["quora"].epsilon == 0.5
    assert settings["sst"] == SmartSettings.of(context.recipe.smart)
    assert stage_settings(context.recipe, StageConfig(smart=False)) == {}
    assert stage_settings(context.recipe, StageConfig(objective="triplet")) == {}
