"""`mtbert train` processes killed for real (SIGKILL, SIGTERM) at several points, then resumed: the run
ends bit-identical to one that was never interrupted (one CPU process)."""

import json
import os
import signal
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from mtbert.training import faults
from mtbert.training.checkpoints import latest_checkpoint, read_manifest

from helpers import write_recipe

ARGS = ["train.max_steps=10", "train.checkpoint_every=3", "train.keep_checkpoints=10", "eval.every_steps=4",
        "train.log_every=2", "eval.keep_best=false"]


def mtbert_train(recipe, output, *extra, fault=None):
    env = dict(os.environ, TOKENIZERS_PARALLELISM="false", OMP_NUM_THREADS="1")
    env.pop(faults.ENV, None)
    if fault:
        env[faults.ENV] = fault
    return subprocess.run([sys.executable, "-m", "mtbert", "train", str(recipe), *ARGS, f"output_dir={output}",
                           *extra], capture_output=True, text=True, env=env, timeout=600)


def records(folder):
    lines = (folder / "train_log.jsonl").read_text().splitlines()
    return [{k: v for k, v in json.loads(line).items() if k not in ("tokens_per_s", "elapsed_s")} for line in lines]


@pytest.mark.slow
def test_killed_at_several_points_and_resumed_ends_bit_identical(tmp_path, tokenizer_dir):
    recipe = write_recipe(tmp_path, tokenizer_dir)
    reference, run = tmp_path / "reference", tmp_path / "run"
    checkpoints = run / "checkpoints"
    assert mtbert_train(recipe, reference).returncode == 0

    # SIGTERM during step 2: a checkpoint is saved where it stopped, and the exit status says why.
    stopped = mtbert_train(recipe, run, fault="sigterm_after_step:1")
    assert stopped.returncode == 128 + signal.SIGTERM, stopped.stderr[-2000:]
    assert "stopped by SIGTERM after step 2" in stopped.stderr and "--resume latest" in stopped.stderr
    assert latest_checkpoint(checkpoints).name == "step-2"

    # SIGKILL between checkpoints: step-3 is the newest; steps 4.. are trained again after the resume.
    killed = mtbert_train(recipe, run, "--resume", "latest", fault="kill_after_step:4")
    assert killed.returncode == -signal.SIGKILL
    assert latest_checkpoint(checkpoints).name == "step-3"

    # SIGKILL half-way through writing step-6: step-3 stays the latest, complete and loadable.
    killed = mtbert_train(recipe, run, "--resume", "latest", fault="kill_during_save:6")
    assert killed.returncode == -signal.SIGKILL
    assert (checkpoints / ".step-6.tmp").is_dir() and not (checkpoints / "step-6").exists()
    assert latest_checkpoint(checkpoints).name == "step-3"
    assert read_manifest(checkpoints / "step-3")["step"] == 3

    # SIGKILL right after a checkpoint: nothing to train again.
    killed = mtbert_train(recipe, run, "--resume", "latest", fault="kill_after_step:9")
    assert killed.returncode == -signal.SIGKILL
    assert latest_checkpoint(checkpoints).name == "step-9" and not (checkpoints / ".step-6.tmp").exists()

    finished = mtbert_train(recipe, run, "--resume", "latest")
    assert finished.returncode == 0, finished.stderr[-2000:]
    assert "resumed from" in finished.stdout and "step 9 of 10" in finished.stdout

    for name in ("model.safetensors", "checkpoints/step-10/model.safetensors",
                 "checkpoints/step-10/optimizer.safetensors", "checkpoints/step-10/rng.process-0.safetensors"):
        ours, theirs = load_file(run / name), load_file(reference / name)
        assert ours.keys() == theirs.keys() and all(torch.equal(ours[k], theirs[k]) for k in ours), name
    assert records(run) == records(reference)
    assert json.loads((run / "metrics.json").read_text()) == json.loads((reference / "metrics.json").read_text())
