"""mtbert slurm: the job script it writes, run here with stand-in srun/scontrol/sbatch that start two local
"nodes" with SLURM's variables; signalled before its time limit, the job saves, requeues itself and the
requeued run ends with the weights of an uninterrupted one."""

import json
import os
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest
from safetensors.torch import load_file
from typer.testing import CliRunner

from mtbert.cli import app
from mtbert.config import load_recipe
from mtbert.training.loop import train

from helpers import digest, write_recipe

# Dropout off: two processes draw other dropout masks than one process for the same examples.
RUN = ["model.dropout=0", "tasks.sst.head.dropout=0", "tasks.quora.head.dropout=0", "tasks.sts.head.dropout=0",
       "train.max_steps=10", "train.checkpoint_every=100", "train.log_every=1", "eval.every_steps=5",
       "eval.keep_best=false"]

SRUN = r"""#!/bin/bash
# stand-in srun: one copy of the command per node, with that node's SLURM variables; TERM is forwarded
while [[ "$1" == -* ]]; do shift; done
pids=()
forward() { kill -TERM "${pids[@]}" 2>/dev/null; }
trap forward TERM
for ((i = 0; i < SLURM_NNODES; i++)); do
    SLURM_NODEID=$i SLURM_PROCID=$i SLURM_LOCALID=0 "$@" &
    pids+=($!)
    [ "$i" -lt $((SLURM_NNODES - 1)) ] && sleep 3  # the first node's rendezvous is up before the others come
done
status=0
for pid in "${pids[@]}"; do
    while wait "$pid"; s=$?; kill -0 "$pid" 2>/dev/null; do :; done
    [ "$s" -ne 0 ] && status=$s
done
exit $status
"""
SCONTROL = r"""#!/bin/bash
case "$1 $2" in
    "show hostnames") for ((i = 0; i < SLURM_NNODES; i++)); do echo 127.0.0.1; done ;;
    requeue*) echo "$2" >> "$FAKE_SLURM/requeued" ;;
    *) exit 1 ;;
esac
"""
SBATCH = r"""#!/bin/bash
echo "$@" >> "$FAKE_SLURM/submitted"
echo "Submitted batch job 4242"
"""


@pytest.fixture
def fake_slurm(tmp_path, monkeypatch):
    folder = tmp_path / "fake-slurm"
    folder.mkdir()
    for name, text in (("srun", SRUN), ("scontrol", SCONTROL), ("sbatch", SBATCH)):
        (folder / name).write_text(text)
        (folder / name).chmod(0o755)
    monkeypatch.setenv("PATH", f"{folder}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("FAKE_SLURM", str(folder))
    return folder


def test_dry_run_prints_a_script_for_n_nodes(tmp_path, tokenizer_dir):
    recipe = write_recipe(tmp_path, tokenizer_dir)
    result = CliRunner().invoke(app, ["slurm", str(recipe), "train.lr=1e-3", "--nodes", "4", "--gpus-per-node", "8",
                                      "--partition", "gpu", "--time", "2-00:00:00", "--zero", "2", "--dry-run"])
    assert result.exit_code == 0, result.output
    script = result.output
    for line in ("#SBATCH --nodes=4", "#SBATCH --ntasks-per-node=1", "#SBATCH --gpus-per-node=8",
                 "#SBATCH --partition=gpu", "#SBATCH --time=2-00:00:00", "#SBATCH --requeue",
                 "#SBATCH --signal=B:USR1@300", 'scontrol requeue "$SLURM_JOB_ID"'):
        assert line in script
    assert '--machine_rank "$SLURM_NODEID"' in script and "--rdzv_backend c10d" in script
    assert '--num_processes "$((SLURM_NNODES * 8))"' in script and "deepspeed_zero2.yaml" in script
    assert "--deepspeed_multinode_launcher standard" in script
    assert f"train {recipe} train.lr=1e-3 --resume auto" in script
    assert not list(Path.cwd().glob("mtbert-recipe.sbatch"))  # a dry run writes nothing


@pytest.mark.parametrize("args,message", [
    (["--time", "four hours"], "expected SLURM's form"),
    (["--gpus-per-node", "0", "--zero", "2"], "--zero needs GPU nodes"),
    (["--rendezvous", "etcd"], "expected c10d or static"),
])
def test_bad_options_are_one_line(tmp_path, tokenizer_dir, args, message):
    recipe = write_recipe(tmp_path, tokenizer_dir)
    result = CliRunner().invoke(app, ["slurm", str(recipe), "--dry-run", *args])
    assert result.exit_code != 0 and message in result.output and "Traceback" not in result.output


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_step(log: Path, step: int, process: subprocess.Popen, limit: float = 300) -> None:
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline and process.poll() is None:
        if log.exists() and any(json.loads(line).get("step", 0) >= step and "loss" in json.loads(line)
                                for line in log.read_text().splitlines() if line.strip()):
            return
        time.sleep(0.2)
    raise AssertionError(f"the job never logged step {step} (exit {process.poll()})")


@pytest.mark.slow
@pytest.mark.extended
def test_a_signalled_job_requeues_itself_and_ends_like_an_uninterrupted_run(tmp_path, tokenizer_dir, fake_slurm,
                                                                           monkeypatch):
    recipe = write_recipe(tmp_path, tokenizer_dir)
    monkeypatch.chdir(tmp_path)
    overrides = [*RUN, "train.batch_size=8", f"output_dir={tmp_path / 'job'}"]  # per process: 2 x 8
    submitted = CliRunner().invoke(app, ["slurm", str(recipe), *overrides, "--nodes", "2", "--gpus-per-node", "0",
                                         "--port", str(free_port()), "--signal-before", "120",
                                         "--script", str(tmp_path / "job.sbatch")])
    assert submitted.exit_code == 0, submitted.output
    assert "Submitted batch job 4242" in submitted.output
    assert (fake_slurm / "submitted").read_text().strip() == str(tmp_path / "job.sbatch")

    env = dict(os.environ, SLURM_JOB_ID="4242", SLURM_NNODES="2", SLURM_JOB_NODELIST="node[1-2]",
               TOKENIZERS_PARALLELISM="false", OMP_NUM_THREADS="1")
    first = subprocess.Popen(["bash", str(tmp_path / "job.sbatch")], env={**env, "MTBERT_TEST_FAULT":
                             "pause_each_step:400"}, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    wait_for_step(tmp_path / "job" / "train_log.jsonl", 3, first)
    first.send_signal(signal.SIGUSR1)  # what #SBATCH --signal=B:USR1@120 makes SLURM do before the limit
    _, err = first.communicate(timeout=600)
    assert first.returncode != 0, err[-3000:]
    assert (fake_slurm / "requeued").read_text().split() == ["4242"], err[-3000:]
    assert "stopped by SIGTERM" in err and not (tmp_path / "job" / "model.safetensors").exists()
    stopped_at = (tmp_path / "job" / "checkpoints" / "latest").read_text().strip()

    # SLURM runs the same script again; --resume auto continues from the checkpoint saved on the signal.
    again = subprocess.run(["bash", str(tmp_path / "job.sbatch")], env={**env, "SLURM_RESTART_COUNT": "1"},
                           capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr[-3000:]
    assert f"resumed from {tmp_path / 'job' / 'checkpoints' / stopped_at}" in again.stdout + again.stderr
    assert (fake_slurm / "requeued").read_text().split() == ["4242"]  # a finished job does not requeue

    train(load_recipe(recipe, [*RUN, "train.batch_size=16", f"output_dir={tmp_path / 'alone'}"]))
    job, alone = (load_file(tmp_path / name / "model.safetensors") for name in ("job", "alone"))
    assert job.keys() == alone.keys()
    worst = max((job[k] - alone[k]).abs().max().item() for k in job)
    print(f"requeued 2-node job: weights sha256 {digest(job)}; one process at double batch {digest(alone)}; "
          f"largest difference {worst:.1e}")
    assert worst < 1e-5  # float sums in another order
