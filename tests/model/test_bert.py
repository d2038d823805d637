"""The hand-built encoder against Hugging Face's BertModel, plus its config and training behaviour."""

import pytest
import torch
import transformers

from mtbert.model.bert import (
    BertConfig,
    BertDropout,
    BertModel,
    BertModelOutput,
    BertSelfAttention,
    PackedMask,
    dropout,
    keep_mask,
    pack,
    padding_mask,
    unpack,
)

VOCAB = 100
LENGTHS = (7, 4, 2)
SEQ_LEN = max(LENGTHS)


def tiny_hf_config(**overrides: object) -> transformers.BertConfig:
    settings = dict(
        vocab_size=VOCAB,
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=128,
        max_position_embeddings=32,
        type_vocab_size=2,
    )
    settings.update(overrides)
    return transformers.BertConfig(**settings)


def tiny_config(**overrides: object) -> BertConfig:
    return BertConfig.from_dict(tiny_hf_config(**overrides).to_dict())


def randomized_hf_model(hf_config: transformers.BertConfig) -> transformers.BertModel:
    """A HF model whose weights are far from init, so attention and masking really matter."""
    torch.manual_seed(0)
    model = transformers.BertModel(hf_config)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.normal_(0.0, 0.3)
    return model.eval()


def padded_batch() -> dict[str, torch.Tensor]:
    """Three sequences of lengths 7, 4 and 2, padded with id 0, both segment ids in use."""
    generator = torch.Generator().manual_seed(1)
    input_ids = torch.randint(1, VOCAB, (len(LENGTHS), SEQ_LEN), generator=generator)
    attention_mask = torch.zeros_like(input_ids)
    for row, length in enumerate(LENGTHS):
        attention_mask[row, :length] = 1
    token_type_ids = torch.zeros_like(input_ids)
    token_type_ids[:, 2:] = 1
    return {
        "input_ids": input_ids * attention_mask,
        "attention_mask": attention_mask,
        "token_type_ids": token_type_ids * attention_mask,
    }


def our_copy_of(hf_model: transformers.BertModel) -> BertModel:
    model = BertModel(BertConfig.from_dict(hf_model.config.to_dict()))
    # strict: the parameter names are Hugging Face's own, with no renaming in between.
    model.load_state_dict(hf_model.state_dict(), strict=True)
    return model.eval()


# --- parity with transformers -----------------------------------------------------------


@pytest.mark.parametrize("unpad", [False, True], ids=["padded", "unpadded"])
@pytest.mark.parametrize("attn_implementation", ["eager", "sdpa"])
@pytest.mark.parametrize("hidden_act", ["gelu", "gelu_new", "gelu_pytorch_tanh", "relu"])
def test_matches_transformers_on_padded_batch(attn_implementation: str, hidden_act: str, unpad: bool):
    hf_model = randomized_hf_model(tiny_hf_config(hidden_act=hidden_act, attn_implementation=attn_implementation))
    model = our_copy_of(hf_model)
    model.unpad = unpad
    batch = padded_batch()
    with torch.no_grad():
        expected = hf_model(**batch)
        actual = model(**batch)
    real = batch["attention_mask"].bool()
    # Observed: 0.0 against sdpa, a few 1e-7 against eager (padded and unpadded alike).
    torch.testing.assert_close(actual.last_hidden_state[real], expected.last_hidden_state[real], atol=1e-5, rtol=0)
    if unpad:
        # Padding positions are never computed: they come back as zeros.
        assert torch.all(actual.last_hidden_state[~real] == 0)
    else:
        # Pad positions match too, because both implementations let a pad query attend to the real keys of its row.
        torch.testing.assert_close(actual.last_hidden_state, expected.last_hidden_state, atol=1e-5, rtol=0)
    torch.testing.assert_close(actual.pooler_output, expected.pooler_output, atol=1e-5, rtol=0)


def test_defaults_mean_no_padding_and_segment_zero():
    hf_model = randomized_hf_model(tiny_hf_config())
    model = our_copy_of(hf_model)
    input_ids = padded_batch()["input_ids"].clamp(min=1)
    with torch.no_grad():
        expected = hf_model(input_ids=input_ids)
        explicit = model(
            input_ids,
            attention_mask=torch.ones_like(input_ids),
            token_type_ids=torch.zeros_like(input_ids),
        )
        defaulted = model(input_ids)
    torch.testing.assert_close(defaulted.last_hidden_state, expected.last_hidden_state)
    torch.testing.assert_close(defaulted.last_hidden_state, explicit.last_hidden_state)


def test_parameter_names_are_the_hugging_face_checkpoint_keys():
    hf_config = tiny_hf_config()
    hf_keys = set(transformers.BertModel(hf_config).state_dict())
    ours = BertModel(BertConfig.from_dict(hf_config.to_dict()))
    assert set(ours.state_dict()) == hf_keys
    assert not any(key.endswith("position_ids") for key in ours.state_dict())
    without_pooler = BertModel(ours.config, add_pooling_layer=False)
    assert set(without_pooler.state_dict()) == {key for key in hf_keys if not key.startswith("pooler.")}


# --- the split forward used by layer-sharing plans --------------------------------------


def test_layer_by_layer_equals_forward():
    model = our_copy_of(randomized_hf_model(tiny_hf_config()))
    batch = padded_batch()
    with torch.no_grad():
        full = model(**batch)
        hidden = model.embed(batch["input_ids"], batch["token_type_ids"])
        mask = model.attention_mask_for(batch["attention_mask"])
        for layer in model.encoder.layer:
            hidden = layer(hidden, mask)
        pooled = model.pooler(hidden)
    torch.testing.assert_close(hidden, full.last_hidden_state, atol=0, rtol=0)
    torch.testing.assert_close(pooled, full.pooler_output, atol=0, rtol=0)


def test_packed_layer_loop_equals_forward_and_padded_loop():
    """The sequence a layer-sharing caller drives: embed, attention_mask_for, pack, any layers, unpack."""
    model = our_copy_of(randomized_hf_model(tiny_hf_config()))
    batch = padded_batch()
    real = batch["attention_mask"].bool()
    with torch.no_grad():
        full = model(**batch)
        hidden = model.embed(batch["input_ids"], batch["token_type_ids"])
        mask = model.attention_mask_for(batch["attention_mask"])
        packed, packed_mask = model.pack(hidden, mask)
        assert packed.shape == (sum(LENGTHS), 64) and isinstance(packed_mask, PackedMask)
        for layer in model.encoder.layer:
            packed = layer(packed, packed_mask)
        unpacked = model.unpack(packed, packed_mask)
        # One layer only, packed and padded: the same real rows.
        one_padded = model.encoder.layer[1](hidden, mask)
        one_packed = model.unpack(model.encoder.layer[1](*model.pack(hidden, mask)), packed_mask)
    assert unpacked.shape == full.last_hidden_state.shape
    torch.testing.assert_close(unpacked[real], full.last_hidden_state[real], atol=1e-5, rtol=0)
    torch.testing.assert_close(one_packed[real], one_padded[real], atol=1e-5, rtol=0)
    torch.testing.assert_close(model.pooler(unpacked), full.pooler_output, atol=1e-5, rtol=0)


def test_pack_unpack_round_trip_and_no_mask():
    hidden = torch.randn(3, 7, 5)
    mask = padding_mask(padded_batch()["attention_mask"])
    packed, packed_mask = pack(hidden, mask)
    assert packed.shape == (sum(LENGTHS), 5)
    assert packed_mask.positions.tolist() == [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 14, 15]
    assert packed_mask.starts.tolist() == [0, 7, 11]
    back = unpack(packed, packed_mask)
    real = mask[:, 0, 0]
    assert torch.equal(back[real], hidden[real]) and torch.all(back[~real] == 0)
    everything, all_real = pack(hidden, None)
    assert torch.equal(unpack(everything, all_real), hidden)


@pytest.mark.parametrize("hidden_act", ["gelu", "relu"])
def test_unpadded_gradients_equal_padded(hidden_act: str):
    """Training on packed tokens computes the same loss and gradients as the padded path (dropout off)."""
    config = tiny_config(hidden_act=hidden_act, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    torch.manual_seed(0)
    padded_model = BertModel(config).train()
    unpadded_model = BertModel(config).train()
    unpadded_model.load_state_dict(padded_model.state_dict())
    unpadded_model.unpad = True
    batch = padded_batch()
    real = batch["attention_mask"].bool()
    grads = []
    for model in (padded_model, unpadded_model):
        out = model(**batch)
        (out.last_hidden_state[real].square().mean() + out.pooler_output.sum()).backward()
        grads.append({name: p.grad for name, p in model.named_parameters()})
    for name, grad in grads[0].items():
        torch.testing.assert_close(grads[1][name], grad, atol=1e-5, rtol=1e-4, msg=name)


def test_unpadded_dropout_still_only_in_training():
    model = BertModel(tiny_config())
    model.unpad = True
    batch = padded_batch()
    model.train()
    assert not torch.equal(model(**batch).pooler_output, model(**batch).pooler_output)
    model.eval()
    with torch.no_grad():
        assert torch.equal(model(**batch).pooler_output, model(**batch).pooler_output)


@pytest.mark.parametrize("unpad", [False, True], ids=["padded", "unpadded"])
def test_first_token_only_matches_transformers_cls(unpad: bool):
    """The last layer run for [CLS] alone gives transformers' [CLS] vector and pooled output."""
    hf_model = randomized_hf_model(tiny_hf_config())
    model = our_copy_of(hf_model)
    model.unpad = unpad
    batch = padded_batch()
    with torch.no_grad():
        expected = hf_model(**batch)
        actual = model(**batch, first_token_only=True)
    assert actual.last_hidden_state.shape == (len(LENGTHS), 1, 64)
    torch.testing.assert_close(actual.last_hidden_state, expected.last_hidden_state[:, :1], atol=1e-5, rtol=0)
    torch.testing.assert_close(actual.pooler_output, expected.pooler_output, atol=1e-5, rtol=0)


@pytest.mark.parametrize("unpad", [False, True], ids=["padded", "unpadded"])
def test_first_token_only_gradients_equal_the_full_last_layer(unpad: bool):
    config = tiny_config(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    torch.manual_seed(0)
    full, shortcut = BertModel(config).train(), BertModel(config).train()
    shortcut.load_state_dict(full.state_dict())
    full.unpad = shortcut.unpad = unpad
    batch = padded_batch()
    grads = []
    for model, first_only in ((full, False), (shortcut, True)):
        out = model(**batch, first_token_only=first_only)
        (out.pooler_output.square().sum() + out.last_hidden_state[:, 0].sum()).backward()
        grads.append({name: p.grad for name, p in model.named_parameters()})
    for name, grad in grads[0].items():
        torch.testing.assert_close(grads[1][name], grad, atol=1e-5, rtol=1e-4, msg=name)


def test_layer_first_token_only_in_a_caller_driven_loop():
    model = our_copy_of(randomized_hf_model(tiny_hf_config()))
    batch = padded_batch()
    with torch.no_grad():
        full = model(**batch).last_hidden_state
        hidden, mask = model.pack(model.embed(batch["input_ids"], batch["token_type_ids"]),
                                  model.attention_mask_for(batch["attention_mask"]))
        hidden = model.encoder.layer[0](hidden, mask)
        first = model.encoder.layer[1](hidden, mask, first_token_only=True)
    torch.testing.assert_close(first, full[:, :1], atol=1e-5, rtol=0)


def test_padding_mask_shape_and_meaning():
    attention_mask = torch.tensor([[1, 1, 0], [1, 0, 0]])
    mask = padding_mask(attention_mask)
    assert mask.dtype == torch.bool
    assert mask.shape == (2, 1, 1, 3)
    assert mask[:, 0, 0].tolist() == [[True, True, False], [True, False, False]]
    assert padding_mask(None) is None


def test_output_without_pooler():
    model = BertModel(tiny_config(), add_pooling_layer=False).eval()
    output = model(padded_batch()["input_ids"])
    assert isinstance(output, BertModelOutput)
    assert output.last_hidden_state.shape == (len(LENGTHS), SEQ_LEN, 64)
    assert output.pooler_output is None


def test_sequence_longer_than_position_table_is_a_value_error():
    model = BertModel(tiny_config(max_position_embeddings=4))
    with pytest.raises(ValueError, match="max_position_embeddings"):
        model(torch.ones(1, 5, dtype=torch.long))


# --- training behaviour -----------------------------------------------------------------


def test_gradient_reaches_the_embeddings():
    model = BertModel(tiny_config()).train()
    output = model(**padded_batch())
    (output.last_hidden_state.sum() + output.pooler_output.sum()).backward()
    word_grad = model.embeddings.word_embeddings.weight.grad
    assert word_grad is not None
    assert word_grad.abs().sum() > 0
    # The pad row takes no gradient, as with padding_idx in Hugging Face's model.
    assert word_grad[0].abs().sum() == 0
    assert all(p.grad is not None for p in model.parameters())


def test_dropout_only_in_training():
    model = BertModel(tiny_config())
    batch = padded_batch()
    model.train()
    first = model(**batch).last_hidden_state
    second = model(**batch).last_hidden_state
    assert not torch.equal(first, second)
    model.eval()
    with torch.no_grad():
        first = model(**batch).last_hidden_state
        second = model(**batch).last_hidden_state
    assert torch.equal(first, second)


def test_initialisation_follows_bert():
    model = BertModel(BertConfig(hidden_size=64, num_attention_heads=4, num_hidden_layers=1))
    word = model.embeddings.word_embeddings.weight
    assert torch.all(word[0] == 0)
    assert word[1:].std().item() == pytest.approx(0.02, rel=0.05)
    query = model.encoder.layer[0].attention.self.query
    assert torch.all(query.bias == 0)
    norm = model.encoder.layer[0].output.LayerNorm
    assert torch.all(norm.weight == 1)
    assert torch.all(norm.bias == 0)


# --- config ------------------------------------------------------------------------------


def test_config_defaults_are_bert_base():
    config = BertConfig()
    assert (config.hidden_size, config.num_hidden_layers, config.num_attention_heads) == (
        768,
        12,
        12,
    )
    assert (config.intermediate_size, config.vocab_size, config.layer_norm_eps) == (
        3072,
        30522,
        1e-12,
    )


def test_from_dict_ignores_unknown_keys_and_accepts_int_for_float():
    config = BertConfig.from_dict(
        {"hidden_size": 32, "num_attention_heads": 2, "use_cache": True, "hidden_dropout_prob": 0}
    )
    assert config.hidden_size == 32
    assert config.hidden_dropout_prob == 0.0
    assert isinstance(config.hidden_dropout_prob, float)


@pytest.mark.parametrize(
    ("key", "value"),
    [("hidden_size", "768"), ("num_hidden_layers", 2.0), ("hidden_act", 3), ("vocab_size", True)],
)
def test_from_dict_wrong_type_names_the_key(key: str, value: object):
    with pytest.raises(ValueError, match=key):
        BertConfig.from_dict({key: value})


def test_heads_must_divide_hidden_size():
    with pytest.raises(ValueError, match="num_attention_heads"):
        BertConfig.from_dict({"hidden_size": 100, "num_attention_heads": 12})


def test_unsupported_activation_and_position_scheme_are_refused():
    with pytest.raises(ValueError, match="swish"):
        BertConfig(hidden_act="swish")
    with pytest.raises(ValueError, match="position_embedding_type"):
        BertConfig.from_dict({"position_embedding_type": "relative_key"})


def test_to_dict_is_a_bert_config_for_transformers():
    config = BertConfig(hidden_size=32, num_attention_heads=2, hidden_act="gelu_new")
    as_dict = config.to_dict()
    assert as_dict["model_type"] == "bert"
    assert as_dict["architectures"] == ["BertModel"]
    hf_config = transformers.BertConfig(**as_dict)
    assert hf_config.hidden_size == 32
    assert hf_config.hidden_act == "gelu_new"
    assert BertConfig.from_dict(hf_config.to_dict()) == config


# --- cheaper dropout masks and the fused query-key-value product -------------------------


def set_switches(model: BertModel, fused_qkv: bool, cheap_masks: bool) -> None:
    for module in model.modules():
        if isinstance(module, BertSelfAttention):
            module.fused_qkv = fused_qkv
        elif isinstance(module, BertDropout):
            module.cheap_masks = cheap_masks


def test_keep_mask_drops_at_the_rate_asked():
    torch.manual_seed(0)
    mask = keep_mask((400, 1000), 0.1, torch.device("cpu"))
    assert mask.dtype == torch.bool and mask.shape == (400, 1000)
    # 400,000 draws: the standard error of the rate is 4.7e-4.
    assert abs(1 - mask.float().mean().item() - 0.1) < 2.5e-3
    torch.manual_seed(0)
    assert torch.equal(keep_mask((400, 1000), 0.1, torch.device("cpu")), mask)  # the seed decides the mask
    assert keep_mask((3, 5), 0.5, torch.device("cpu")).shape == (3, 5)  # an odd count of lanes


def test_cheap_dropout_scales_the_kept_and_passes_gradients_through_the_mask():
    x = torch.randn(64, 32, requires_grad=True)
    torch.manual_seed(1)
    y = dropout(x, 0.25, training=True, cheap_masks=True)
    kept = y != 0
    assert 0.6 < kept.float().mean() < 0.9
    torch.testing.assert_close(y[kept], x[kept] / 0.75)
    y.backward(torch.ones_like(y))
    torch.testing.assert_close(x.grad, kept.float() / 0.75)
    assert dropout(x, 0.25, training=False) is x and dropout(x, 0.0, training=True) is x


def test_cheap_dropout_in_bf16_scales_in_full_precision():
    """Under bf16 autocast the kept values are x / (1 - p) rounded once, not x times a scale rounded to bf16
    (1.109 instead of 1.111: every kept activation 0.16% low)."""
    x = torch.linspace(-4, 4, 4096, dtype=torch.bfloat16)
    torch.manual_seed(2)
    y = dropout(x, 0.1, training=True, cheap_masks=True)
    kept = y != 0
    expected = (x.float() * (65536 / (65536 - round(0.1 * 65536)))).bfloat16()
    assert y.dtype == torch.bfloat16 and torch.equal(y[kept], expected[kept])


def test_fused_qkv_equals_three_products_padded_and_packed_in_training():
    """The same weights and the same dropout masks (same seed): the fused product gives the same numbers."""
    model = BertModel(tiny_config())
    batch = padded_batch()
    for unpad in (False, True):
        model.unpad = unpad
        outputs = []
        for fused in (False, True):
            set_switches(model, fused_qkv=fused, cheap_masks=True)
            torch.manual_seed(3)
            outputs.append(model.train()(**batch).last_hidden_state)
        torch.testing.assert_close(outputs[1], outputs[0], atol=1e-6, rtol=0)


class WrappedLinear(torch.nn.Module):
    """A stand-in for an adapter's wrapper of a projection (peft's LoRA layer): not a plain nn.Linear."""

    def __init__(self, linear: torch.nn.Linear):
        super().__init__()
        self.base_layer = linear
        self.extra = torch.nn.Linear(linear.in_features, linear.out_features, bias=False)

    def forward(self, x):
        return self.base_layer(x) + self.extra(x)


def test_fused_qkv_steps_aside_for_a_wrapped_projection():
    model = BertModel(tiny_config()).eval()
    batch = padded_batch()
    for layer in model.encoder.layer:
        layer.attention.self.value = WrappedLinear(layer.attention.self.value)
    outputs = []
    for fused in (False, True):
        set_switches(model, fused_qkv=fused, cheap_masks=True)
        with torch.no_grad():
            outputs.append(model(**batch).last_hidden_state)
    torch.testing.assert_close(outputs[1], outputs[0], atol=0, rtol=0)
    with torch.no_grad():
        for layer in model.encoder.layer:  # the wrapper's own forward runs: its extra weights change the result
            layer.attention.self.value.extra.weight.add_(0.5)
        assert not torch.allclose(model(**batch).last_hidden_state, outputs[0])


def test_attention_with_cheap_masks_is_masked_softmax_attention():
    """Training with masks of ~no drops (p=1e-9, below one lane: torch's own dropout) through the explicit
    attention math equals eval mode's fused attention."""
    hf_model = randomized_hf_model(tiny_hf_config(attention_probs_dropout_prob=1e-9, hidden_dropout_prob=0.0))
    model = our_copy_of(hf_model)
    set_switches(model, fused_qkv=True, cheap_masks=True)
    batch = padded_batch()
    real = batch["attention_mask"].bool()
    with torch.no_grad():
        expected = hf_model(**batch).last_hidden_state
        for unpad in (False, True):
            model.unpad = unpad
            actual = model.train()(**batch).last_hidden_state
            torch.testing.assert_close(actual[real], expected[real], atol=1e-5, rtol=0)
