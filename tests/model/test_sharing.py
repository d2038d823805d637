"""Sharing plans: reading and checking them, and the branched encoder they build."""

import copy
import dataclasses

import pytest
import torch

from mtbert.model.bert import BertConfig, BertModel
from mtbert.model.multitask import MultiTaskConfig, MultiTaskModel, TaskHeadSpec
from mtbert.model.sharing import Part, Relational, SharingPlanError, resolve_plan, upgrade_unbranched_state_dict

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


# --- reading plans ---------------------------------------------------------------------------


def test_short_forms():
    shared = resolve_plan("shared", 3, TASKS)
    assert shared.layers == (Part("shared"),) * 3 and shared.embeddings == Part("shared") and not shared.relational
    plan = resolve_plan("F1-S1-I1[sts+quora]", 3, TASKS)
    assert plan.embeddings == Part("frozen")  # as the bottom layer
    assert plan.layers == (Part("frozen"), Part("shared"), Part("individual", (("sst",), ("quora", "sts"))))
    assert resolve_plan("I3", 3, TASKS).layers[0].groups == (("sst",), ("quora",), ("sts",))
    assert resolve_plan("individual", 3, TASKS) == dataclasses.replace(resolve_plan("I3", 3, TASKS),
                                                                       text="individual")
    assert resolve_plan("EI[sst+sts]-S3", 3, TASKS).embeddings == Part("individual", (("sst", "sts"), ("quora",)))
    relational = resolve_plan("frozen+R2[sts+quora]", 3, TASKS).relational
    assert relational == (Relational(("quora", "sts"), 2, "copy_top"),)


def test_structured_plan_equals_its_short_string():
    structured = {"layers": [{"range": 0, "mode": "frozen"}, {"range": "1", "mode": "shared"},
                             {"range": "2-2", "mode": "individual", "groups": [["sts", "quora"]]}],
                  "relational": [{"tasks": ["quora", "sts"], "layers": 1}]}
    short = resolve_plan("F1-S1-I1[quora+sts]+R1[quora+sts]", 3, TASKS)
    assert resolve_plan(structured, 3, TASKS) == dataclasses.replace(short, text="")
    with_embeddings = resolve_plan({"embeddings": "shared", "layers": [{"range": "all", "mode": "frozen"}]}, 3, TASKS)
    assert with_embeddings.embeddings == Part("shared") and with_embeddings.layers == (Part("frozen"),) * 3


@pytest.mark.parametrize("plan,path,message", [
    ("S2", "", "the layer counts of 'S2' add up to 2, but the encoder has 3 layers"),
    ("F4-S6-I2", "", "add up to 12, but the encoder has 3"),
    ("S1-X2", "", "cannot read 'X2' in 'S1-X2'; expected shared | frozen | individual"),
    ("partly", "", "cannot read 'partly'; expected"),
    ("S0-S3", "", "'S0': a segment covers at least 1 layer"),
    ("S1-I2[sst+qoura]", "", "group \\[sst, qoura\\] names 'qoura', which is not a task of this recipe; "
                             "did you mean 'quora'\\? its tasks: sst, quora, sts"),
    ("S1-I2[sst,sst+sts]", "", "task 'sst' is in two groups"),
    ("S1-I2[sst+sst]", "", "task 'sst' is twice in one group"),
    ("S1-S2[sst]", "", "groups are only for mode individual, not shared"),
    ("shared+R1[quora,sts]", "", "a relational segment is owned by one task group"),
    ("shared+R1[quora]+R1[quora+sts]", "", "task 'quora' is in two relational groups"),
    ({"layers": [{"range": "0-3", "mode": "shared"}]}, "layers.0.range",
     "layer 3 is out of range: the encoder has 3 layers, 0-2"),
    ({"layers": [{"range": "0-1", "mode": "shared"}, {"range": "1-2", "mode": "frozen"}]}, "layers.1.range",
     "layers 1-2 overlap layers 0-1 \\(model.sharing.layers.0\\)"),
    ({"layers": [{"range": "all", "mode": "shared"}, {"range": 2, "mode": "frozen"}]}, "layers.1.range",
     "layer 2 overlaps all layers"),
    ({"layers": [{"range": 0, "mode": "shared"}, {"range": 2, "mode": "shared"}]}, "layers",
     "no mode for layer\\(s\\) 1: the ranges must cover every layer of the encoder \\(0-2\\) exactly once"),
    ({"layers": [{"range": "2-1", "mode": "shared"}]}, "layers.0.range", "range 2-1 runs backwards"),
    ({"layers": [{"range": "top", "mode": "shared"}]}, "layers.0.range", "expected a layer index"),
    ({"layers": [{"range": "all", "mode": "shared"}], "relational": [{"tasks": ["paraphrase"]}]},
     "relational.0.tasks", "names 'paraphrase', which is not a task"),
    ({"layers": [{"range": "all", "mode": "individual", "groups": [["sst"], ["quora", "sst"]]}]},
     "layers.0.groups", "task 'sst' is in two groups"),
    ({"layers": [{"range": "all", "mode": "individual", "groups": [["sts"], []]}]},
     "layers.0.groups", "group 1 \\[\\] must name at least one task"),
    ({"layers": []}, "layers", "a structured plan lists its layer ranges"),
    ({"layer": []}, "", "unknown key\\(s\\) layer"),
])
def test_bad_plans_are_named_errors(plan, path, message):
    with pytest.raises(SharingPlanError, match=message) as error:
        resolve_plan(plan, 3, TASKS)
    assert ".".join(error.value.path) == path
    assert str(error.value).startswith("model.sharing" + (f".{path}" if path else "") + ": ")


def test_a_task_may_not_take_a_copy_name():
    with pytest.raises(SharingPlanError, match="a task named 'shared' cannot own a copy"):
        resolve_plan("I2", 2, ["shared", "sst"])
    assert resolve_plan("S2", 2, ["shared", "sst"]).layers == (Part("shared"),) * 2  # fine while it owns none
    # 'a+b' alone and the group [a, b] would both be called a+b: one copy for two owners, silently.
    with pytest.raises(SharingPlanError, match="task 'a\\+b' owns a copy of encoder weights, so its name cannot"):
        resolve_plan({"layers": [{"range": "all", "mode": "individual", "groups": [["a", "b"]]}]}, 2, ["a", "b", "a+b"])


# --- the branched encoder ---------------------------------------------------------------------


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
    from mtbert.training.loop import optimizer_groups

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
