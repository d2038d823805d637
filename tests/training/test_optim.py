import copy

import pytest
import torch

from mtbert.config import load_recipe
from mtbert.errors import MtbertError
from mtbert.model.bert import BertConfig
from mtbert.model.multitask import MultiTaskConfig, MultiTaskModel, TaskHeadSpec
from mtbert.training.loop import train
from mtbert.training.optim import OPTIMIZERS, AdamW, build_optimizer
from mtbert.training.setup import optimizer_groups

from helpers import write_recipe

ENCODER = BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                     intermediate_size=32, max_position_embeddings=64, hidden_dropout_prob=0.0,
                     attention_probs_dropout_prob=0.0)


def tiny_model() -> MultiTaskModel:
    torch.manual_seed(0)
    specs = {"cls": TaskHeadSpec(kind="classes", num_outputs=3)}
    return MultiTaskModel(MultiTaskConfig(ENCODER, specs, "shared")).eval()  # no dropout anywhere


def batches(n: int) -> list[tuple[dict, torch.Tensor]]:
    gen = torch.Generator().manual_seed(1)
    out = []
    for _ in range(n):
        ids = torch.randint(5, 50, (8, 7), generator=gen)
        batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "token_type_ids": torch.zeros_like(ids)}
        out.append((batch, torch.randint(0, 3, (8,), generator=gen)))
    return out


def run(model: MultiTaskModel, optimizer: torch.optim.Optimizer, data: list) -> None:
    for batch, labels in data:
        loss = torch.nn.functional.cross_entropy(model("cls", batch), labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()


def max_abs_diff(a: torch.nn.Module, b: torch.nn.Module) -> float:
    return max((p - q).abs().max().item() for p, q in zip(a.parameters(), b.parameters(), strict=True))


def make(cls: type, model: torch.nn.Module, **kwargs) -> torch.optim.Optimizer:
    return cls(optimizer_groups(model, 0.1), lr=3e-3, betas=(0.9, 0.98), eps=1e-6, **kwargs)


@pytest.mark.parametrize("foreach", [False, True])
def test_matches_torch_adamw_over_100_steps(foreach):
    data = batches(100)
    ours, theirs = tiny_model(), tiny_model()
    start = copy.deepcopy(ours)
    run(ours, make(AdamW, ours), data)
    run(theirs, make(torch.optim.AdamW, theirs, foreach=foreach), data)
    assert max_abs_diff(ours, start) > 1e-2  # it did train
    assert max_abs_diff(ours, theirs) <= 1e-6


def test_state_dict_round_trip():
    data = batches(20)
    model = tiny_model()
    optimizer = make(AdamW, model)
    run(model, optimizer, data[:10])
    saved_model, saved_state = copy.deepcopy(model), copy.deepcopy(optimizer.state_dict())
    assert all(s["step"] == 10 for s in saved_state["state"].values())

    resumed = make(AdamW, saved_model)
    resumed.load_state_dict(saved_state)
    run(model, optimizer, data[10:])
    run(saved_model, resumed, data[10:])
    assert all(torch.equal(p, q) for p, q in zip(model.parameters(), saved_model.parameters(), strict=True))


@pytest.mark.parametrize("kwargs", [{"lr": -1e-3}, {"eps": -1e-8}, {"betas": (1.0, 0.999)}, {"betas": (0.9, -0.1)},
                                    {"weight_decay": -0.01}])
def test_invalid_hyperparameters_raise(kwargs):
    with pytest.raises(ValueError):
        AdamW([torch.nn.Parameter(torch.zeros(2))], **kwargs)
    with pytest.raises(ValueError):  # the same value in a param group
        AdamW([{"params": [torch.nn.Parameter(torch.zeros(2))], **kwargs}])


def test_parameter_without_grad_is_untouched():
    used, unused = torch.nn.Parameter(torch.ones(3)), torch.nn.Parameter(torch.ones(3))
    optimizer = AdamW([used, unused], lr=0.1, weight_decay=0.5)
    for _ in range(3):
        optimizer.zero_grad(set_to_none=True)
        (used * torch.arange(3.0)).sum().backward()
        optimizer.step()
    assert unused.grad is None and torch.equal(unused, torch.ones(3)) and unused not in optimizer.state
    assert not torch.equal(used, torch.ones(3)) and optimizer.state[used]["step"] == 3


def test_step_with_closure_returns_loss():
    p = torch.nn.Parameter(torch.tensor([2.0]))
    optimizer = AdamW([p], lr=0.1, weight_decay=0.0)

    def closure():
        optimizer.zero_grad()
        loss = (p**2).sum()
        loss.backward()
        return loss

    assert optimizer.step(closure).item() == pytest.approx(4.0)
    assert p.item() == pytest.approx(1.9)  # first Adam step moves by lr * sign(grad)


def test_build_optimizer():
    params = [torch.nn.Parameter(torch.zeros(2))]
    for name, cls in OPTIMIZERS.items():
        opt = build_optimizer(name, [{"params": params, "weight_decay": 0.1}], lr=1e-3, betas=[0.8, 0.9], eps=1e-7)
        assert type(opt) is cls and opt.param_groups[0]["betas"] == (0.8, 0.9)
        assert opt.param_groups[0]["weight_decay"] == 0.1 and opt.param_groups[0]["eps"] == 1e-7
    with pytest.raises(ValueError, match="adamw, mtbert_adamw"):
        build_optimizer("adam", params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8)


def test_train_loop_with_mtbert_adamw(tmp_path, tokenizer_dir):
    recipe = load_recipe(write_recipe(tmp_path, tokenizer_dir),
                         ["train.optimizer=mtbert_adamw", "train.max_steps=4"])
    assert recipe.train.optimizer == "mtbert_adamw"
    best = train(recipe)
    out = tmp_path / "ckpt"
    assert best["step"] <= 4 and (out / "model.safetensors").is_file() and (out / "mtbert.json").is_file()
    assert "optimizer: mtbert_adamw" in (out / "recipe.yaml").read_text()


def test_unknown_optimizer_name_suggests_a_valid_one(tmp_path, tokenizer_dir):
    with pytest.raises(MtbertError, match=r"train\.optimizer.*'adam'.*did you mean 'adamw'"):
        load_recipe(write_recipe(tmp_path, tokenizer_dir), ["train.optimizer=adam"])
