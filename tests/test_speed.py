import copy

import pytest
import torch

from mtbert import speed
from mtbert.config import SpeedConfig, load_recipe
from mtbert.model.bert import BertConfig, BertDropout, BertSelfAttention
from mtbert.model.multitask import MultiTaskConfig, MultiTaskModel, TaskHeadSpec
from mtbert.training.loop import train
from mtbert.training.setup import optimizer_groups

from helpers import write_recipe


def tiny_model():
    torch.manual_seed(0)
    encoder = BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                         intermediate_size=32, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    # eval(): no dropout anywhere (heads included), so two copies see identical gradients.
    return MultiTaskModel(MultiTaskConfig(encoder, {"t": TaskHeadSpec(kind="classes", num_outputs=3)})).eval()


def test_optimizer_options():
    assert speed.optimizer_options(SpeedConfig(), "adamw") == {"fused": True}
    assert speed.optimizer_options(SpeedConfig(fused_optimizer=False), "adamw") == {}
    assert speed.optimizer_options(SpeedConfig(), "mtbert_adamw") == {}


def test_fused_adamw_equals_the_default_implementation():
    """The fused kernel is a faster way to the same update: 30 steps agree to float rounding."""
    models = [tiny_model(), tiny_model()]
    optimizers = [torch.optim.AdamW(optimizer_groups(m, 0.01), lr=1e-3, **options)
                  for m, options in zip(models, ({}, {"fused": True}))]
    ids = torch.randint(1, 50, (4, 6), generator=torch.Generator().manual_seed(0))
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "token_type_ids": torch.zeros_like(ids)}
    for _ in range(30):
        for model, optimizer in zip(models, optimizers):
            model("t", batch).sum().backward()
            optimizer.step()
            optimizer.zero_grad()
    # Observed: at most 2e-6, on the attention key biases, whose true gradient is 0 (softmax ignores a shift
    # shared by all keys): Adam scales their rounding-noise gradients up to steps of size lr either way.
    for (name, a), b in zip(models[0].named_parameters(), models[1].parameters()):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5, msg=name)


def test_prepare_model_sets_the_switches_and_keeps_names():
    model = tiny_model()
    names = list(model.state_dict())
    speed.prepare_model(model, SpeedConfig(unpad=True, compile=True, fused_qkv=True, cheap_dropout=True))
    assert model.encoder.unpad
    assert all(m.fused_qkv for m in model.modules() if isinstance(m, BertSelfAttention))
    assert all(m.cheap_masks for m in model.modules() if isinstance(m, BertDropout))
    assert list(model.state_dict()) == names  # compiled in place: checkpoints keep their keys
    speed.prepare_model(model, SpeedConfig(unpad=False, fused_qkv=False, cheap_dropout=False))
    assert not model.encoder.unpad
    attention = [m for m in model.modules() if isinstance(m, BertSelfAttention)]
    dropouts = [m for m in model.modules() if isinstance(m, BertDropout)]
    assert attention and dropouts
    assert not any(m.fused_qkv for m in attention) and not any(m.cheap_masks for m in dropouts)


def test_bf16_falls_back_to_fp32_with_a_warning_where_unsupported(monkeypatch):
    monkeypatch.setattr(speed, "bf16_supported", lambda device: False)
    with pytest.warns(UserWarning, match="bf16"):
        assert speed.use_bf16(SpeedConfig(bf16=True), "cpu") is False
    assert speed.mixed_precision(SpeedConfig(bf16=False)) is None


def test_real_tokens_counts_both_sides():
    batch = {"input_ids": torch.ones(2, 3), "attention_mask": torch.tensor([[1, 1, 0], [1, 0, 0]]),
             "attention_mask_b": torch.tensor([[1, 1], [1, 1]])}
    assert speed.real_tokens(batch) == 7


@pytest.mark.parametrize("key, value, message", [("speed.length_pool", -1, "length_pool"),
                                                  ("speed.eval_max_tokens", 0, "eval_max_tokens"),
                                                  ("speed.unpadd", True, "did you mean 'unpad'")])
def test_bad_speed_settings_name_the_key(tmp_path, tokenizer_dir, key, value, message):
    from mtbert.errors import MtbertError

    with pytest.raises(MtbertError, match=message):
        load_recipe(write_recipe(tmp_path, tokenizer_dir), [f"{key}={value}"])


def test_unpadded_training_learns_the_same_model(tmp_path, tokenizer_dir):
    """Same batches (grouping off), no dropout: training on packed tokens ends where the padded path does."""
    weights = {}
    for unpad in (False, True):
        recipe = load_recipe(write_recipe(tmp_path, tokenizer_dir),
                             [f"output_dir={tmp_path / str(unpad)}", "train.max_steps=6", "model.dropout=0.0",
                              "speed.length_pool=0", f"speed.unpad={str(unpad).lower()}",
                              "tasks.sst.head.dropout=0.0", "tasks.quora.head.dropout=0.0",
                              "tasks.sts.head.dropout=0.0", "eval.keep_best=false"])
        train(recipe)
        from safetensors.torch import load_file
        weights[unpad] = load_file(tmp_path / str(unpad) / "model.safetensors")
    for key, value in weights[False].items():
        torch.testing.assert_close(weights[True][key], value, atol=2e-5, rtol=1e-4, msg=key)


@pytest.fixture
def fresh_accelerate_state():
    """Accelerate keeps one process-wide state; a test that asks for another precision starts from scratch."""
    from accelerate.state import AcceleratorState, GradientState

    AcceleratorState._reset_state(True)
    GradientState._reset_state()
    yield
    AcceleratorState._reset_state(True)
    GradientState._reset_state()


@pytest.mark.parametrize("overrides", [["speed.length_pool=2", "speed.eval_max_tokens=64"],
                                       ["speed.bf16=true"], ["speed.fused_optimizer=false", "speed.unpad=false"]])
def test_speed_options_train(tmp_path, tokenizer_dir, overrides, fresh_accelerate_state):
    recipe = load_recipe(write_recipe(tmp_path, tokenizer_dir), overrides + ["train.max_steps=6"])
    best = train(recipe)
    assert 0 <= best["overall"] <= 1


def test_copy_of_model_is_unaffected():
    # prepare_model changes the model it is given, not a template: two models, two settings.
    a = tiny_model()
    b = copy.deepcopy(a)
    speed.prepare_model(a, SpeedConfig(unpad=True))
    speed.prepare_model(b, SpeedConfig(unpad=False))
    assert a.encoder.unpad and not b.encoder.unpad
