"""Stages (mtbert/training/stages.py) and multi-stage runs: stages switch tasks and objective at the right step,
resume inside a stage is exact, SMART under gradient accumulation equals the same batch unaccumulated, and the
learning-rate schedule sets every step's rate as it always did."""

import json
import shutil
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from safetensors.torch import load_file

from mtbert.config import load_recipe, parse_recipe
from mtbert.errors import MtbertError
from mtbert.training import faults
from mtbert.training.loop import train
from mtbert.training.stages import LearningRateSchedule, plan_stages, stage_at

from helpers import write_recipe

TIMING = ("tokens_per_s", "elapsed_s")
NO_DROPOUT = ["model.dropout=0", "tasks.sst.head.dropout=0", "tasks.quora.head.dropout=0", "tasks.sts.head.dropout=0"]
TWO_STAGES = {"stages": [
    {"name": "contrast", "tasks": ["quora", "sts"], "objective": "triplet", "max_steps": 3, "lr": 1.0e-3},
    {"name": "tune", "max_steps": 5, "smart": True},
]}


@pytest.fixture(autouse=True)
def _no_fault(monkeypatch):
    monkeypatch.delenv(faults.ENV, raising=False)


def run(tmp_path: Path, tokenizer_dir: Path, name: str, overrides=(), resume: str | None = None, **top) -> dict:
    recipe = load_recipe(write_recipe(tmp_path, tokenizer_dir, **top),
                         [f"output_dir={tmp_path / name}", "train.log_every=1", *overrides])
    return train(recipe, resume=resume)


def log_records(folder: Path) -> list[dict]:
    records = [json.loads(line) for line in (folder / "train_log.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if k not in TIMING} for r in records]


def test_two_stages_switch_objective_and_tasks_at_the_right_step(tmp_path, tokenizer_dir, capsys):
    run(tmp_path, tokenizer_dir, "run", ["eval.max_examples=8"], **TWO_STAGES)
    records = [r for r in log_records(tmp_path / "run") if "loss" in r]
    assert [r["step"] for r in records] == list(range(1, 9))
    # Stage 1, steps 1-3: round-robin over quora and sts only, triplet loss, no SMART.
    assert [list(r["loss"]) for r in records[:3]] == [["quora"], ["sts"], ["quora"]]
    assert all("smart_loss" not in r for r in records[:3])
    # Stage 2, steps 4-8: round-robin over all three tasks from the first, with SMART's terms.
    assert [list(r["loss"]) for r in records[3:]] == [["sst"], ["quora"], ["sts"], ["sst"], ["quora"]]
    assert all(set(r["smart_loss"]) == {f"{t}.adv", f"{t}.prox"} for r, t in zip(records[3:], ["sst", "quora", "sts"]))
    # Each stage warms up and decays on its own: stage 1's last lr is its own decay's, stage 2 starts afresh.
    assert records[0]["lr"] == pytest.approx(1.0e-3 * 2 / 3) and records[3]["lr"] == pytest.approx(3.0e-3 * 4 / 5)
    evaluated = [r["step"] for r in log_records(tmp_path / "run") if "dev" in r]
    assert evaluated == [3, 8]  # each stage's end
    out = capsys.readouterr().out
    assert "stage 1 contrast: steps 1-3 | quora, sts | triplet" in out
    assert "stage 2 tune: steps 4-8 | sst, quora, sts | supervised + SMART (sst, quora, sts)" in out


RESUME = ["train.checkpoint_every=3", "train.keep_checkpoints=10", "eval.keep_best=false", "eval.max_examples=8"]


def crash_copy(full: Path, target: Path, step: int) -> None:
    """What a run killed after `full`'s last step leaves if its newest checkpoint is step-`step`."""
    (target / "checkpoints").mkdir(parents=True)
    shutil.copytree(full / "checkpoints" / f"step-{step}", target / "checkpoints" / f"step-{step}")
    shutil.copy(full / "train_log.jsonl", target / "train_log.jsonl")


def assert_same_files(a: Path, b: Path) -> None:
    files = sorted(p.relative_to(a) for p in a.rglob("*.safetensors"))
    assert files and files == sorted(p.relative_to(b) for p in b.rglob("*.safetensors"))
    for rel in files:
        x, y = load_file(a / rel), load_file(b / rel)
        assert x.keys() == y.keys() and all(torch.equal(x[k], y[k]) for k in x), rel


@pytest.fixture(scope="module")
def staged(tmp_path_factory, tokenizer_dir):
    """An uninterrupted two-stage run (triplet stage, then round-robin with SMART), dropout on."""
    root = tmp_path_factory.mktemp("staged")
    best = run(root, tokenizer_dir, "full", RESUME, **TWO_STAGES)
    return root, best


@pytest.mark.parametrize("step", [3, 6], ids=["between_stages", "inside_stage_2"])
def test_resume_between_and_inside_stages_ends_bit_identical(staged, tokenizer_dir, step):
    root, best = staged
    target = root / f"resumed-{step}"
    crash_copy(root / "full", target, step)
    assert run(root, tokenizer_dir, target.name, RESUME, resume="latest", **TWO_STAGES) == best
    # Model, optimizer, streams (triplet streams too), SMART's teacher and loss meters, random states.
    assert_same_files(root / "full" / "checkpoints" / "step-8", target / "checkpoints" / "step-8")
    assert log_records(target) == log_records(root / "full")
    saved = json.loads((target / "checkpoints" / "step-6" / "state.json").read_text())
    assert {"smart_teacher", "smart_losses", "triplet_streams"} <= set(saved["parts"])


# One task (round-robin would give each micro-batch another task) and no length grouping (which groups
# within the batch size): the accumulated micro-batches are then exactly the halves of the whole batch.
SMART_STRONG = ["smart.enabled=true", "smart.epsilon=1e-2", "smart.sigma=1e-3", "smart.step_size=0.1",
                "smart.adv_weight=5", "smart.prox_weight=5", "train.max_steps=6", "eval.keep_best=false",
                "eval.max_examples=8", "speed.length_pool=0", "model.dropout=0", "tasks.sst.head.dropout=0"]


def weights(folder: Path) -> dict[str, torch.Tensor]:
    return load_file(folder / "model.safetensors")


def largest_difference(a: dict, b: dict) -> float:
    assert a.keys() == b.keys()
    return max((a[k] - b[k]).abs().max().item() for k in a)


def test_smart_under_gradient_accumulation_equals_the_same_batch_unaccumulated(tmp_path, tokenizer_dir):
    sst = {"tasks": {"sst": {}}}
    run(tmp_path, tokenizer_dir, "whole", [*SMART_STRONG, "train.batch_size=16"], **sst)
    run(tmp_path, tokenizer_dir, "accumulated", [*SMART_STRONG, "train.batch_size=8", "train.grad_accum=2"], **sst)
    run(tmp_path, tokenizer_dir, "plain", [*SMART_STRONG, "smart.enabled=false", "train.batch_size=16"], **sst)
    accumulated = largest_difference(weights(tmp_path / "whole"), weights(tmp_path / "accumulated"))
    smart_effect = largest_difference(weights(tmp_path / "whole"), weights(tmp_path / "plain"))
    # The perturbations are random draws per micro-batch, so the two agree to a tolerance, not bit for bit;
    # SMART itself moves the weights far more than that tolerance.
    assert accumulated < 2e-4 and smart_effect > 20 * accumulated, (accumulated, smart_effect)


def test_smart_can_be_switched_off_per_task_and_weighted_per_task(tmp_path, tokenizer_dir):
    run(tmp_path, tokenizer_dir, "run", ["smart.enabled=true", "tasks.sts.smart={enabled: false}",
                                         "tasks.sst.smart={prox_weight: 0}", "train.max_steps=3",
                                         "eval.max_examples=8"])
    records = [r for r in log_records(tmp_path / "run") if "loss" in r]
    assert [sorted(r["smart_loss"]) for r in records] == [["sst.adv"], ["quora.adv", "quora.prox"], []]


@pytest.mark.parametrize(("override", "message"), [
    ("stages=[{objectve: triplet}]", "unknown key 'stages.0.objectve'; did you mean 'objective'?"),
    ("stages=[{tasks: [sst, stss]}]", "stages.0.tasks: unknown task 'stss'; did you mean 'sts'?"),
    ("stages=[{objective: triplet, smart: true}]", "stages.0.smart: SMART regularises supervised outputs"),
    ("stages=[{objective: contrast}]", "stages.0.objective: expected one of"),
    ("smart.setps=2", "unknown key 'smart.setps'; did you mean 'steps'?"),
    ("smart.norm=l1", "smart.norm: expected one of 'inf', 'l2', got 'l1'"),
    ("smart.beta=1.5", "smart.beta: must be in [0, 1]"),
    ("tasks.sst.smart={lambda: 1}", "unknown key 'tasks.sst.smart.lambda'"),
    ("contrastive.negative_max=4", "contrastive.negative_max: must be below positive_min"),
])
def test_bad_stage_and_smart_keys_get_one_clear_error(tmp_path, tokenizer_dir, override, message):
    with pytest.raises(MtbertError) as error:
        load_recipe(write_recipe(tmp_path, tokenizer_dir), [override])
    assert message in str(error.value) and "command-line override" in str(error.value)


def test_stage_keys_in_a_file_are_named_with_their_line(tmp_path, tokenizer_dir):
    path = write_recipe(tmp_path, tokenizer_dir, stages=[{"tasks": ["sst"]}, {"max_step": 4}])
    with pytest.raises(MtbertError, match=r"recipe.yaml:\d+: unknown key 'stages.1.max_step'; did you mean 'max_st"):
        load_recipe(path)


def test_list_items_can_be_overridden_by_index(tmp_path, tokenizer_dir):
    path = write_recipe(tmp_path, tokenizer_dir, **TWO_STAGES)
    recipe = load_recipe(path, ["stages.1.max_steps=7", "stages.0.tasks=[sst]"])
    assert recipe.stages[1].max_steps == 7 and recipe.stages[0].tasks == ["sst"]
    with pytest.raises(MtbertError, match="'stages' has items 0-1, not '2'"):
        load_recipe(path, ["stages.2.lr=1e-3"])


def test_an_index_override_on_a_recipe_without_the_list_says_so(tmp_path, tokenizer_dir):
    path = write_recipe(tmp_path, tokenizer_dir)
    with pytest.raises(MtbertError, match="the recipe has no 'stages' list to take item 0 of"):
        load_recipe(path, ["stages.0.max_steps=3"])


def planned(stages: list[dict], lr: float = 5e-5) -> list:
    """The stages of a recipe over two tasks of 64 examples (8 batches a pass)."""
    recipe = parse_recipe({"model": {"init": "random", "tokenizer": "tok"}, "tasks": {"sst": {}, "sts": {}},
                           "train": {"lr": lr, "warmup_ratio": 0.1, "batch_size": 8}, "stages": stages})
    streams = {name: SimpleNamespace(pass_size=64, batches_per_pass=8) for name in recipe.tasks}
    return plan_stages(recipe, [SimpleNamespace(streams=streams, describe=lambda stage: "supervised")] * len(stages),
                       recipe.train.grad_accum)


def lambda_schedule(optimizer, stages, base_lr):
    """How the learning rate was set before LearningRateSchedule: LambdaLR over train.lr, a stage's own peak
    as a ratio to it."""
    def factor(step):
        stage = stage_at(stages, step)
        f = stage.lr_factor(step)
        return f if stage.lr == base_lr else f * stage.lr / base_lr
    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def two_groups(lr: float) -> torch.optim.Optimizer:
    return torch.optim.AdamW([{"params": [torch.nn.Parameter(torch.zeros(2))]},
                              {"params": [torch.nn.Parameter(torch.zeros(1))], "weight_decay": 0.0}], lr=lr)


@pytest.mark.filterwarnings("ignore:Detected call of")  # LambdaLR stepped without an optimizer step
def test_the_schedule_sets_the_rate_of_every_step_exactly_as_before():
    stages = planned([{"max_steps": 20, "lr": 2e-5}, {"max_steps": 30}, {"max_steps": 13, "lr": 3.3e-5}])
    ours, theirs = two_groups(stages[0].lr), two_groups(5e-5)
    schedule, reference = LearningRateSchedule(ours, stages, reference_lr=5e-5), lambda_schedule(theirs, stages, 5e-5)
    rates = []
    for step in range(63):
        assert [g["lr"] for g in ours.param_groups] == [g["lr"] for g in theirs.param_groups], step  # bit for bit
        assert schedule.lr == reference.get_last_lr()[0] == schedule.lr_at(step)
        rates.append(schedule.lr)
        schedule.step()
        reference.step()
    # Each stage warms up (10% of its steps) to its own peak and decays to zero.
    assert rates[0] == pytest.approx(2e-5 / 3) and rates[1] == pytest.approx(2 * 2e-5 / 3) and rates[2] == 2e-5
    assert rates[20] == pytest.approx(5e-5 / 4) and rates[23] == 5e-5 and rates[49] == pytest.approx(5e-5 / 27)
    assert rates[50] == pytest.approx(3.3e-5 / 2) and schedule.lr_at(62) == pytest.approx(3.3e-5 / 12)


@pytest.mark.filterwarnings("ignore:Detected call of")
def test_the_schedule_resumes_from_its_own_state_and_from_a_lambda_schedules():
    stages = planned([{"max_steps": 10, "lr": 2e-5}, {"max_steps": 10}])
    theirs = two_groups(5e-5)
    reference = lambda_schedule(theirs, stages, 5e-5)
    for _ in range(13):
        reference.step()
    for state in (reference.state_dict(), {"last_epoch": 13}):  # a checkpoint written before, or now
        resumed = LearningRateSchedule(two_groups(2e-5), stages, reference_lr=5e-5)
        resumed.load_state_dict(state)
        assert resumed.state_dict() == {"last_epoch": 13}
        assert [g["lr"] for g in resumed.optimizer.param_groups] == [g["lr"] for g in theirs.param_groups]
