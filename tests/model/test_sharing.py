"""The branched encoder a sharing plan builds (mtbert/model/sharing.py)."""

import copy
import dataclasses

import pytest
import torch

from mtbert.model.bert import BertConfig, BertModel
from mtbert.model.multitask import MultiTaskConfig, MultiTaskModel, TaskHeadSpec
from mtbert.model.plan import Part, Relational
from mtbert.model.sharing import upgrade_unbranched_state_dict

TASKS = ["sst", "quora", "sts"]
ENCODER = BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=3, num_attention_heads=2,
                     intermediate_size=32, max_position_embeddings=64)


def specs():
    return {"sst": TaskHeadSpec(kind="classes", num_outputs=5),
            "quora": TaskHeadSpec(kind="binary", num_outputs=1, encoding="cross"),
            "sts": TaskHeadSpec(kind="regression", num_outputs=1, encoding="siamese", pooler="mean")}


def build(plan, source=None, seed=0):
    torch.manual_seed(seed)
    return MultiTaskModel(MultiTaskConfig(ENCODER, specs(), plan), source)


def batch(task, seed=0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, 50, (4, 7), generator=g)
    ids[1, 5:] = 0  # padding in the batch
    one = {"input_ids": ids, "attention_mask": (ids != 0).long(), "token_type_ids": torch.zeros_like(ids)}
    out = one | ({k + "_b": v.flip(0) for k, v in one.items()} if task == "sts" else {})
    out["labels"] = {"sst": torch.tensor([0, 1, 4, 2]), "quora": torch.tensor([0.0, 1.0, 1.0, 0.0]),
                     "sts": torch.tensor([0.5, 4.0, 2.0, 3.0])}[task]
    return out


def loss(model, task, seed=0):
    b = batch(task, seed)
    out = model(task, b)
    if task == "sst":
        return torch.nn.functional.cross_entropy(out, b["labels"])
    if task == "quora":
        return torch.nn.functional.binary_cross_entropy_with_logits(out, b["labels"])
    return torch.nn.functional.mse_loss(out, b["labels"])


def test_shared_plan_is_the_plain_encoder():
    source = BertModel(ENCODER)
    reference = copy.deepcopy(source).eval()
    model = build("shared", source).eval()
    b = batch("sst")
    out = model.encoder("sst", b["input_ids"], b["attention_mask"], b["token_type_ids"])
    ref = reference(b["input_ids"], b["attention_mask"], b["token_type_ids"])
    assert torch.equal(out.last_hidden_state, ref.last_hidden_state)
    assert torch.equal(out.pooler_output, ref.pooler_output)
    assert model.encoder_for("sst") is model.encoder_for("sts")  # one branch for all tasks


def test_pretrained_init_copies_the_same_weights_into_every_branch():
    source = BertModel(ENCODER)
    expected = copy.deepcopy(source.state_dict())
    model = build("S1-I2+R1[quora+sts]", source)
    for task in TASKS:
        branch = model.encoder_for(task).state_dict()
        for key, value in expected.items():
            assert torch.equal(branch[key], value), (task, key)
    relational = model.encoder_for("quora").encoder.layer[3].state_dict()
    top = {k[len("encoder.layer.2."):]: v for k, v in expected.items() if k.startswith("encoder.layer.2.")}
    assert all(torch.equal(relational[k], v) for k, v in top.items())  # copy_top
    assert len(model.encoder_for("sst").encoder.layer) == 3 and len(model.encoder_for("sts").encoder.layer) == 4
    random_top = build({"layers": [{"range": "all", "mode": "shared"}],
                        "relational": [{"tasks": ["quora"], "init": "random"}]}, copy.deepcopy(source))
    query = random_top.encoder_for("quora").encoder.layer[3].attention.self.query.weight
    assert not torch.equal(query, top["attention.self.query.weight"])
    assert 0.01 < query.std().item() < 0.03  # BERT's normal(0, 0.02) init


def test_branch_keys_are_hugging_face_keys_and_parameters_are_registered_once():
    model = build("EF-S1-I2[quora+sts]+R1[quora+sts]")
    plain = BertModel(dataclasses.replace(ENCODER, num_hidden_layers=4))
    assert set(model.encoder_for("quora").state_dict()) == set(plain.state_dict())
    keys = list(model.state_dict())
    assert len(keys) == len(set(keys)) == len(list(model.named_parameters())) + len(list(model.named_buffers()))
    assert "encoder.copies.quora+sts.encoder.layer.3.attention.self.query.weight" in keys
    assert "encoder.copies.frozen.embeddings.word_embeddings.weight" in keys
    assert "encoder.copies.sst.pooler.dense.weight" in keys and "encoder.copies.shared.pooler.dense.weight" not in keys


def test_each_task_runs_through_its_own_branch_only():
    model = build("F1-S1-I1").train()
    loss(model, "sst").backward()
    grads = {owner: [p.grad is not None for p in part.parameters()] for owner, part in model.encoder.copies.items()}
    assert not any(grads["frozen"]) and all(not p.requires_grad for p in model.encoder.copies["frozen"].parameters())
    assert any(grads["shared"]) and any(grads["sst"])
    assert not any(grads["quora"]) and not any(grads["sts"])


def test_a_shared_layer_receives_gradient_from_every_task():
    model = build("S2-I1").train()
    query = model.encoder.copies["shared"].encoder.layer["1"].attention.self.query.weight
    for task in TASKS:
        model.zero_grad(set_to_none=True)
        loss(model, task).backward()
        assert query.grad is not None and query.grad.abs().sum() > 0, task


def test_individual_branches_diverge_after_training_on_different_tasks():
    model = build("S2-I1").train()
    before = {t: copy.deepcopy(model.encoder.copies[t].state_dict()) for t in TASKS}
    assert all(torch.equal(before["sst"][k], before["quora"][k]) for k in before["sst"])  # same start
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    for step in range(3):
        for task in TASKS:
            optimizer.zero_grad()
            loss(model, task, seed=step).backward()
            optimizer.step()
    key = "encoder.layer.2.attention.self.query.weight"
    after = {t: model.encoder.copies[t].state_dict()[key] for t in TASKS}
    for i, a in enumerate(TASKS):
        assert not torch.equal(after[a], before[a][key]), a
        for b in TASKS[i + 1:]:
            assert not torch.allclose(after[a], after[b]), (a, b)


def test_frozen_plan_leaves_only_poolers_and_heads_trainable():
    model = build("frozen")
    trainable = {name for name, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(name.startswith(("heads.", "poolers.")) for name in trainable)


def test_frozen_parts_stay_out_of_the_optimizer():
    from mtbert.training.setup import optimizer_groups

    model = build("F2-I1")
    optimized = {id(p) for group in optimizer_groups(model, 0.01) for p in group["params"]}
    frozen = {id(p) for p in model.encoder.copies["frozen"].parameters()}
    assert frozen and not optimized & frozen
    assert {id(p) for p in model.encoder.copies["sst"].parameters()} <= optimized


def test_config_with_plan_round_trips():
    config = build("EI[quora+sts]-F1-S1-I1+R2[sst]").config
    again = MultiTaskConfig.from_dict(config.to_dict())
    assert again == config and again.sharing.relational == (Relational(("sst",), 2, "copy_top"),)
    assert MultiTaskConfig.from_dict(config.to_dict() | {"sharing": "frozen"}).sharing.layers[0] == Part("frozen")


def test_model_saved_before_sharing_plans_loads():
    model = build("shared").eval()
    old = {k.replace("encoder.copies.shared.", "encoder."): v for k, v in model.state_dict().items()}
    assert "encoder.encoder.layer.0.attention.self.query.weight" in old  # the old BertModel layout
    again = build("shared", seed=1).eval()
    again.load_state_dict(upgrade_unbranched_state_dict(old, again.config.sharing))
    assert torch.equal(again("quora", batch("quora")), model("quora", batch("quora")))
    with pytest.raises(ValueError, match="one copy of every part"):
        upgrade_unbranched_state_dict(old, build("S2-I1").config.sharing)
