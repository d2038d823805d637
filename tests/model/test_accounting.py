"""Parameter accounting, checked against counts worked out by hand from the encoder's shapes."""

import torch

from mtbert.model.accounting import format_counts, parameter_counts
from mtbert.model.bert import BertConfig
from mtbert.model.multitask import MultiTaskConfig, MultiTaskModel, TaskHeadSpec

H, FF, V, P, T = 16, 32, 50, 64, 2  # hidden, intermediate (feed-forward), vocabulary, positions, token types
ENCODER = BertConfig(vocab_size=V, hidden_size=H, num_hidden_layers=3, num_attention_heads=2, intermediate_size=FF,
                     max_position_embeddings=P, type_vocab_size=T)
EMBEDDINGS = V * H + P * H + T * H + 2 * H  # three tables and a LayerNorm
LAYER = 4 * (H * H + H) + 2 * (2 * H) + (H * FF + FF) + (FF * H + H)  # q, k, v, out; 2 LayerNorms; feed-forward
POOLER = H * H + H
HEADS = {"sst": H * 5 + 5, "quora": H + 1, "sts": 4 * H + 1}  # linear heads; sts: siamese features, mean pooler


def specs():
    return {"sst": TaskHeadSpec(kind="classes", num_outputs=5),
            "quora": TaskHeadSpec(kind="binary", num_outputs=1, encoding="cross"),
            "sts": TaskHeadSpec(kind="regression", num_outputs=1, encoding="siamese", pooler="mean")}


def counts(plan):
    torch.manual_seed(0)
    return parameter_counts(MultiTaskModel(MultiTaskConfig(ENCODER, specs(), plan)))


def test_counts_match_the_plan():
    # embeddings frozen; layer 0 shared; layers 1-2 one copy for sst and one for quora+sts; one relational
    # layer for quora+sts; poolers on the two top copies (sst's layer 2, quora+sts's relational layer).
    c = counts("EF-S1-I2[quora+sts]+R1[quora+sts]")
    encoder = EMBEDDINGS + LAYER + 2 * 2 * LAYER + LAYER + 2 * POOLER
    assert c["encoder"] == encoder and c["heads"] == sum(HEADS.values())
    assert c["total"] == encoder + sum(HEADS.values())
    assert c["frozen"] == EMBEDDINGS and c["trainable"] == c["total"] - EMBEDDINGS
    assert c["copies"] == {"frozen": {"parameters": EMBEDDINGS, "trainable": 0},
                           "shared": {"parameters": LAYER, "trainable": LAYER},
                           "sst": {"parameters": 2 * LAYER + POOLER, "trainable": 2 * LAYER + POOLER},
                           "quora+sts": {"parameters": 3 * LAYER + POOLER, "trainable": 3 * LAYER + POOLER}}
    sst, pair = c["branches"]["sst"], c["branches"]["quora+sts"]
    assert sst == {"tasks": ["sst"], "parameters": EMBEDDINGS + 3 * LAYER + POOLER,
                   "trainable": 3 * LAYER + POOLER, "own": 2 * LAYER + POOLER}
    assert pair == {"tasks": ["quora", "sts"], "parameters": EMBEDDINGS + 4 * LAYER + POOLER,
                    "trainable": 4 * LAYER + POOLER, "own": 3 * LAYER + POOLER}
    assert c["tasks"]["sts"] == {"branch": "quora+sts", "encoder": EMBEDDINGS + 4 * LAYER + POOLER,
                                 "head": HEADS["sts"], "total": EMBEDDINGS + 4 * LAYER + POOLER + HEADS["sts"],
                                 "trainable": 4 * LAYER + POOLER + HEADS["sts"], "adapter": 0,
                                 "own": HEADS["sts"]}  # quora runs through the same branch
    assert "sharing: embeddings frozen | layers 0 shared, 1-2 individual [sst] [quora+sts]" in format_counts(c)


def test_whole_encoder_plans():
    one_encoder = EMBEDDINGS + 3 * LAYER + POOLER
    shared, frozen = counts("shared"), counts("frozen")
    assert shared["total"] == frozen["total"] == one_encoder + sum(HEADS.values())
    assert shared["trainable"] == shared["total"] and frozen["trainable"] == sum(HEADS.values())
    assert list(shared["branches"]) == ["sst+quora+sts"] and shared["branches"]["sst+quora+sts"]["own"] == one_encoder
    individual = counts("individual")
    assert individual["encoder"] == 3 * one_encoder
    assert all(b["own"] == one_encoder for b in individual["branches"].values())


def test_adapters_are_counted_apart_from_the_copies():
    # LoRA rank 2 on all six projections of the 3 layers: r (in + out) each; one adapter for sst, one for quora+sts.
    lora = 3 * 2 * (4 * (H + H) + (H + FF) + (FF + H))
    c = counts("F1-S2+lora[r=2,targets=all,quora+sts]")
    assert c["adapters"] == {"sst": {"tasks": ["sst"], "parameters": lora, "trainable": lora},
                             "quora+sts": {"tasks": ["quora", "sts"], "parameters": lora, "trainable": lora}}
    assert c["adapters_total"] == 2 * lora
    assert c["copies"] == {"frozen": {"parameters": EMBEDDINGS + LAYER, "trainable": 0},
                           "shared": {"parameters": 2 * LAYER + POOLER, "trainable": 2 * LAYER + POOLER}}
    assert c["total"] == EMBEDDINGS + 3 * LAYER + POOLER + 2 * lora + sum(HEADS.values())
    assert c["trainable"] == 2 * LAYER + POOLER + 2 * lora + sum(HEADS.values())
    assert c["tasks"]["sst"] | {"branch": None} == {
        "branch": None, "encoder": EMBEDDINGS + 3 * LAYER + POOLER, "adapter": lora, "head": HEADS["sst"],
        "total": EMBEDDINGS + 3 * LAYER + POOLER + lora + HEADS["sst"],
        "trainable": 2 * LAYER + POOLER + lora + HEADS["sst"], "own": lora + HEADS["sst"]}
    assert c["tasks"]["quora"]["own"] == HEADS["quora"]  # its adapter is shared with sts
    assert c["own_per_task"] == (lora + sum(HEADS.values())) / 3
    assert c["own_bytes_per_task"] == 4 * c["own_per_task"]  # float32
    assert f"adapters: sst {lora:,} | quora+sts {lora:,}" in format_counts(c)


def test_pals_counts():
    # Per task: V_E (H -> 8) and V_D (8 -> H) with biases, and per layer query, key, value (8 -> 8) with biases.
    pals = (H * 8 + 8) + (8 * H + H) + 3 * 3 * (8 * 8 + 8)
    c = counts("frozen+pals[size=8,heads=2]")
    assert c["adapters_total"] == 3 * pals and c["trainable"] == 3 * pals + sum(HEADS.values())
    assert all(c["tasks"][task]["own"] == pals + HEADS[task] for task in HEADS)
