import pytest
import torch

from mtbert.model.bert import BertConfig
from mtbert.model.heads import HeadSpec
from mtbert.model.multitask import MultiTaskConfig, MultiTaskModel, TaskHeadSpec
from mtbert.model.pooling import POOLER_NAMES

ENCODER = BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                     intermediate_size=32, max_position_embeddings=64)


def model(sharing="shared", **tasks):
    torch.manual_seed(0)
    specs = tasks or {
        "cls5": TaskHeadSpec(kind="classes", num_outputs=5),
        "bin": TaskHeadSpec(kind="binary", num_outputs=1, encoding="cross", pooler="mean",
                            head=HeadSpec(type="mlp", layers=2, hidden_size=8, activation="relu")),
        "reg": TaskHeadSpec(kind="regression", num_outputs=1, encoding="siamese"),
        "cos": TaskHeadSpec(kind="regression", num_outputs=1, encoding="siamese", siamese_regression="cosine",
                            label_range=[0.0, 5.0], pooler="mean"),
    }
    return MultiTaskModel(MultiTaskConfig(ENCODER, specs, sharing)).eval()


def batch(lengths=(5, 3), pad_to=None, suffix=""):
    pad_to = pad_to or max(lengths)
    ids = torch.zeros(len(lengths), pad_to, dtype=torch.long)
    for i, n in enumerate(lengths):
        ids[i, :n] = torch.arange(5, 5 + n) + i
    mask = (ids != 0).long()
    return {f"input_ids{suffix}": ids, f"attention_mask{suffix}": mask,
            f"token_type_ids{suffix}": torch.zeros_like(ids)}


def pair_batch(pad_a=None, pad_b=None):
    return batch((5, 3), pad_a) | batch((2, 4), pad_b, suffix="_b")


def test_output_shapes():
    m = model()
    assert m("cls5", batch()).shape == (2, 5)
    assert m("bin", batch()).shape == (2,)
    assert m("reg", pair_batch()).shape == (2,)
    cos = m("cos", pair_batch())
    assert cos.shape == (2,) and ((cos >= -5) & (cos <= 5)).all()
    assert "cos" not in m.heads  # the scaled cosine is the prediction: no head


@pytest.mark.parametrize("pooler", POOLER_NAMES)
def test_padding_changes_nothing(pooler):
    m = model(t=TaskHeadSpec(kind="classes", num_outputs=3, pooler=pooler))
    short, padded = m("t", batch((5, 3))), m("t", batch((5, 3), pad_to=9))
    torch.testing.assert_close(short, padded, atol=1e-6, rtol=1e-5)


def test_siamese_single_pass_equals_encoding_each_side_alone():
    m = model()
    both = m._siamese_vectors("reg", pair_batch(pad_b=7))
    alone_a = m.sentence_vectors("reg", *batch((5, 3)).values())
    alone_b = m.sentence_vectors("reg", *batch((2, 4), suffix="_b").values())
    torch.testing.assert_close(both[0], alone_a, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(both[1], alone_b, atol=1e-6, rtol=1e-5)


def test_frozen_sharing_trains_heads_only():
    m = model(sharing="frozen").train()
    loss = m("cls5", batch()).sum() + m("bin", batch()).sum()
    loss.backward()
    assert all(p.grad is None and not p.requires_grad for p in m.encoder.parameters())
    assert all(p.grad is not None for p in m.heads["cls5"].parameters())


def test_config_round_trips():
    m = model()
    again = MultiTaskConfig.from_dict(m.config.to_dict())
    assert again == m.config


def test_unknown_sharing_mode():
    with pytest.raises(ValueError, match="model.sharing: cannot read 'partly'; expected shared | frozen"):
        model(sharing="partly")


@pytest.mark.parametrize("unpad", [False, True])
def test_last_layer_cls_only_changes_no_output(unpad):
    tasks = {"cls": TaskHeadSpec(kind="classes", num_outputs=3, pooler="cls"),
             "raw": TaskHeadSpec(kind="binary", num_outputs=1, pooler="cls_raw", encoding="cross"),
             "pair": TaskHeadSpec(kind="regression", num_outputs=1, encoding="siamese"),
             "mean": TaskHeadSpec(kind="classes", num_outputs=2, pooler="mean")}
    plain, shortcut = model(**tasks), model(**tasks)
    shortcut.last_layer_cls_only = True
    plain.encoder.unpad = shortcut.encoder.unpad = unpad
    for name in tasks:
        inputs = pair_batch(pad_b=7) if name == "pair" else batch((5, 3), pad_to=6)
        torch.testing.assert_close(shortcut(name, inputs), plain(name, inputs), atol=1e-6, rtol=1e-5)
