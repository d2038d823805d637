import pytest
import torch
from torch import nn

from mtbert.config import HeadConfig, TaskConfig, load_recipe
from mtbert.errors import MtbertError
from mtbert.model.bert import BertConfig
from mtbert.model.heads import HEAD_STYLES, HeadSpec, build_head
from mtbert.model.multitask import MultiTaskConfig, MultiTaskModel, TaskHeadSpec
from mtbert.tasks import resolve_task
from mtbert.training.setup import head_spec

# What follows each hidden Linear, by style (the head starts with input Dropout and ends with the output Linear).
STACKS = {
    "act_dropout": [nn.ReLU, nn.Dropout],  # with activation=relu below
    "ln_dropout_relu": [nn.LayerNorm, nn.Dropout, nn.ReLU],
    "gelu_dropout": [nn.GELU, nn.Dropout],
}


def test_styles_are_the_documented_ones():
    assert set(HEAD_STYLES) == set(STACKS)
    assert HeadSpec().style == HeadConfig().style == "act_dropout"


@pytest.mark.parametrize("style", HEAD_STYLES)
@pytest.mark.parametrize("layers", [1, 3])
def test_each_style_builds_its_layer_sequence(style, layers):
    head = build_head(HeadSpec(type="mlp", layers=layers, hidden_size=8, activation="relu", style=style), 12, 5)
    expected = [nn.Dropout] + ([nn.Linear] + STACKS[style]) * layers + [nn.Linear]
    assert [type(module) for module in head] == expected
    linears = [module for module in head if isinstance(module, nn.Linear)]
    assert linears[0].in_features == 12 and all(lin.out_features == 8 for lin in linears[:-1])
    assert linears[-1].in_features == 8 and linears[-1].out_features == 5
    if style == "ln_dropout_relu":
        assert all(module.normalized_shape == (8,) for module in head if isinstance(module, nn.LayerNorm))
    assert build_head(HeadSpec(type="mlp", style=style), 12, 5).eval()(torch.randn(4, 12)).shape == (4, 5)


def test_act_dropout_keeps_the_configured_activation():
    head = build_head(HeadSpec(type="mlp", activation="tanh"), 6, 2)
    assert [type(module) for module in head] == [nn.Dropout, nn.Linear, nn.Tanh, nn.Dropout, nn.Linear]


@pytest.mark.parametrize("style", HEAD_STYLES)
def test_linear_head_ignores_style(style):
    head = build_head(HeadSpec(type="linear", style=style), 6, 2)
    assert [type(module) for module in head] == [nn.Dropout, nn.Linear]


def test_unknown_style_errors():
    with pytest.raises(ValueError, match="unknown head style 'ln_relu'; known: act_dropout, ln_dropout_relu"):
        build_head(HeadSpec(type="mlp", style="ln_relu"), 6, 2)


def test_recipe_checks_the_style(tmp_path):
    path = tmp_path / "r.yaml"
    text = "model: {init: random, tokenizer: x}\ntasks: {sst: {head: {type: mlp, style: %s}}}\n"
    path.write_text(text % "gelu_dropout")
    assert load_recipe(path).tasks["sst"].head.style == "gelu_dropout"
    path.write_text(text % "gelu_droput")
    with pytest.raises(MtbertError, match=r"tasks\.sst\.head\.style.*did you mean 'gelu_dropout'\?"):
        load_recipe(path)


def test_head_spec_passes_the_style_through():
    task = resolve_task("sst", TaskConfig(head=HeadConfig(type="mlp", layers=2, style="ln_dropout_relu")))
    spec = head_spec(task)
    assert spec.head == HeadSpec(type="mlp", layers=2, style="ln_dropout_relu")


ENCODER = BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                     intermediate_size=32, max_position_embeddings=64)


def test_config_round_trips_a_head_style():
    tasks = {"t": TaskHeadSpec(kind="classes", num_outputs=3, pooler="swap",
                               head=HeadSpec(type="mlp", layers=2, hidden_size=8, style="ln_dropout_relu")),
             "u": TaskHeadSpec(kind="binary", num_outputs=1, pooler="mean_max",
                               head=HeadSpec(type="mlp", style="gelu_dropout"))}
    config = MultiTaskConfig(ENCODER, tasks)
    data = config.to_dict()
    assert data["tasks"]["t"]["head"]["style"] == "ln_dropout_relu"
    again = MultiTaskConfig.from_dict(data)
    assert again == config
    model = MultiTaskModel(again)
    assert any(isinstance(module, nn.LayerNorm) for module in model.heads["t"])


def test_config_without_a_style_reads_as_the_old_head():
    # Models exported before `style` existed have no such key.
    data = MultiTaskConfig(ENCODER, {"t": TaskHeadSpec(kind="classes", num_outputs=3)}).to_dict()
    del data["tasks"]["t"]["head"]["style"]
    assert MultiTaskConfig.from_dict(data).tasks["t"].head.style == "act_dropout"
