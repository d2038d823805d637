"""Multi-stage runs and SMART in the training loop: stages switch tasks and objective at the right step,
resume inside a stage is exact, SMART under gradient accumulation equals the same batch unaccumulated."""

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from mtbert import faults
from mtbert.config import load_recipe
from mtbert.errors import MtbertError
from mtbert.train import train

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
