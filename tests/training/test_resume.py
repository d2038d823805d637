"""The training loop's resumable checkpoints: exact resume, what may change, non-finite losses, SIGTERM.

These run in-process (same threads, same process: bit-identical). tests/training/test_kill_resume.py kills real
`mtbert train` processes with SIGKILL; tests/training/test_launch.py does the same under several processes.
"""

import json
import math
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from mtbert.config import load_recipe
from mtbert.errors import MtbertError
from mtbert.training import faults
from mtbert.training.checkpoints import complete_checkpoints, latest_checkpoint
from mtbert.training.guards import TrainingInterrupted
from mtbert.training.loop import train

from helpers import write_recipe

STEPS = ["train.max_steps=8", "train.checkpoint_every=3", "train.keep_checkpoints=5", "eval.every_steps=4",
         "train.log_every=2", "eval.keep_best=false"]
TIMING = ("tokens_per_s", "elapsed_s")


@pytest.fixture(autouse=True)
def _no_fault(monkeypatch):
    monkeypatch.delenv(faults.ENV, raising=False)


def run(tmp_path: Path, tokenizer_dir: Path, name: str, overrides=(), resume: str | None = None) -> dict:
    recipe = load_recipe(write_recipe(tmp_path, tokenizer_dir), [*STEPS, f"output_dir={tmp_path / name}", *overrides])
    return train(recipe, resume=resume)


def log_records(folder: Path) -> list[dict]:
    records = [json.loads(line) for line in (folder / "train_log.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if k not in TIMING} for r in records]


def assert_same_files(a: Path, b: Path) -> None:
    """Every safetensors file under a equals its twin under b, tensor for tensor, bit for bit."""
    files = sorted(p.relative_to(a) for p in a.rglob("*.safetensors"))
    assert files and files == sorted(p.relative_to(b) for p in b.rglob("*.safetensors"))
    for rel in files:
        x, y = load_file(a / rel), load_file(b / rel)
        assert x.keys() == y.keys(), rel
        assert all(torch.equal(x[k], y[k]) for k in x), f"{rel} differs"


def crash_copy(full: Path, target: Path, step: int) -> None:
    """What a run killed after `full`'s last step leaves if its newest checkpoint is step-`step`:
    that checkpoint, and a log that goes on past it."""
    (target / "checkpoints").mkdir(parents=True)
    shutil.copytree(full / "checkpoints" / f"step-{step}", target / "checkpoints" / f"step-{step}")
    shutil.copy(full / "train_log.jsonl", target / "train_log.jsonl")


RECIPES = {
    "round_robin_with_dropout": [],
    "accumulation_annealed_own_adamw_stochastic_pooler": [
        "sampling.strategy=annealed", "train.epochs=2", "train.grad_accum=2", "train.optimizer=mtbert_adamw",
        "tasks.sst.class_balanced=true", "tasks.quora.max_train_examples=16", "tasks.sst.pooler=stochastic",
        "train.warmup_ratio=0.25"],
    # per-task adapters on a frozen + shared base; LoRA's dropout draws random numbers, all_tasks switches
    # adapters between the forwards of one backward
    "lora_dropout": ["model.sharing=F1-S1+lora[r=2,dropout=0.1,targets=all,quora+sts]"],
    "pals_all_tasks": ["model.sharing=F1-S1+pals", "sampling.strategy=all_tasks"],
    # per-task evaluation: sts's step-3 score, from before the crash, is carried into step 4's overall
    "per_task_eval_every_keep_best": ["tasks.sst.eval_every=2", "tasks.sts.eval_every=3", "eval.keep_best=true"],
    # sst streamed from its file (data/streamed.py), 256 examples at 100 a step: the step-3 checkpoint ends a pass
    "streamed_task_across_passes": ["tasks.sst.streaming=true", "data.stream_buffer=16", "tasks.sst.batch_size=100",
                                    "sampling.strategy=all_tasks"],
}


@pytest.mark.parametrize("overrides", RECIPES.values(), ids=RECIPES.keys())
def test_resumed_run_ends_bit_identical(tmp_path, tokenizer_dir, overrides):
    best = run(tmp_path, tokenizer_dir, "full", overrides)
    crash_copy(tmp_path / "full", tmp_path / "resumed", step=3)
    resumed_best = run(tmp_path, tokenizer_dir, "resumed", overrides, resume="latest")
    assert resumed_best == best
    full, resumed = tmp_path / "full", tmp_path / "resumed"
    assert_same_files(full / "checkpoints" / "step-8", resumed / "checkpoints" / "step-8")
    assert torch.equal(load_file(full / "model.safetensors")["encoder.copies.shared.pooler.dense.weight"],
                       load_file(resumed / "model.safetensors")["encoder.copies.shared.pooler.dense.weight"])
    assert_same_files(full, resumed)
    assert log_records(resumed) == log_records(full)  # cut back to step 3, then written again, once


def test_resume_latest_passes_over_a_damaged_checkpoint_and_still_ends_bit_identical(tmp_path, tokenizer_dir,
                                                                                       capsys):
    best = run(tmp_path, tokenizer_dir, "full")
    full, resumed = tmp_path / "full", tmp_path / "resumed"
    crash_copy(full, resumed, step=3)
    shutil.copytree(full / "checkpoints" / "step-6", resumed / "checkpoints" / "step-6")
    (resumed / "checkpoints" / "latest").write_text("step-6\n")
    weights = resumed / "checkpoints" / "step-6" / "model.safetensors"
    damaged = bytearray(weights.read_bytes())
    damaged[-1] ^= 0x01  # one bit of one weight: the file still parses, only its checksum tells
    weights.write_bytes(bytes(damaged))
    capsys.readouterr()
    assert run(tmp_path, tokenizer_dir, "resumed", resume="latest") == best
    err = capsys.readouterr().err
    assert "skipped checkpoint step-6" in err and "model.safetensors: damaged" in err
    assert_same_files(full / "checkpoints" / "step-8", resumed / "checkpoints" / "step-8")
    assert log_records(resumed) == log_records(full)


@pytest.fixture
def bf16(monkeypatch):
    """bf16 autocast, as `accelerate launch --mixed_precision bf16` asks for it (CPU autocast here)."""
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state(True)  # Accelerate keeps one state per process; start a new one
    monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", "bf16")
    yield
    AcceleratorState._reset_state(True)


def test_mixed_precision_run_resumes_bit_identical_and_only_as_such(tmp_path, tokenizer_dir, bf16, monkeypatch):
    best = run(tmp_path, tokenizer_dir, "full")
    manifest = json.loads((tmp_path / "full" / "checkpoints" / "step-8" / "state.json").read_text())
    assert manifest["info"]["launch"]["mixed_precision"] == "bf16"
    crash_copy(tmp_path / "full", tmp_path / "resumed", step=3)
    resumed = run(tmp_path, tokenizer_dir, "resumed", resume="latest")
    assert json.dumps(resumed) == json.dumps(best)  # as text: a barely trained bf16 model may score NaN
    assert_same_files(tmp_path / "full" / "checkpoints" / "step-8", tmp_path / "resumed" / "checkpoints" / "step-8")
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state(True)
    monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", "no")
    with pytest.raises(MtbertError, match="launch.mixed_precision was 'bf16' in that run and is 'no' now"):
        run(tmp_path, tokenizer_dir, "full", resume=str(tmp_path / "full" / "checkpoints" / "step-3"))


def test_sigterm_saves_a_checkpoint_to_resume_from(tmp_path, tokenizer_dir, monkeypatch):
    run(tmp_path, tokenizer_dir, "full")
    monkeypatch.setenv(faults.ENV, "sigterm_after_step:4")
    with pytest.raises(TrainingInterrupted) as stopped:
        run(tmp_path, tokenizer_dir, "stopped")
    # The signal came after step 4's stop vote: the run stopped at the end of step 5 (not a checkpoint step).
    assert stopped.value.exit_code == 143 and stopped.value.step == 5
    assert latest_checkpoint(tmp_path / "stopped" / "checkpoints") == tmp_path / "stopped" / "checkpoints" / "step-5"
    monkeypatch.delenv(faults.ENV)
    run(tmp_path, tokenizer_dir, "stopped", resume="latest")
    assert_same_files(tmp_path / "full" / "checkpoints" / "step-8", tmp_path / "stopped" / "checkpoints" / "step-8")
    assert log_records(tmp_path / "stopped") == log_records(tmp_path / "full")


def test_resuming_a_finished_run_returns_its_result(tmp_path, tokenizer_dir):
    best = run(tmp_path, tokenizer_dir, "done")
    log = (tmp_path / "done" / "train_log.jsonl").read_text()
    assert run(tmp_path, tokenizer_dir, "done", resume="auto") == best
    assert (tmp_path / "done" / "train_log.jsonl").read_text() == log


def test_resume_auto_starts_afresh_without_a_checkpoint(tmp_path, tokenizer_dir):
    run(tmp_path, tokenizer_dir, "fresh", ["train.max_steps=2"], resume="auto")
    assert [step for step, _ in complete_checkpoints(tmp_path / "fresh" / "checkpoints")] == [2]


def test_a_recipe_change_that_matters_is_refused_by_name(tmp_path, tokenizer_dir):
    run(tmp_path, tokenizer_dir, "run", ["train.max_steps=3"])
    with pytest.raises(MtbertError, match=r"recipe key train\.lr was 0\.003 in that run and is 0\.001 now"):
        run(tmp_path, tokenizer_dir, "run", ["train.max_steps=3", "train.lr=1e-3"], resume="latest")
    with pytest.raises(MtbertError, match=r"recipe key tasks\.sts\.pair_encoding"):
        run(tmp_path, tokenizer_dir, "run", ["train.max_steps=3", "tasks.sts.pair_encoding=cross"], resume="latest")
    # Logging and checkpoint cadence do not change what is trained.
    run(tmp_path, tokenizer_dir, "run", ["train.max_steps=3", "train.log_every=1", "train.checkpoint_every=1"],
        resume="latest")


def test_changed_training_data_is_refused(tmp_path, tokenizer_dir):
    run(tmp_path, tokenizer_dir, "run", ["train.max_steps=3"])
    sst = tmp_path / "data" / "cs224n" / "ids-sst-train.csv"
    sst.write_text("".join(sst.read_text().splitlines(keepends=True)[:-1]))
    with pytest.raises(MtbertError, match=r"train_examples\.sst was 256 in that run and is 255 now"):
        run(tmp_path, tokenizer_dir, "run", ["train.max_steps=3"], resume="latest")


def test_a_non_finite_loss_stops_the_run_naming_task_and_step(tmp_path, tokenizer_dir, monkeypatch):
    monkeypatch.setenv(faults.ENV, "nan_loss_at_step:5")
    with pytest.raises(MtbertError, match=r"non-finite loss on task quora at step 5.*step-3"):
        run(tmp_path, tokenizer_dir, "nan")
    checkpoints = tmp_path / "nan" / "checkpoints"
    assert [step for step, _ in complete_checkpoints(checkpoints)] == [3]  # nothing saved after the NaN
    exported = load_file(tmp_path / "nan" / "model.safetensors")
    assert all(torch.isfinite(t).all() for t in exported.values())  # step 4's export, not a NaN model
    assert json.loads((tmp_path / "nan" / "metrics.json").read_text())["step"] == 4
    monkeypatch.delenv(faults.ENV)
    run(tmp_path, tokenizer_dir, "nan", resume="latest")  # the last good checkpoint resumes


def test_skip_drops_the_step_with_a_non_finite_loss(tmp_path, tokenizer_dir, monkeypatch):
    monkeypatch.setenv(faults.ENV, "nan_loss_at_step:5")
    run(tmp_path, tokenizer_dir, "skip", ["train.on_nonfinite=skip", "train.checkpoint_every=1"])
    checkpoints = tmp_path / "skip" / "checkpoints"
    # Step 5 changed neither the weights nor the optimizer state; the run went on and stayed finite.
    for part in ("model", "optimizer"):
        before = load_file(checkpoints / "step-4" / f"{part}.safetensors")
        after = load_file(checkpoints / "step-5" / f"{part}.safetensors")
        assert all(torch.equal(before[k], after[k]) for k in before), part
    assert all(torch.isfinite(t).all() for t in load_file(tmp_path / "skip" / "model.safetensors").values())
    progress = json.loads((checkpoints / "step-8" / "progress.json").read_text())["state"]
    assert progress["skipped_steps"] == [5]
    assert {"step": 5, "skipped": "non-finite loss on task quora"} in log_records(tmp_path / "skip")


def test_only_the_newest_checkpoints_are_kept(tmp_path, tokenizer_dir):
    run(tmp_path, tokenizer_dir, "kept", ["train.checkpoint_every=2", "train.keep_checkpoints=2"])
    assert [step for step, _ in complete_checkpoints(tmp_path / "kept" / "checkpoints")] == [6, 8]


def test_checkpoints_hold_no_pickle(tmp_path, tokenizer_dir):
    run(tmp_path, tokenizer_dir, "files", ["train.max_steps=3"])
    names = {p.suffix for p in (tmp_path / "files" / "checkpoints").rglob("*") if p.is_file()}
    assert names <= {".json", ".safetensors", ""}, names  # "" is the `latest` pointer


def test_fault_specs_are_checked(monkeypatch):
    monkeypatch.setenv(faults.ENV, "explode_at:3")
    with pytest.raises(ValueError, match="explode_at"):
        faults.arm()
    monkeypatch.setenv(faults.ENV, "nan_loss_at_step:2@1")
    faults.arm(process_index=0)
    assert not math.isnan(faults.loss(2, torch.tensor(1.0)).item())
    faults.arm(process_index=1)
    assert math.isnan(faults.loss(2, torch.tensor(1.0)).item())
    monkeypatch.delenv(faults.ENV)
    faults.arm()
