import dataclasses

import pytest
import torch
from typer.testing import CliRunner

from mtbert.cli import app
from mtbert.config import load_recipe
from mtbert.errors import MtbertError
from mtbert.model.bert import BertConfig, BertPooler
from mtbert.model.heads import HeadSpec
from mtbert.model.multitask import MultiTaskConfig, MultiTaskModel, TaskHeadSpec
from mtbert.model.pooling import POOLER_NAMES, POOLERS, build_pooler

from helpers import write_recipe

H = 6
MODULE_POOLERS = [name for name in POOLER_NAMES if name != "cls"]
NEW_POOLERS = ("mean_max", "swap", "stochastic")
ENCODER_OF_WIDTH_H = BertConfig(vocab_size=10, hidden_size=H, num_hidden_layers=1, num_attention_heads=2,
                                intermediate_size=8)


def inputs(lengths=(5, 3), pad_to=None, pad_value=None, seed=0):
    """Random hidden states (B, T, H) and the mask; pads hold `pad_value` (random when None)."""
    pad_to = pad_to or max(lengths)
    generator = torch.Generator().manual_seed(seed)
    real = torch.randn(len(lengths), max(lengths), H, generator=generator)
    hidden = torch.randn(len(lengths), pad_to, H, generator=generator) * 5
    if pad_value is not None:
        hidden.fill_(pad_value)
    mask = torch.zeros(len(lengths), pad_to, dtype=torch.long)
    for i, n in enumerate(lengths):
        hidden[i, :n] = real[i, :n]
        mask[i, :n] = 1
    return hidden, mask


def pooler(name, train=False):
    torch.manual_seed(0)
    module = build_pooler(name, H)
    return module.train(train)


def test_registry_lists_the_new_poolers():
    assert set(NEW_POOLERS) <= set(POOLERS) and set(NEW_POOLERS) <= set(POOLER_NAMES)
    assert build_pooler("cls", H) is None


@pytest.mark.parametrize("name", MODULE_POOLERS)
@pytest.mark.parametrize("train", [False, True])
def test_output_shape(name, train):
    hidden, mask = inputs()
    out = pooler(name, train)(hidden, mask)
    assert out.shape == (2, H) and torch.isfinite(out).all()


@pytest.mark.parametrize("name", MODULE_POOLERS)
@pytest.mark.parametrize("pad_value", [None, 1e4, -1e4])
def test_padding_changes_nothing_in_eval(name, pad_value):
    module = pooler(name)
    short = module(*inputs((5, 3)))
    padded = module(*inputs((5, 3), pad_to=9, pad_value=pad_value))
    torch.testing.assert_close(short, padded)


@pytest.mark.parametrize("name", MODULE_POOLERS)
def test_padding_changes_nothing_in_training_with_a_fixed_seed(name):
    # Every pooler here is deterministic in training except stochastic, whose draws depend on the seed only.
    module = pooler(name, train=True)
    torch.manual_seed(7)
    short = module(*inputs((5, 3)))
    torch.manual_seed(7)
    padded = module(*inputs((5, 3), pad_to=9))
    torch.testing.assert_close(short, padded)


def grad_of_hidden(name, train=False, pad_to=8):
    hidden, mask = inputs((5, 3), pad_to=pad_to)
    hidden.requires_grad_(True)
    module = pooler(name, train)
    torch.manual_seed(3)
    # Random upstream weights so no gradient cancels by symmetry.
    upstream = torch.randn(2, H, generator=torch.Generator().manual_seed(1))
    (module(hidden, mask) * upstream).sum().backward()
    return hidden, mask, hidden.grad


@pytest.mark.parametrize("name", MODULE_POOLERS)
@pytest.mark.parametrize("train", [False, True])
def test_pads_get_no_gradient(name, train):
    _, mask, grad = grad_of_hidden(name, train)
    assert (grad[~mask.bool()] == 0).all()


@pytest.mark.parametrize("name", ["mean", "swap", "mean_max"])
@pytest.mark.parametrize("train", [False, True])
def test_every_real_token_gets_gradient(name, train):
    # mean_max: through its sum part; swap: through the softmax weights and the values.
    _, mask, grad = grad_of_hidden(name, train)
    real = grad[mask.bool()]  # (real tokens, H)
    assert (real.abs().sum(-1) > 0).all()
    if name != "mean_max":
        assert (real != 0).all()  # every dimension of every real token


@pytest.mark.parametrize("name", ["cls", "cls_raw"])
def test_first_token_poolers_see_and_train_only_the_first_token(name):
    # `cls` is the encoder's BertPooler (dense + tanh on [CLS]); cls_raw the [CLS] vector itself.
    torch.manual_seed(0)
    module = BertPooler(ENCODER_OF_WIDTH_H) if name == "cls" else build_pooler(name, H)
    apply = (lambda hidden, mask: module(hidden)) if name == "cls" else module
    hidden, mask = inputs((5, 3))
    out = apply(hidden, mask)
    assert out.shape == (2, H)
    torch.testing.assert_close(apply(*inputs((5, 3), pad_to=9)), out)  # appended pads change nothing
    changed = hidden.clone()
    changed[:, 1:] += 1.0  # every token but [CLS]
    torch.testing.assert_close(apply(changed, mask), out)
    hidden.requires_grad_(True)
    apply(hidden, mask).sum().backward()
    assert (hidden.grad[:, 1:] == 0).all() and (hidden.grad[:, 0] != 0).any(-1).all()


def test_max_gradient_reaches_only_the_argmax_token():
    hidden, mask, grad = grad_of_hidden("max")
    masked = hidden.detach().masked_fill(~mask.bool().unsqueeze(-1), float("-inf"))
    winners = torch.zeros_like(grad, dtype=torch.bool).scatter_(1, masked.argmax(1, keepdim=True), True)
    assert (grad[~winners] == 0).all() and (grad[winners] != 0).all()


def test_swap_is_a_per_dimension_softmax_average_close_to_max():
    hidden, mask = inputs((4, 2), pad_to=6)
    out = pooler("swap")(hidden, mask)
    for i, n in enumerate((4, 2)):
        real = hidden[i, :n]  # (n, H)
        torch.testing.assert_close(out[i], (real.softmax(0) * real).sum(0))
    # Spread-out activations: the softmax concentrates on the maximum.
    sharp = pooler("swap")(hidden * 50, mask)
    torch.testing.assert_close(sharp, pooler("max")(hidden * 50, mask), atol=1e-3, rtol=1e-3)


def test_mean_max_uses_the_sum_and_the_largest_norm_token():
    module = pooler("mean_max")
    hidden, mask = inputs((5, 3), pad_to=7, pad_value=100.0)  # pads have the largest norm: must not win
    out = module(hidden, mask)
    for i, n in enumerate((5, 3)):
        real = hidden[i, :n]
        largest = real[real.norm(dim=-1).argmax()]
        expected = torch.tanh(module.dense(torch.cat([real.sum(0), largest])))
        torch.testing.assert_close(out[i], expected)
    assert module.dense.in_features == 2 * H and module.dense.out_features == H


def test_stochastic_eval_is_the_deterministic_weighted_average():
    module = pooler("stochastic")
    hidden, mask = inputs((5, 3), pad_to=6)
    first, second = module(hidden, mask), module(hidden, mask)
    assert torch.equal(first, second)
    for i, n in enumerate((5, 3)):
        real = hidden[i, :n]  # (n, H)
        weights = real.relu()
        # Dimensions with no positive value: uniform over the real tokens.
        weights = torch.where(weights.sum(0) > 0, weights, torch.ones_like(weights))
        torch.testing.assert_close(first[i], (weights / weights.sum(0) * real).sum(0))


def test_stochastic_training_draws_real_token_values_at_random():
    module = pooler("stochastic", train=True)
    hidden, mask = inputs((5, 3), pad_to=6, pad_value=123.0)
    draws = torch.stack([module(hidden, mask) for _ in range(50)])  # (50, B, H)
    assert not (draws == draws[0]).all()  # random in training
    for i, n in enumerate((5, 3)):
        real = hidden[i, :n]  # (n, H)
        # Each output value is one real token's value of that dimension, never a pad's.
        assert (draws[:, i].unsqueeze(1) == real.unsqueeze(0)).any(1).all()
        # Only positive values are drawn where a dimension has any.
        has_positive = (real > 0).any(0)  # (H,)
        assert (draws[:, i][:, has_positive] > 0).all()


def test_stochastic_training_frequencies_follow_the_activations():
    module = pooler("stochastic", train=True)
    # One dimension with relu weights 1:3 (a negative token never drawn), one all negative (uniform).
    example = torch.tensor([[1.0, -2.0], [3.0, -1.0], [-5.0, -3.0]])  # (T=3, H=2)
    n = 20000
    torch.manual_seed(0)
    out = module(example.expand(n, 3, 2), torch.ones(n, 3, dtype=torch.long))  # (n, 2)
    assert abs((out[:, 0] == 3.0).float().mean().item() - 0.75) < 0.02
    assert (out[:, 0] != -5.0).all()
    for value in (-2.0, -1.0, -3.0):
        assert abs((out[:, 1] == value).float().mean().item() - 1 / 3) < 0.02


def test_stochastic_training_gradient_reaches_exactly_the_sampled_values():
    hidden, mask, grad = grad_of_hidden("stochastic", train=True)
    # One sampled token per (example, dimension), and it is a real one.
    assert ((grad != 0).sum(1) == 1).all()
    assert (grad[~mask.bool()] == 0).all()


def test_bad_pooler_name_lists_the_known_names():
    with pytest.raises(ValueError, match="unknown pooler 'meen'") as info:
        build_pooler("meen", H)
    for name in POOLER_NAMES:
        assert name in str(info.value)


@pytest.mark.parametrize("command, where", [(["validate", "RECIPE"], "recipe"),
                                            (["train", "RECIPE", "tasks.sst.pooler=meen"], "override")])
def test_bad_pooler_is_one_line_from_the_cli(tmp_path, tokenizer_dir, command, where):
    pooler = "meen" if where == "recipe" else "mean"
    recipe = write_recipe(tmp_path, tokenizer_dir, tasks={"sst": {"pooler": pooler}})
    result = CliRunner().invoke(app, [str(recipe) if arg == "RECIPE" else arg for arg in command])
    assert result.exit_code == 2 and "Traceback" not in result.output, result.output
    assert len(result.output.strip().splitlines()) == 1, result.output
    assert "tasks.sst.pooler" in result.output and "did you mean 'mean'?" in result.output
    assert not (tmp_path / "ckpt").exists()  # nothing trained, nothing written


def test_recipe_with_a_bad_pooler_suggests_the_nearest(tmp_path):
    path = tmp_path / "r.yaml"
    path.write_text("model: {init: random, tokenizer: x}\ntasks: {sst: {pooler: meen}}\n")
    with pytest.raises(MtbertError, match=r"tasks\.sst\.pooler.*did you mean 'mean'\?"):
        load_recipe(path)


@pytest.mark.parametrize("name", NEW_POOLERS)
def test_recipe_accepts_the_new_poolers(tmp_path, name):
    path = tmp_path / "r.yaml"
    path.write_text(f"model: {{init: random, tokenizer: x}}\ntasks: {{sst: {{pooler: {name}}}}}\n")
    assert load_recipe(path).tasks["sst"].pooler == name


ENCODER = BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                     intermediate_size=32, max_position_embeddings=64)


def token_batch(lengths=(5, 3), suffix=""):
    ids = torch.zeros(len(lengths), max(lengths), dtype=torch.long)
    for i, n in enumerate(lengths):
        ids[i, :n] = torch.arange(5, 5 + n) + i
    return {f"input_ids{suffix}": ids, f"attention_mask{suffix}": (ids != 0).long(),
            f"token_type_ids{suffix}": torch.zeros_like(ids)}


@pytest.mark.parametrize("name", POOLER_NAMES)
@pytest.mark.parametrize("train", [False, True])
def test_multitask_model_builds_and_runs_with_each_pooler(name, train):
    torch.manual_seed(0)
    tasks = {"cls3": TaskHeadSpec(kind="classes", num_outputs=3, pooler=name,
                                  head=HeadSpec(type="mlp", style="ln_dropout_relu")),
             "reg": TaskHeadSpec(kind="regression", num_outputs=1, encoding="siamese", pooler=name)}
    m = MultiTaskModel(MultiTaskConfig(ENCODER, tasks)).train(train)
    logits = m("cls3", token_batch())
    score = m("reg", token_batch() | token_batch((2, 4), suffix="_b"))
    assert logits.shape == (2, 3) and score.shape == (2,)
    (logits.sum() + score.sum()).backward()
    assert m.encoder_for("cls3").embeddings.word_embeddings.weight.grad is not None
    if name == "mean_max":
        # The pooler's own dense layer: 2H -> H on the encoder's width, and it trains.
        assert m.poolers["cls3"].dense.weight.shape == (16, 32)
        assert m.poolers["cls3"].dense.weight.grad is not None


def test_stochastic_pooler_in_the_model_is_random_in_training_and_deterministic_in_eval():
    torch.manual_seed(0)
    tasks = {"t": TaskHeadSpec(kind="classes", num_outputs=3, pooler="stochastic")}
    config = dataclasses.replace(ENCODER, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    m = MultiTaskModel(MultiTaskConfig(config, tasks))
    batch = token_batch((5, 4))
    m.train()
    m.heads["t"].eval()  # no dropout anywhere: only the pooler can make two training passes differ
    assert not torch.equal(m("t", batch), m("t", batch))
    m.eval()
    first = m("t", batch)
    torch.manual_seed(123)  # eval does not draw: another seed gives the same output
    assert torch.equal(first, m("t", batch))


def test_the_recipe_accepts_exactly_the_registered_poolers():
    import typing

    from mtbert.config import TaskConfig

    assert set(typing.get_args(typing.get_type_hints(TaskConfig)["pooler"])) == set(POOLER_NAMES)
