import json

import pytest
import torch

from mtbert.config import load_recipe
from mtbert.train import linear_schedule, optimizer_groups, train

from helpers import write_recipe


def test_trains_evaluates_and_exports(tmp_path, tokenizer_dir):
    recipe = load_recipe(write_recipe(tmp_path, tokenizer_dir, eval={"every_steps": 20}))
    best = train(recipe)
    out = tmp_path / "ckpt"
    for name in ("model.safetensors", "mtbert.json", "recipe.yaml", "metrics.json", "tokenizer.json",
                 "train_log.jsonl"):
        assert (out / name).is_file(), name
    assert set(best) >= {"sst", "quora", "sts", "overall", "step"}
    assert best["sst"]["main"] == best["sst"]["accuracy"]
    assert json.loads((out / "metrics.json").read_text()) == best
    records = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    logged = [r for r in records if "loss" in r]
    assert [r["step"] for r in logged][:2] == [5, 10] and set(logged[0]["loss"]) <= {"sst", "quora", "sts"}
    assert sum("dev" in r for r in records) >= 2
    assert not list(out.glob(".*tmp*")), "temporary files left behind"


def test_learns_a_learnable_task(tmp_path, tokenizer_dir):
    recipe = load_recipe(write_recipe(tmp_path, tokenizer_dir, tasks={"sst": {"pooler": "mean"}},
                                      train={"epochs": 4}))
    best = train(recipe)
    assert best["sst"]["accuracy"] > 0.9  # chance is 0.5: 'great' -> 4, 'awful' -> 0


@pytest.mark.parametrize("overrides", [
    ["sampling.strategy=all_tasks", "train.grad_accum=2"],
    ["sampling.strategy=annealed", "train.epochs=2", "train.max_steps=12"],
    ["sampling.strategy=proportional", "tasks.sst.class_balanced=true", "tasks.quora.max_train_examples=16",
     "model.sharing=frozen", "tasks.sst.head.type=mlp"],
])
def test_strategies_and_options_run(tmp_path, tokenizer_dir, overrides):
    recipe = load_recipe(write_recipe(tmp_path, tokenizer_dir), overrides + ["train.max_steps=8"])
    best = train(recipe)
    assert best["step"] <= 8 and 0 <= best["overall"] <= 1


def test_same_seed_same_model(tmp_path, tokenizer_dir):
    from safetensors.torch import load_file

    weights = []
    for run in ("a", "b"):
        recipe = load_recipe(write_recipe(tmp_path, tokenizer_dir), [f"output_dir={tmp_path / run}",
                                                                      "train.max_steps=6"])
        train(recipe)
        weights.append(load_file(tmp_path / run / "model.safetensors"))
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])


def test_no_weight_decay_on_biases_and_layernorm():
    model = torch.nn.Sequential(torch.nn.Linear(3, 3), torch.nn.LayerNorm(3))
    decay, no_decay = optimizer_groups(model, 0.1)
    assert len(decay["params"]) == 1 and len(no_decay["params"]) == 3 and no_decay["weight_decay"] == 0.0


def test_linear_schedule_warms_up_then_decays_to_zero():
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    sched = linear_schedule(opt, warmup=4, total=10)
    lrs = []
    for _ in range(10):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs[:4] == sorted(lrs[:4]) and max(lrs) == pytest.approx(1.0)
    assert lrs[4:] == sorted(lrs[4:], reverse=True) and opt.param_groups[0]["lr"] == 0.0
