"""The package as users start it: `python -m mtbert`, and `accelerate launch` with two CPU processes."""

import os
import subprocess
import sys

import pytest

from mtbert import __version__

from helpers import write_recipe


def run(args, **kw):
    env = dict(os.environ, TOKENIZERS_PARALLELISM="false", OMP_NUM_THREADS="1")
    return subprocess.run(args, capture_output=True, text=True, env=env, timeout=600, **kw)


def test_python_dash_m_reaches_the_cli():
    result = run([sys.executable, "-m", "mtbert", "--version"])
    assert result.returncode == 0 and result.stdout.strip() == f"mtbert {__version__}"


@pytest.mark.slow
def test_accelerate_launch_two_cpu_processes(tmp_path, tokenizer_dir):
    """Two processes train the same tasks in step (task-owned heads unused in a step must not hang the
    gradient reduction), write one export, and report metrics on the whole dev sets."""
    recipe = write_recipe(tmp_path, tokenizer_dir, train={"batch_size": 8, "max_steps": 6})
    result = run([sys.executable, "-m", "accelerate.commands.launch", "--cpu", "--num_processes", "2",
                  "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
                  "--main_process_port", "29517", "-m", "mtbert", "train", str(recipe)])
    assert result.returncode == 0, result.stderr[-3000:]
    assert (tmp_path / "ckpt" / "model.safetensors").is_file()
    assert result.stdout.count("exported the best model") == 1
