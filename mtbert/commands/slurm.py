"""`mtbert slurm`: write (and submit) a plain sbatch job script that trains a recipe on N nodes of a SLURM
cluster, and survives the time limit and preemption by requeueing itself.

The script runs one `srun` task per node; each starts `accelerate launch` for its node, with the machine
rank taken from SLURM_NODEID and the rendezvous (c10d by default) on the first node of the allocation.
GPU nodes use DDP (accelerate_configs/multi_gpu.yaml) or DeepSpeed ZeRO (--zero 2|3, with accelerate's
"standard" multi-node launcher: no ssh, no hostfile); --gpus-per-node 0 runs one CPU process per node.

Stopping in time: the job asks SLURM for USR1 on the batch shell `--signal-before` seconds before its time
limit (`#SBATCH --signal=B:USR1@S`; SLURM may send it up to a minute earlier). The script forwards it to
srun as SIGTERM; srun passes it to each node's `accelerate launch`, which passes it to the training
processes; mtbert saves a resumable checkpoint and stops (exit 143). TORCH_ELASTIC_SHUTDOWN_TIMEOUT gives
that save time before the launcher kills its workers. Once srun has returned, a job that was signalled
and did not finish runs `scontrol requeue $SLURM_JOB_ID`; SLURM restarts the same script, and
`mtbert train --resume auto` continues from the newest checkpoint that verifies (or starts afresh when
there is none). A preemption by SIGTERM (PreemptMode=REQUEUE or CANCEL) takes the same path.
"""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from mtbert.config import load_recipe
from mtbert.errors import MtbertError

CONFIGS = Path(__file__).resolve().parents[2] / "accelerate_configs"
TIME = re.compile(r"^(\d+-)?\d+(:\d{1,2}){0,2}$")


@dataclass
class JobSpec:
    recipe: Path
    overrides: list[str]
    nodes: int
    gpus_per_node: int
    partition: str | None = None
    time: str | None = None
    zero: int | None = None
    cpus_per_task: int | None = None
    signal_before: int = 300
    "Seconds before the time limit that SLURM signals the job (at least the longest checkpoint save)."
    port: int = 29500
    rendezvous: str = "c10d"
    name: str = "mtbert"


def accelerate_config(spec: JobSpec) -> tuple[Path, list[str]]:
    """The accelerate config file and the extra launch options for this kind of node."""
    if spec.zero is not None:
        if spec.gpus_per_node == 0:
            raise MtbertError("--zero needs GPU nodes (--gpus-per-node 1 or more)")
        config = CONFIGS / f"deepspeed_zero{spec.zero}.yaml"
        extra = ["--deepspeed_config_file", str(CONFIGS / "deepspeed" / f"zero{spec.zero}.json"),
                 "--deepspeed_multinode_launcher", "standard"]
    else:
        config = CONFIGS / ("multi_gpu.yaml" if spec.gpus_per_node else "cpu_multi.yaml")
        extra = []
    if not config.is_file():
        raise MtbertError(f"{config}: accelerate config not found (mtbert slurm runs from a source checkout, "
                          f"whose accelerate_configs/ it names in the job script)")
    return config, extra


def _directives(spec: JobSpec) -> list[str]:
    lines = [f"--job-name={spec.name}", f"--nodes={spec.nodes}", "--ntasks-per-node=1"]
    if spec.gpus_per_node:
        lines.append(f"--gpus-per-node={spec.gpus_per_node}")
    if spec.cpus_per_task:
        lines.append(f"--cpus-per-task={spec.cpus_per_task}")
    if spec.partition:
        lines.append(f"--partition={spec.partition}")
    if spec.time:
        lines.append(f"--time={spec.time}")
    lines += ["--requeue", "--open-mode=append", f"--output={spec.name}-%j.log",
              f"--signal=B:USR1@{spec.signal_before}"]
    return [f"#SBATCH {line}" for line in lines]


def job_script(spec: JobSpec, command_line: str) -> str:
    """The sbatch script: plain bash, readable before it is submitted."""
    config, extra = accelerate_config(spec)
    per_node = max(spec.gpus_per_node, 1)
    train = ["train", str(spec.recipe.resolve()), *spec.overrides, "--resume", "auto"]
    # Expanded inside each srun task (single quotes), where SLURM sets that node's variables (SLURM_NODEID).
    launch = " ".join([
        'exec "$MTBERT_PYTHON" -m accelerate.commands.launch --config_file', shlex.quote(str(config)),
        '--num_machines "$SLURM_NNODES"', f'--num_processes "$((SLURM_NNODES * {per_node}))"',
        '--machine_rank "$SLURM_NODEID" --main_process_ip "$MTBERT_HEAD" --main_process_port "$MTBERT_PORT"',
        f"--rdzv_backend {spec.rendezvous}", *map(shlex.quote, extra), "-m mtbert", *map(shlex.quote, train)])
    return "\n".join([
        "#!/bin/bash",
        f"# Written by: {command_line}",
        "# Submit with: sbatch THIS_FILE. Each node runs one srun task, which starts accelerate launch there.",
        *_directives(spec),
        "",
        "set -u",
        f"cd {shlex.quote(str(Path.cwd()))}  # where mtbert slurm ran: the recipe's relative paths start here",
        f"export MTBERT_PYTHON=${{MTBERT_PYTHON:-{shlex.quote(sys.executable)}}}",
        'export MTBERT_HEAD=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)',
        f"export MTBERT_PORT=${{MTBERT_PORT:-{spec.port}}}",
        f"export TORCH_ELASTIC_SHUTDOWN_TIMEOUT={max(spec.signal_before - 30, 30)}  # time for the checkpoint save",
        "signalled=0",
        'stop() { signalled=1; echo "mtbert slurm: stopping to requeue" >&2; kill -TERM "$srun_pid" 2>/dev/null; }',
        "trap stop USR1 TERM",
        f"srun --kill-on-bad-exit=1 bash -c {shlex.quote(launch)} &",
        "srun_pid=$!",
        "# wait returns early when a trap runs: wait again until srun has really ended",
        'while wait "$srun_pid"; status=$?; kill -0 "$srun_pid" 2>/dev/null; do :; done',
        'if [ "$status" -ne 0 ] && [ "$signalled" -eq 1 ]; then',
        '    echo "mtbert slurm: requeueing job $SLURM_JOB_ID (it resumes from its newest checkpoint)" >&2',
        '    scontrol requeue "$SLURM_JOB_ID"',
        "fi",
        'exit "$status"',
        "",
    ])


def check(spec: JobSpec) -> None:
    if spec.time is not None and not TIME.match(spec.time):
        raise MtbertError(f"--time {spec.time}: expected SLURM's form, e.g. 90, 4:00:00 or 2-00:00:00")
    load_recipe(spec.recipe, spec.overrides)  # a recipe that would fail on the cluster fails here


def run(spec: JobSpec, *, script: Path, dry_run: bool, command_line: str, say=print) -> str:
    """Print the job script (dry run) or write it to `script` and submit it with sbatch."""
    check(spec)
    text = job_script(spec, command_line)
    if dry_run:
        say(text)
        return text
    if script.exists():
        raise MtbertError(f"{script}: already exists; remove it or choose another --script")
    script.write_text(text, encoding="utf-8")
    script.chmod(0o755)
    try:
        done = subprocess.run(["sbatch", str(script)], capture_output=True, text=True)
    except FileNotFoundError:
        raise MtbertError(f"sbatch not found: this is not a SLURM login node; the job script is in {script}") from None
    if done.returncode != 0:
        raise MtbertError(f"sbatch {script} failed: {(done.stderr or done.stdout).strip()}")
    say(f"wrote {script}; {done.stdout.strip()}")
    return text
