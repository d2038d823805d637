"""Balancing under two processes: two processes at batch 8 end where one process at batch 16 does. Static weights
(sampling all_tasks: several tasks' forwards before one backward, which DDP's reducer cannot follow; the training
forward runs them beside it and averages the gradients by hand, training/launch.py's TrainingForward), and every
method that averages over the processes (docs/objectives.md, "Several processes"): uncertainty weighting (the
gradient of s), GradNorm (the per-task gradients at the shared layer, and the losses), FAMO (the losses before and
after the step), DWA (the window's mean losses; a window of one step here, so that its weights move within the
run) and gradient surgery (the Jacobian). Compared: the model's weights, the task weights (and FAMO's
logits, uncertainty's s) logged at every step, and the method's learned state as its checkpoint part saves it (the
values, their Adam moments, GradNorm's first losses). Each process's batch is half of the one process's, so the
averaged figures are the one process's: a method that used its own process's half instead moves ~1e-3 away."""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from safetensors.torch import load_file

from mtbert.config import load_recipe
from mtbert.training.loop import train

from helpers import write_recipe

REPO = Path(__file__).resolve().parents[2]
RUN = ["model.dropout=0", "tasks.sst.head.dropout=0", "tasks.quora.head.dropout=0", "tasks.sts.head.dropout=0",
       "train.max_steps=4", "train.log_every=1", "train.checkpoint_every=4", "eval.every_steps=0",
       "eval.max_examples=8", "sampling.strategy=all_tasks", "balancing.lr=0.1"]
PART = {"static": None, "uncertainty": "uncertainty", "gradnorm": "gradnorm", "famo": "famo", "dwa": "dwa",
        "upgrad": None}
EXTRA = {"dwa": ["balancing.window=1"]}
LOGGED = ("task_weights", "log_variance", "famo_logits")
LONG = [pytest.mark.slow, pytest.mark.extended]
METHODS = [pytest.param("static", marks=pytest.mark.slow), pytest.param("upgrad", marks=pytest.mark.slow),
           *(pytest.param(method, marks=LONG) for method in ("uncertainty", "gradnorm", "famo", "dwa"))]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def logged(folder: Path) -> list[dict]:
    """What each log record holds of the balancing: {name: {task: value}} per step."""
    records = [json.loads(line) for line in (folder / "train_log.jsonl").read_text().splitlines()]
    return [{key: r[key] for key in LOGGED if key in r} for r in records if "loss" in r]


def worst(a: dict, b: dict) -> float:
    """The largest difference between two {name: tensor} dicts with the same names."""
    assert a.keys() == b.keys()
    return max(((a[k].double() - b[k].double()).abs().max().item() for k in a), default=0.0)


@pytest.mark.parametrize("method", METHODS)
def test_two_processes_take_the_step_of_one_process_at_double_batch(tmp_path, tokenizer_dir, method):
    recipe = write_recipe(tmp_path, tokenizer_dir)
    run = [*RUN, f"balancing.method={method}", *EXTRA.get(method, [])]
    command = [sys.executable, "-m", "accelerate.commands.launch", "--config_file",
               str(REPO / "accelerate_configs" / "cpu_multi.yaml"), "--num_processes", "2", "--main_process_port",
               str(free_port()), "--mixed_precision", "no", "-m", "mtbert", "train", str(recipe), *run,
               "train.batch_size=8", f"output_dir={tmp_path / 'two'}"]
    env = dict(os.environ, TOKENIZERS_PARALLELISM="false", OMP_NUM_THREADS="1")
    result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=600, cwd=REPO)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "weights identical on all 2 processes" in result.stdout
    train(load_recipe(recipe, [*run, "train.batch_size=16", f"output_dir={tmp_path / 'one'}"]))
    two, one = tmp_path / "two", tmp_path / "one"
    model = worst(load_file(two / "model.safetensors"), load_file(one / "model.safetensors"))
    assert model < 3e-5, model  # float sums in another order
    records = {name: logged(folder) for name, folder in (("two", two), ("one", one))}
    assert len(records["one"]) == 4 and all(r["task_weights"] for r in records["one"])
    if method != "static":
        assert records["one"][-1]["task_weights"] != records["one"][0]["task_weights"]  # they moved
    for got, expected in zip(records["two"], records["one"], strict=True):
        assert got.keys() == expected.keys()
        for key in expected:
            assert got[key] == pytest.approx(expected[key], abs=1e-5), key
    if PART[method]:
        part = f"checkpoints/step-4/{PART[method]}.safetensors"
        state = worst(load_file(two / part), load_file(one / part))
        assert state < 1e-5, state
