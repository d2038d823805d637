"""Several machines: two "machines" of one process each on this host train to the weights of one machine of
two processes (DDP over gloo, and DeepSpeed ZeRO-2); the start-up check of what each machine needs."""

import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
from test_launch import (
    CONFIGS,
    REPO,
    RUN,
    TWO_PROCESS_BATCH,
    assert_identical,
    failure_text,
    free_port,
    train_two,
    weights,
)

from mtbert.config import load_recipe
from mtbert.errors import MtbertError
from mtbert.training import machines

from helpers import digest, write_recipe


def launch_machines(config: str, recipe: Path, output: Path, *extra: str, env: dict | None = None,
                    deepspeed: bool = False) -> list[subprocess.CompletedProcess]:
    """Start `accelerate launch` twice, as machine 0 and machine 1 of two with one process each."""
    port = free_port()
    started = []
    for rank in (0, 1):
        command = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(CONFIGS / config),
                   "--num_machines", "2", "--num_processes", "2", "--machine_rank", str(rank),
                   "--main_process_ip", "127.0.0.1", "--main_process_port", str(port), "--rdzv_backend", "static",
                   "--mixed_precision", "no"]
        command += ["--deepspeed_multinode_launcher", "standard"] if deepspeed else []
        command += ["-m", "mtbert", "train", str(recipe), *RUN, TWO_PROCESS_BATCH, f"output_dir={output}", *extra]
        machine_env = dict(os.environ, TOKENIZERS_PARALLELISM="false", OMP_NUM_THREADS="1", **(env or {}).get(rank, {}))
        started.append(subprocess.Popen(command, cwd=REPO, env=machine_env, stdout=subprocess.PIPE,
                                        stderr=subprocess.PIPE, text=True))
    results = []
    for process in started:
        out, err = process.communicate(timeout=600)
        results.append(subprocess.CompletedProcess(process.args, process.returncode, out, err))
    return results


@pytest.mark.slow
@pytest.mark.parametrize("config,deepspeed", [("cpu_multi.yaml", False), ("deepspeed_zero2.yaml", True)],
                         ids=["ddp", "zero2"])
@pytest.mark.extended
def test_two_machines_train_to_the_weights_of_one_machine_of_two_processes(tmp_path, tokenizer_dir, config,
                                                                            deepspeed):
    if deepspeed:
        pytest.importorskip("deepspeed")
    recipe = write_recipe(tmp_path, tokenizer_dir)
    one = train_two(config, recipe, tmp_path / "one")
    assert one.returncode == 0, failure_text(one)
    # Machine 1 keeps its own cache, as a machine without shared storage for it would.
    two = launch_machines(config, recipe, tmp_path / "two", deepspeed=deepspeed,
                          env={1: {"MTBERT_CACHE": str(tmp_path / "machine-1-cache")}})
    for result in two:
        assert result.returncode == 0, failure_text(result)
    assert "weights identical on all 2 processes" in two[0].stdout
    assert_identical(weights(tmp_path / "two"), weights(tmp_path / "one"))
    print(f"{config}: weights sha256 two machines x 1 process {digest(weights(tmp_path / 'two'))}, "
          f"one machine x 2 processes {digest(weights(tmp_path / 'one'))}")
    assert not (tmp_path / "two" / machines.PROBE).exists()


# ---------------------------------------------------------------------------------------------
# The checks themselves, without launching


def test_one_machine_is_not_several(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "4")
    assert not machines.several_machines()
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    assert machines.several_machines()


def test_what_a_machine_may_lack(tmp_path, tokenizer_dir, monkeypatch):
    recipe = load_recipe(write_recipe(tmp_path, tokenizer_dir))
    needed = machines.needed_paths(recipe)
    assert str(tokenizer_dir) in needed and any(p.endswith("ids-sst-train.csv") for p in needed)
    output = tmp_path / "out"
    token = machines.write_probe(output)
    monkeypatch.setenv("MTBERT_CACHE", str(tmp_path / "cache"))
    assert machines.machine_problems(output, token, needed) == []
    (tmp_path / "blocked").write_text("")
    monkeypatch.setenv("MTBERT_CACHE", str(tmp_path / "blocked" / "cache"))
    problems = machines.machine_problems(tmp_path / "elsewhere", token, [*needed, str(tmp_path / "gone.csv")])
    assert len(problems) == 3
    assert "is not the folder the main process writes to" in problems[0]
    assert "1 file(s) the main machine reads are missing here, first " + str(tmp_path / "gone.csv") in problems[1]
    assert "cannot write the cache folder" in problems[2]


def test_every_process_stops_with_one_message_naming_the_machine(tmp_path, tokenizer_dir, monkeypatch):
    """The collective path in one process (accelerate's broadcast and gather pass objects through)."""
    recipe = load_recipe(write_recipe(tmp_path, tokenizer_dir), [f"output_dir={tmp_path / 'out'}"])
    monkeypatch.setattr(machines, "several_machines", lambda: True)
    monkeypatch.setenv("GROUP_RANK", "0")
    accelerator = SimpleNamespace(is_main_process=True, is_local_main_process=True, wait_for_everyone=lambda: None)
    monkeypatch.setenv("MTBERT_CACHE", str(tmp_path / "cache"))
    machines.check_machines(recipe, accelerator)
    assert not (tmp_path / "out" / machines.PROBE).exists()
    (tmp_path / "blocked").write_text("")
    monkeypatch.setenv("MTBERT_CACHE", str(tmp_path / "blocked" / "cache"))
    with pytest.raises(MtbertError, match=r"^this run spans several machines and machine 0 \(.*\): cannot write the "
                                          r"cache folder"):
        machines.check_machines(recipe, accelerator)
