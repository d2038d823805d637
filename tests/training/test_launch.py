"""The package as users start it: `python -m mtbert`; `accelerate launch` with two CPU processes (gloo);
DeepSpeed ZeRO-2 and ZeRO-3 on two CPU processes.

Runs whose weights are compared switch dropout off: two processes draw the same dropout masks for
their halves of a batch, one process draws different ones for the whole.
"""

import contextlib
import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from safetensors.torch import load_file

from mtbert import __version__
from mtbert.commands.evaluation import evaluate_checkpoint
from mtbert.config import load_recipe
from mtbert.data.loading import load_split
from mtbert.exported import load_model
from mtbert.inference import eval_loader, run_inference
from mtbert.training import faults
from mtbert.training.launch import TrainingForward, average_gradients, micro_batch
from mtbert.training.loop import train

from helpers import write_recipe

REPO = Path(__file__).resolve().parents[2]
CONFIGS = REPO / "accelerate_configs"
NO_DROPOUT = ["model.dropout=0", "tasks.sst.head.dropout=0", "tasks.quora.head.dropout=0", "tasks.sts.head.dropout=0"]
VARIETY = ["tasks.sst.head.type=mlp", "tasks.sst.pooler=mean", "tasks.quora.pooler=max"]  # sts: siamese
RUN = [*NO_DROPOUT, *VARIETY, "train.max_steps=6", "train.checkpoint_every=3", "train.keep_checkpoints=10",
       "train.log_every=1", "eval.every_steps=3", "eval.batch_size=3", "eval.keep_best=false"]
# Per process: two processes at 8 see exactly the examples of one process at 16.
TWO_PROCESS_BATCH, ONE_PROCESS_BATCH = "train.batch_size=8", "train.batch_size=16"


def run(args, **kw):
    env = dict(os.environ, TOKENIZERS_PARALLELISM="false", OMP_NUM_THREADS="1")
    fault = kw.pop("fault", None)
    env.pop(faults.ENV, None)
    if fault:
        env[faults.ENV] = fault
    return subprocess.run(args, capture_output=True, text=True, env=env, timeout=600, **kw)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(config: str, *args: str, fault: str | None = None, module: bool = True) -> subprocess.CompletedProcess:
    """`accelerate launch` two processes with one of the shipped configs, from the repository root (the
    DeepSpeed configs name their JSON relative to it)."""
    command = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(CONFIGS / config),
               "--num_processes", "2", "--main_process_port", str(free_port()), "--mixed_precision", "no"]
    command += ["-m", "mtbert", "train", *args] if module else list(args)
    return run(command, cwd=REPO, fault=fault)


def failure_text(result: subprocess.CompletedProcess) -> str:
    """What a failed launch said: the lines that name an error (the launcher's own summary, at the end,
    often hides the root cause), then the end of stderr."""
    errors = [line for line in result.stderr.splitlines()
              if any(word in line for word in ("Error", "error", "terminate", "Abort", "what():"))]
    return "\n".join(errors[:30]) + "\n...\n" + result.stderr[-2000:]


def train_two(config: str, recipe: Path, output: Path, *extra: str, fault: str | None = None):
    return launch(config, str(recipe), *RUN, TWO_PROCESS_BATCH, f"output_dir={output}", *extra, fault=fault)


def weights(folder: Path) -> dict[str, torch.Tensor]:
    return load_file(folder / "model.safetensors")


def assert_identical(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a), [k for k in a if not torch.equal(a[k], b[k])][:5]


def assert_close(a: dict, b: dict, atol: float) -> None:
    assert a.keys() == b.keys()
    worst = max((a[k] - b[k]).abs().max().item() for k in a)
    assert worst < atol, worst


def resume_copy(run_folder: Path, target: Path, step: int) -> None:
    """A run folder as a crash after `run_folder`'s last step would leave it, its newest checkpoint step-`step`."""
    (target / "checkpoints").mkdir(parents=True)
    shutil.copytree(run_folder / "checkpoints" / f"step-{step}", target / "checkpoints" / f"step-{step}")
    shutil.copy(run_folder / "train_log.jsonl", target / "train_log.jsonl")


def log_records(folder: Path) -> list[dict]:
    records = [json.loads(line) for line in (folder / "train_log.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if k not in ("tokens_per_s", "elapsed_s")} for r in records]


def test_python_dash_m_reaches_the_cli():
    result = run([sys.executable, "-m", "mtbert", "--version"])
    assert result.returncode == 0 and result.stdout.strip() == f"mtbert {__version__}"


def test_average_gradients_replaces_each_gradient_by_its_mean_in_one_reduction():
    module = torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.Linear(2, 1))
    module(torch.ones(4, 3)).sum().backward()
    module[1].bias.grad = None  # a parameter without a gradient keeps none
    before = {name: p.grad.clone() for name, p in module.named_parameters() if p.grad is not None}
    calls = []
    average_gradients(module, lambda flat: calls.append(flat.numel()) or flat * 0.5)  # another process held zeros
    assert calls == [3 * 2 + 2 + 2]
    assert module[1].bias.grad is None
    for name, p in module.named_parameters():
        if name in before:
            assert torch.equal(p.grad, before[name] * 0.5), name


def test_the_training_forward_leaves_ddp_only_for_several_tasks_under_ddp():
    class Accelerator:
        autocast = staticmethod(contextlib.nullcontext)

        @staticmethod
        def unwrap_model(model):
            return model

    calls = []
    forward = TrainingForward(Accelerator(), lambda *args: calls.append(args) or "through")
    trainee = SimpleNamespace(forward=forward)
    with micro_batch(trainee, ["sst", "quora"]):  # not DDP (one process, DeepSpeed): always through the model
        assert forward("sst", {}) == "through" and not forward.by_hand
    forward.ddp, forward.module = True, lambda *args: "beside"
    with micro_batch(trainee, ["sst"]):
        assert forward("sst", {}) == "through" and not forward.by_hand
    with micro_batch(trainee, ["sst", "quora"]):
        assert forward("sst", {}) == "beside" and forward.by_hand
    assert not forward.beside_ddp and forward.by_hand  # until after_backward averages the step's gradients


# ---------------------------------------------------------------------------------------------
# Two CPU processes (DDP over gloo)


@pytest.fixture(scope="module")
def two(tmp_path_factory, tokenizer_dir):
    root = tmp_path_factory.mktemp("two_processes")
    recipe = write_recipe(root, tokenizer_dir)
    result = train_two("cpu_multi.yaml", recipe, root / "two")
    assert result.returncode == 0, failure_text(result)
    return SimpleNamespace(root=root, recipe=recipe, output=root / "two", result=result)


@pytest.mark.slow
def test_two_processes_hold_identical_weights_and_write_once(two):
    out = two.result.stdout
    assert "weights identical on all 2 processes" in out  # sha256 of every weight, gathered and compared
    assert out.count("exported the last model") == 1 and out.count("step 6: dev") == 1
    assert [r["step"] for r in log_records(two.output) if "loss" in r] == [1, 2, 3, 4, 5, 6]
    step = two.output / "checkpoints" / "step-6"
    assert {p.name for p in step.glob("rng.*.json")} == {"rng.process-0.json", "rng.process-1.json"}
    assert json.loads((step / "state.json").read_text())["num_processes"] == 2


@pytest.mark.slow
def test_two_processes_match_one_process_at_double_batch(two):
    one = load_recipe(two.recipe, [*RUN, ONE_PROCESS_BATCH, f"output_dir={two.root / 'one'}"])
    train(one)
    assert_close(weights(two.output), weights(two.root / "one"), atol=1e-5)  # float sums in another order


@pytest.mark.slow
def test_two_processes_resume_exactly(two, tmp_path):
    resume_copy(two.output, tmp_path / "resumed", step=3)
    result = train_two("cpu_multi.yaml", two.recipe, tmp_path / "resumed", "--resume", "latest")
    assert result.returncode == 0, failure_text(result)
    assert_identical(weights(two.output), weights(tmp_path / "resumed"))
    assert log_records(tmp_path / "resumed") == log_records(two.output)


@pytest.mark.slow
def test_evaluation_under_two_processes_equals_one(two, tmp_path):
    """gather_for_metrics: every dev example once, in order, however the batches split (dev sets of 40
    and 64 examples, batches of 3, two processes: uneven tails)."""
    script = tmp_path / "predict.py"
    script.write_text(PREDICT_SCRIPT)
    result = launch("cpu_multi.yaml", str(script), str(two.output), str(tmp_path / "two.json"), module=False)
    assert result.returncode == 0, failure_text(result)
    gathered = json.loads((tmp_path / "two.json").read_text())
    loaded = load_model(two.output)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as in the launched processes: the same kernels, the same bits
    try:
        for name, task in loaded.tasks.items():
            _, data = load_split(task, "dev", loaded.recipe.data_dir, loaded.tokenizer, loaded.recipe.model.max_length,
                                 progress=False)
            alone = run_inference(loaded.model, task, eval_loader(data, 3, loaded.tokenizer.pad_token_id or 0))
            # Equal up to float rounding: Accelerate fills the last, short batch up with examples from the
            # start (which gather_for_metrics then drops), so one batch is padded to another length.
            assert len(gathered[name]) == len(data), name
            torch.testing.assert_close(torch.tensor(gathered[name]), torch.as_tensor(alone.predictions),
                                       atol=1e-6, rtol=0)
        # The dev metrics the two-process run logged are those one process computes on the exported model.
        alone = evaluate_checkpoint(two.output, batch_size=3, progress=False)
    finally:
        torch.set_num_threads(threads)
    assert_same_metrics(json.loads((two.output / "metrics.json").read_text()), alone)


def assert_same_metrics(logged: dict, alone: dict) -> None:
    """Equal but for float rounding (Spearman moves by ~2e-4 if two near-equal scores swap ranks)."""
    assert logged.pop("step") and logged.keys() == alone.keys()
    for task, values in logged.items():
        if isinstance(values, dict):
            assert values == pytest.approx(alone[task], abs=1e-3), task


PREDICT_SCRIPT = '''
import json, sys
from accelerate import Accelerator
from mtbert.exported import load_model
from mtbert.data.loading import load_split
from mtbert.inference import eval_loader, run_inference

accelerator = Accelerator(cpu=True)
loaded = load_model(sys.argv[1])
model = accelerator.prepare(loaded.model)
predictions = {}
for name, task in loaded.tasks.items():
    _, data = load_split(task, "dev", loaded.recipe.data_dir, loaded.tokenizer, loaded.recipe.model.max_length,
                         progress=False)
    loader = accelerator.prepare(eval_loader(data, 3, loaded.tokenizer.pad_token_id or 0))
    result = run_inference(model, task, loader, device=accelerator.device, gather=accelerator.gather_for_metrics)
    predictions[name] = result.predictions.tolist()
if accelerator.is_main_process:
    with open(sys.argv[2], "w") as f:
        json.dump(predictions, f)
accelerator.wait_for_everyone()
accelerator.end_training()  # destroys the process group before exit, while both processes are still here
'''

# Ways of training that two processes must get right. A step leaves the other tasks' parameters without
# gradients, which must neither hang nor break the gradient reduction, also when their gradients come
# from a micro-step that did not synchronise (accumulation), or when a sharing plan gives some tasks
# encoder copies of their own.
TWO_PROCESS_CASES = {"frozen_encoder": ["model.sharing=frozen"],
                     # frozen, shared and per-group copies; a relational layer only some tasks run through
                     "sharing_plan": ["model.sharing=EF-F1-I1[quora+sts]+R1[quora+sts]"],
                     "gradient_accumulation": ["train.grad_accum=2"],
                     # SMART's extra forwards run on the unwrapped model inside the wrapper's graph: one backward,
                     # one reduction; the teacher follows identical weights on both processes
                     "smart": ["smart.enabled=true", "train.grad_accum=2"],
                     # a triplet stage (three sentences per example), then round-robin with SMART. On the tiny
                     # random encoder every sentence gets almost the same vector, so the triplet loss has gradients
                     # of ~1e-9 whose float rounding AdamW's first steps blow up to +-lr: the stage runs at lr 1e-6.
                     # (tests/objectives/test_contrastive.py checks that processes split triplet batches exactly.)
                     "stages": ["stages=[{objective: triplet, max_steps: 3, lr: 1.0e-6}, {max_steps: 3, smart: true}]"],
                     # per-task LoRA on a frozen + shared base: each process activates the step's task's adapter;
                     # the others get no gradient (DDP's find_unused_parameters), also when an adapter is used in
                     # the first micro-step (no sync) but not in the second. eps 1e-4: the tiny random encoder's
                     # query/key gradients (~1e-7) differ in float rounding between one and two processes, and
                     # AdamW's default eps 1e-8 turns that into weight differences of 5e-4; with eps 1e-4 they agree
                     # to 1e-8 while the adapters move by ~1e-2.
                     "lora": ["model.sharing=F1-S1+lora[r=2,targets=all,quora+sts]", "train.grad_accum=2",
                              "train.eps=1e-4"]}


@pytest.mark.slow
@pytest.mark.parametrize("overrides", TWO_PROCESS_CASES.values(), ids=TWO_PROCESS_CASES.keys())
def test_two_processes_train_like_one_in_each_case(tmp_path, tokenizer_dir, overrides):
    assert_two_train_like_one(tmp_path, tokenizer_dir, "cpu_multi.yaml", overrides)


def assert_two_train_like_one(tmp_path: Path, tokenizer_dir: Path, config: str, overrides: list[str]) -> None:
    recipe = write_recipe(tmp_path, tokenizer_dir)
    result = train_two(config, recipe, tmp_path / "two", *overrides)
    assert result.returncode == 0, failure_text(result)
    assert "weights identical on all 2 processes" in result.stdout
    train(load_recipe(recipe, [*RUN, ONE_PROCESS_BATCH, f"output_dir={tmp_path / 'one'}", *overrides]))
    # Float sums in another order; the sharing plan's extra relational layer on packed tokens drifts
    # furthest (1.1e-5 seen). A wrong gradient average or a skipped sync moves weights by ~1e-3.
    assert_close(weights(tmp_path / "two"), weights(tmp_path / "one"), atol=3e-5)


@pytest.mark.slow
def test_a_non_finite_loss_on_one_process_stops_both(tmp_path, tokenizer_dir):
    recipe = write_recipe(tmp_path, tokenizer_dir)
    result = train_two("cpu_multi.yaml", recipe, tmp_path / "nan", fault="nan_loss_at_step:4@1")
    assert result.returncode != 0
    assert result.stderr.count("error: non-finite loss on task sst at step 4") == 2  # both agree, no hang
    assert sorted(p.name for p in (tmp_path / "nan" / "checkpoints").glob("step-*")) == ["step-3"]


@pytest.mark.slow
def test_sigterm_on_one_process_stops_both_after_a_checkpoint(tmp_path, tokenizer_dir):
    recipe = write_recipe(tmp_path, tokenizer_dir)
    result = train_two("cpu_multi.yaml", recipe, tmp_path / "term", fault="sigterm_after_step:4@1")
    assert result.returncode != 0
    assert result.stderr.count("stopped by SIGTERM after step 5") == 2
    step = tmp_path / "term" / "checkpoints" / "step-5"
    assert (tmp_path / "term" / "checkpoints" / "latest").read_text().strip() == "step-5"
    assert {p.name for p in step.glob("rng.*.json")} == {"rng.process-0.json", "rng.process-1.json"}


# ---------------------------------------------------------------------------------------------
# DeepSpeed ZeRO on two CPU processes


def deepspeed_run(tmp_path_factory, tokenizer_dir, stage: int):
    pytest.importorskip("deepspeed")
    root = tmp_path_factory.mktemp(f"zero{stage}")
    recipe = write_recipe(root, tokenizer_dir)
    result = train_two(f"deepspeed_zero{stage}.yaml", recipe, root / "run")
    assert result.returncode == 0, failure_text(result)
    return SimpleNamespace(root=root, recipe=recipe, output=root / "run", result=result, stage=stage)


@pytest.fixture(scope="module")
def zero2(tmp_path_factory, tokenizer_dir):
    return deepspeed_run(tmp_path_factory, tokenizer_dir, 2)


@pytest.fixture(scope="module")
def zero3(tmp_path_factory, tokenizer_dir):
    return deepspeed_run(tmp_path_factory, tokenizer_dir, 3)


@pytest.mark.slow
def test_zero2_trains_and_its_export_gives_one_process_the_same_outputs(zero2):
    assert "weights identical on all 2 processes" in zero2.result.stdout
    assert json.loads((zero2.output / "checkpoints" / "step-6" / "state.json").read_text())["info"]["launch"][
        "zero_stage"] == 2
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        alone = evaluate_checkpoint(zero2.output, batch_size=3, progress=False)
    finally:
        torch.set_num_threads(threads)
    # The dev metrics the two DeepSpeed processes computed during training, from the exported model alone:
    assert_same_metrics(json.loads((zero2.output / "metrics.json").read_text()), alone)
    # The export (the last model: keep_best is off) is what the processes ended with, as the last resumable
    # checkpoint saved it from process 0's module; the export gathers it from the engine.
    assert_identical(weights(zero2.output), load_file(zero2.output / "checkpoints" / "step-6" / "model.safetensors"))


@pytest.mark.slow
@pytest.mark.parametrize("stage", [2, 3])
def test_zero_resumes_exactly(stage, zero2, zero3, tmp_path):
    full = {2: zero2, 3: zero3}[stage]
    resume_copy(full.output, tmp_path / "resumed", step=3)
    result = train_two(f"deepspeed_zero{stage}.yaml", full.recipe, tmp_path / "resumed", "--resume", "latest")
    assert result.returncode == 0, failure_text(result)
    assert_identical(weights(full.output), weights(tmp_path / "resumed"))


@pytest.mark.slow
def test_zero3_exports_the_whole_model_and_trains_as_zero2(zero2, zero3):
    """ZeRO-3 shards the parameters; the export gathers them. Both stages give a task's unused parameters
    a zero gradient (mtbert clears ZeRO-3's stale gradient buffer), so they train alike."""
    ours, reference = weights(zero3.output), weights(zero2.output)
    assert {k: v.shape for k, v in ours.items()} == {k: v.shape for k, v in reference.items()}
    assert_close(ours, reference, atol=1e-5)
    # The gathered export, loaded alone, gives the dev metrics the sharded processes computed.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        alone = evaluate_checkpoint(zero3.output, batch_size=3, progress=False)
    finally:
        torch.set_num_threads(threads)
    assert_same_metrics(json.loads((zero3.output / "metrics.json").read_text()), alone)


# Per-task adapters under ZeRO-2. LoRA's eps 1e-4: as in TWO_PROCESS_CASES["lora"] (the tiny encoder's query/key
# gradients differ in float rounding, which AdamW's default eps would blow up to ~5e-4).
ZERO2_ADAPTERS = {"pals": ["model.sharing=frozen+pals"],
                  "lora": ["model.sharing=frozen+lora[r=2,targets=all]", "train.eps=1e-4"]}


@pytest.mark.slow
@pytest.mark.parametrize("sharing", [pytest.param(ZERO2_ADAPTERS["pals"], id="pals"),
                                     pytest.param(ZERO2_ADAPTERS["lora"], id="lora", marks=pytest.mark.extended)])
def test_zero2_trains_adapters_as_one_process(tmp_path, tokenizer_dir, sharing):
    """Per-task PALs and per-task LoRA (peft) under ZeRO-2. ZeRO gives parameters a step does not use a zero gradient
    (AdamW then moves them by weight decay and momentum, unlike DDP): with all_tasks every step uses every task's
    adapter, so the two agree. (Resuming ZeRO-2 exactly is test_zero_resumes_exactly's; resuming adapters,
    test_resume.py's.)"""
    pytest.importorskip("deepspeed")
    overrides = [*sharing, "sampling.strategy=all_tasks"]
    assert_two_train_like_one(tmp_path, tokenizer_dir, "deepspeed_zero2.yaml", overrides)
