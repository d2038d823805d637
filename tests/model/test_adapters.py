"""Per-task adapters (mtbert/model/adapters.py): LoRA through peft and PALs, on the branched encoder."""

import copy
import dataclasses

import pytest
import torch
import torch.nn.functional as F

from mtbert.model.adapters import activate, adapter_parameters
from mtbert.model.bert import BertConfig, BertModel
from mtbert.model.multitask import MultiTaskConfig, MultiTaskModel, TaskHeadSpec

TASKS = ["sst", "quora", "sts"]
ENCODER = BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=3, num_attention_heads=2,
                     intermediate_size=32, max_position_embeddings=64, hidden_dropout_prob=0.0,
                     attention_probs_dropout_prob=0.0)
KINDS = {"lora": "F1-S2+lora[r=2,targets=all]", "pals": "F1-S2+pals[size=8,heads=2]"}


def specs():
    return {"sst": TaskHeadSpec(kind="classes", num_outputs=5),
            "quora": TaskHeadSpec(kind="binary", num_outputs=1, encoding="cross"),
            "sts": TaskHeadSpec(kind="regression", num_outputs=1, pooler="mean")}


def build(plan, seed=0, source=None):
    torch.manual_seed(seed)
    return MultiTaskModel(MultiTaskConfig(ENCODER, specs(), plan), source)


def batch(seed=0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, 50, (4, 7), generator=g)
    ids[1, 4:] = 0
    return {"input_ids": ids, "attention_mask": (ids != 0).long(), "token_type_ids": torch.zeros_like(ids)}


def loss(model, task, seed=0):
    return model(task, batch(seed)).float().pow(2).mean()


def randomise_adapters(model):
    """Adapters start as no change (B = 0, V_D = 0); give them weights that change the outputs."""
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for params in adapter_parameters(model.encoder, model.config.sharing).values():
            for p in params:
                p.copy_(0.3 * torch.randn(p.shape, generator=g))


def base_keys(model):
    return {k for k in model.state_dict() if ".lora_" not in k and ".pals." not in k}


@pytest.mark.parametrize("kind", KINDS)
def test_adapters_start_as_the_plain_encoder_and_checkpoint_names_stay(kind):
    source = BertModel(ENCODER)  # a model takes the source's modules: each its own copy
    plain = build(KINDS[kind].split("+")[0], source=copy.deepcopy(source))
    adapted = build(KINDS[kind], source=copy.deepcopy(source))
    plain.eval(), adapted.eval()
    for task in TASKS:
        assert torch.equal(plain.encoder(task, **{k: v for k, v in batch().items() if k != "token_type_ids"})
                           .last_hidden_state, adapted.encoder(task, batch()["input_ids"], batch()["attention_mask"])
                           .last_hidden_state)
    # The base weights keep their names (no `.base_layer.`); the adapters come on top.
    assert base_keys(adapted) == set(plain.state_dict())
    assert all(torch.equal(plain.state_dict()[k], adapted.state_dict()[k]) for k in plain.state_dict()
               if k.startswith("encoder."))  # the heads draw other random numbers after the adapters
    extra = set(adapted.state_dict()) - set(plain.state_dict())
    assert extra and all((".lora_A." in k or ".lora_B." in k) if kind == "lora" else k.startswith("encoder.pals.")
                         for k in extra)


@pytest.mark.parametrize("kind", KINDS)
def test_state_dict_round_trips(kind):
    model = build(KINDS[kind])
    randomise_adapters(model)
    again = MultiTaskModel(MultiTaskConfig.from_dict(model.config.to_dict()))
    again.load_state_dict(model.state_dict())
    model.eval(), again.eval()
    for task in TASKS:
        assert torch.equal(model(task, batch()), again(task, batch()))
    assert len({model(task, batch())[0].sum().item() for task in ("quora", "sts")}) == 2  # each its own adapter


def test_lora_keeps_the_plans_trainability():
    model = build(KINDS["lora"])
    flags = {name: p.requires_grad for name, p in model.named_parameters()}
    assert not any(v for k, v in flags.items() if ".copies.frozen." in k and ".lora_" not in k)  # frozen copy
    assert all(v for k, v in flags.items() if ".copies.shared." in k or ".lora_" in k)  # shared copy, adapters


def test_lora_numbers_are_peft_s():
    """y = W x + b + (alpha / r) B A x on every target of the task's layers (checked on one)."""
    model = build("frozen+lora[r=2,alpha=6]")
    randomise_adapters(model)
    layer = model.encoder.copies["frozen"].encoder.layer["1"].attention.self.query
    activate(model.encoder, model.config.sharing, "quora")
    x = torch.randn(5, 16)
    expected = F.linear(x, layer.base_layer.weight, layer.base_layer.bias) + \
        3.0 * x @ layer.lora_A["quora"].weight.T @ layer.lora_B["quora"].weight.T
    torch.testing.assert_close(layer(x), expected)


@pytest.mark.parametrize("kind", KINDS)
def test_a_step_trains_its_own_tasks_adapter_only_and_frozen_parts_stay(kind):
    model = build(KINDS[kind])
    model.train()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2, weight_decay=0.1)
    adapters = {owner: params for owner, params in adapter_parameters(model.encoder, model.config.sharing).items()}
    frozen = {k: v.clone() for k, v in model.encoder.copies["frozen"].state_dict().items() if ".lora_" not in k}
    for step, task in enumerate(["sst", "quora", "sst", "quora"]):
        before = {owner: [p.detach().clone() for p in params] for owner, params in adapters.items()}
        loss(model, task, seed=step).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        changed = {owner for owner, params in adapters.items()
                   if any(not torch.equal(a, p) for a, p in zip(before[owner], params))}
        # B = 0 (LoRA) and V_D = 0 (PALs) at the start: the first step moves only the task's B or V_D
        assert changed == {task}, (step, task, changed)
    assert all(torch.equal(p, before_p) for p, before_p in zip(adapters["sts"], before["sts"]))
    assert all(torch.equal(v, model.encoder.copies["frozen"].state_dict()[k]) for k, v in frozen.items())


@pytest.mark.parametrize("kind", KINDS)
def test_every_task_of_one_backward_gets_its_adapters_gradient(kind):
    """sampling.strategy all_tasks: several tasks' forwards, then one backward. Switching adapters between them
    must not leave the earlier task's adapter without requires_grad (it would get no gradient)."""
    model = build(KINDS[kind])
    randomise_adapters(model)
    (loss(model, "sst") + loss(model, "quora")).backward()
    params = adapter_parameters(model.encoder, model.config.sharing)
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for owner in ("sst", "quora") for p in params[owner])
    assert all(p.grad is None for p in params["sts"])
    assert all(p.requires_grad for ps in params.values() for p in ps)


@pytest.mark.parametrize("kind", KINDS)
def test_a_frozen_adapter_stays_frozen_through_switches(kind):
    model = build(KINDS[kind])
    params = adapter_parameters(model.encoder, model.config.sharing)
    for p in params["sst"]:
        p.requires_grad_(False)
    for task in ("sst", "quora", "sst", "sts"):
        model(task, batch())
    assert not any(p.requires_grad for p in params["sst"]) and all(p.requires_grad for p in params["quora"])


def test_pals_join_the_layers_last_residual_sum():
    """layer(h) = LN(a + FFN(a) + GELU(V_D(SelfAttention(V_E h)))), a the attention block's output."""
    model = build("frozen+pals[size=8,heads=2]")
    randomise_adapters(model)
    model.eval()
    activate(model.encoder, model.config.sharing, "sts")
    layer = model.encoder.copies["frozen"].encoder.layer["1"]
    pal = model.encoder.pals["sts"]
    hidden = torch.randn(2, 5, 16)
    attended = layer.attention(hidden, None)
    small = pal.attention[1]
    q, k, v = (m(pal.down(hidden)).view(2, 5, 2, 4).transpose(1, 2) for m in (small.query, small.key, small.value))
    context = torch.softmax(q @ k.transpose(-1, -2) / 2.0, dim=-1) @ v  # (B, heads, T, 4), scaled by sqrt(4)
    parallel = F.gelu(pal.up(context.transpose(1, 2).reshape(2, 5, 8)))
    expected = layer.output.LayerNorm(layer.output.dense(layer.intermediate(attended)) + attended + parallel)
    torch.testing.assert_close(layer(hidden, None), expected)
    assert (parallel.abs().max() > 1e-2).item()


@pytest.mark.parametrize("kind", KINDS)
def test_packed_and_cls_only_layers_give_the_same_vectors(kind):
    model = build(KINDS[kind])
    randomise_adapters(model)
    model.eval()
    b = batch()
    padded = model.encoder("sst", b["input_ids"], b["attention_mask"])
    model.encoder.unpad = True
    packed = model.encoder("sst", b["input_ids"], b["attention_mask"])
    first = model.encoder("sst", b["input_ids"], b["attention_mask"], first_token_only=True)
    real = b["attention_mask"].bool()
    torch.testing.assert_close(packed.last_hidden_state[real], padded.last_hidden_state[real], atol=1e-5, rtol=0)
    torch.testing.assert_close(first.last_hidden_state[:, 0], padded.last_hidden_state[:, 0], atol=1e-5, rtol=0)


def test_a_deep_copy_keeps_its_own_adapters():
    """SMART's teacher is a deep copy of the model: its layers must call its own PALs."""
    model = build(KINDS["pals"])
    randomise_adapters(model)
    twin = copy.deepcopy(model)
    layer = twin.encoder.copies["frozen"].encoder.layer["0"]
    assert layer.parallel.pals is twin.encoder.pals and layer.parallel.pals is not model.encoder.pals
    model.eval(), twin.eval()
    assert torch.equal(model("sts", batch()), twin("sts", batch()))


def test_width_and_heads_fit_the_encoder():
    model = build("frozen+pals")  # hidden 16: 16 * 204/768 = 4.25, rounded up to the 6 heads
    assert model.encoder.pals["sst"].down.out_features == 6
    assert dataclasses.replace(model.config.sharing.adapter, size=12).width(16) == 12
