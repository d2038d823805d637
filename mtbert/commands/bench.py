"""`mtbert bench`: training and prediction speed on a recipe's real batches, optionally against
transformers.BertModel with the same weights, heads, optimizer and examples, in the same process.
How each figure is obtained is `METHOD` below, which the JSON output carries too.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import multiprocessing
import os
import platform
import resource
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from mtbert import speed
from mtbert.commands.flops import TRAINING_MULTIPLIER, encoder_forward_flops, measure_matmul_peak, sequence_lengths
from mtbert.config import Recipe, load_recipe
from mtbert.data.collate import collate
from mtbert.data.length_grouping import example_lengths, group_by_length
from mtbert.data.sampling import TaskSampler, run_progress, total_steps
from mtbert.data.streams import TaskStream
from mtbert.errors import MtbertError
from mtbert.files import json_text, write_text_atomically
from mtbert.inference import TaskPredictions, agreement, eval_loader, run_inference, score
from mtbert.model.bert import BertModelOutput
from mtbert.model.multitask import MultiTaskConfig, MultiTaskModel
from mtbert.objectives.supervised import LOSSES, predictions
from mtbert.tasks import Task
from mtbert.training.optim import build_optimizer
from mtbert.training.setup import build_model, load_run_data, optimizer_groups

METHOD = """\
- Two references: transformers on exactly mtbert's batches (`transformers_grouped`: length-grouped in
  training, sorted by length in prediction; the fair one, what a user who turns on length grouping gets)
  and transformers as a plain per-batch loop runs it (`transformers`: random-order batches, file order).
- Training: the recipe's task sampling draws the tasks of each step, and its plain (not length-grouped)
  streams the examples of each batch, as a transformers user pads them: to the batch's longest example.
  mtbert and transformers_grouped train on exactly the same examples per task, regrouped by length when
  `speed.length_pool` is on (pools capped at the batches the window holds). One optimizer step per batch,
  constant learning rate; forward, loss, backward, gradient clipping, optimizer step and zeroing are timed; building
  batches is not. The first `warmup` steps are run and not timed. The sides take turns step by step,
  in alternating order, so a slower or busier moment of the machine falls on all.
- Prediction: the first `predict_examples` dev examples of every task. mtbert and transformers_grouped run
  mtbert's evaluation path (sorted by length, token budget, order restored); `transformers` runs them in
  file order in batches of eval.batch_size padded to their longest example, as a per-batch loop does.
  The whole pass (batching included) is timed, sides alternating per task, after an untimed warm-up.
- Model FLOP utilisation: mtbert.commands.flops (real tokens only; training = 3 forward passes) over the matmul
  peak this command measures itself before and after timing (the faster of the two).
- Peak memory: each side runs the same work again in its own fresh process (multiprocessing "spawn"), so
  one side's high-water mark cannot hide in the other's; both load the same data, build their model from
  the same saved weights, then work. Peak RSS is the process's VmHWM; "increase" subtracts its RSS just
  before the model was built. On a GPU, torch.cuda.max_memory_allocated of that process as well.
"""

COMPARISONS = ("transformers", "onnxruntime")
GROUPED = "transformers_grouped"
"The fair reference: transformers on mtbert's own (length-grouped, sorted) batches."
ONNX_SIDES = ("mtbert_onnx", "mtbert_onnx_int8", "transformers_onnx")
"Prediction only, through ONNX Runtime (CPU): mtbert's export fp32 and int8, transformers' standard export."
SAME_BATCHES = ("mtbert", GROUPED, *ONNX_SIDES)
"Sides that get mtbert's batches; the other reference gets random-order (training) and file-order (prediction) ones."
MIB = 1024 * 1024

# ---------------------------------------------------------------------------------------------
# The reference: transformers.BertModel behind the same heads


class TransformersEncoder(nn.Module):
    """transformers.BertModel (its default attention, sdpa) behind the interface MultiTaskModel calls."""

    def __init__(self, config: MultiTaskConfig, attention: str | None = None):
        super().__init__()
        import transformers

        extra = {"attn_implementation": attention} if attention else {}
        self.bert = transformers.BertModel(transformers.BertConfig(**config.encoder.to_dict(), **extra))

    def forward(self, task: str, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                token_type_ids: torch.Tensor | None = None, first_token_only: bool = False) -> BertModelOutput:
        # One encoder for every task (bench compares single-copy plans); transformers computes every
        # position of every layer, so first_token_only only trims the result.
        out = self.bert(input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids)
        hidden = out.last_hidden_state
        return BertModelOutput(hidden[:, :1] if first_token_only else hidden, out.pooler_output)


def build_side(side: str, config: MultiTaskConfig, state: dict[str, torch.Tensor], recipe: Recipe,
               attention: str | None = None) -> MultiTaskModel:
    """One side's model from the shared configuration and weights: mtbert with the recipe's speed switches,
    or the same tasks, poolers and heads on transformers.BertModel (`attention`: its attn_implementation)."""
    if side == "mtbert":
        model = MultiTaskModel(config)
        model.load_state_dict(state)
        return speed.prepare_model(model, recipe.speed)
    model = MultiTaskModel(config)
    model.load_state_dict(state)  # poolers and heads; the encoder is replaced below
    owners = {key.split(".")[2] for key in state if key.startswith("encoder.copies.")}
    if len(owners) != 1:
        raise MtbertError(f"mtbert bench compares one encoder against transformers.BertModel; the recipe's "
                          f"model.sharing makes {len(owners)} copies ({', '.join(sorted(owners))}): "
                          f"use shared or frozen")
    (owner,) = owners
    prefix = f"encoder.copies.{owner}."
    reference = TransformersEncoder(config, attention)
    reference.bert.load_state_dict({key.removeprefix(prefix): value for key, value in state.items()
                                    if key.startswith(prefix)})
    reference.requires_grad_(owner != "frozen")
    model.encoder = reference
    return model


def build_onnx_sides(config: MultiTaskConfig, state: dict[str, torch.Tensor], recipe: Recipe, tasks,
                     say=print) -> dict:
    """ONNX Runtime models of every task for ONNX_SIDES, from the same weights: mtbert's own export (fp32, and
    int8 by dynamic quantisation) and transformers' standard one (torch.onnx's TorchScript exporter on the same
    tasks over transformers.BertModel with eager attention, then ONNX Runtime's BERT optimizer, which fuses
    its Attention operator on that graph). Each model carries `config` for counting FLOPs."""
    from mtbert import onnx_model

    onnx_model.require_onnx()
    mtbert_model = build_side("mtbert", config, state, recipe).eval()
    reference = build_side("transformers", config, state, recipe, attention="eager").eval()
    files: dict[str, dict[str, Path]] = {side: {} for side in ONNX_SIDES}
    fused: dict[str, dict] = {}
    with tempfile.TemporaryDirectory(prefix="mtbert-bench-onnx-") as folder:
        for name in tasks:
            say(f"exporting {name} to ONNX (mtbert, int8, transformers) ...")
            base = Path(folder) / name
            onnx_model.export_task(mtbert_model, name, f"{base}-mtbert.onnx")
            onnx_model.quantize_int8(f"{base}-mtbert.onnx", f"{base}-int8.onnx")
            onnx_model.export_task(reference, name, f"{base}-hf.onnx", legacy=True)
            fused[name] = onnx_model.fuse_attention(f"{base}-hf.onnx", f"{base}-hf-fused.onnx",
                                                    config.encoder.num_attention_heads, config.encoder.hidden_size)
            for side, suffix in zip(ONNX_SIDES, ("mtbert", "int8", "hf-fused")):
                files[side][name] = Path(f"{base}-{suffix}.onnx")
        models = {side: onnx_model.OnnxTaskModel.from_files(paths) for side, paths in files.items()}
    for model in models.values():
        model.config = config
    models["transformers_onnx"].fused_operators = fused
    return models


def build_optimizer_for(side: str, model: nn.Module, recipe: Recipe) -> torch.optim.Optimizer:
    """mtbert: the optimizer training builds (training/setup.py). transformers: torch AdamW as transformers'
    Trainer makes it by default (fused with torch >= 2.8), with the same hyperparameters and weight-decay groups."""
    groups = optimizer_groups(model, recipe.train.weight_decay)
    hyper = {"lr": recipe.train.lr, "betas": recipe.train.betas, "eps": recipe.train.eps}
    if side == "mtbert":
        return build_optimizer(recipe.train.optimizer, groups, **hyper,
                               **speed.optimizer_options(recipe.speed, recipe.train.optimizer))
    fused = tuple(int(p) for p in torch.__version__.split(".")[:2]) >= (2, 8)
    return torch.optim.AdamW(groups, lr=hyper["lr"], betas=tuple(hyper["betas"]), eps=hyper["eps"],
                             **({"fused": True} if fused else {}))


def optimizer_description(side: str, recipe: Recipe) -> str:
    if side == "mtbert":
        fused = speed.optimizer_options(recipe.speed, recipe.train.optimizer).get("fused", False)
        return f"{recipe.train.optimizer}{' (fused)' if fused else ''}"
    return "torch AdamW, fused as transformers' Trainer default (torch >= 2.8)"


# ---------------------------------------------------------------------------------------------
# Workloads: which examples each step trains on


Plan = list[list[tuple[str, list[int]]]]
"Per step, the (task, example indices) of each batch it trains on."


def training_plan(recipe: Recipe, data, steps: int) -> Plan:
    """The tasks the recipe's sampler draws for the first `steps` steps, and the examples of each batch from
    the plain (randomly ordered, not length-grouped) streams training would build."""
    streams = {name: TaskStream(data.train[name], task.batch_size, seed=recipe.seed, stream_id=i, pad_id=0,
                                max_examples=task.max_train_examples, class_balanced=task.class_balanced)
               for i, (name, task) in enumerate(data.tasks.items())}
    sampler = TaskSampler(recipe.sampling.strategy, {n: s.pass_size for n, s in streams.items()},
                          {n: s.batches_per_pass for n, s in streams.items()}, seed=recipe.seed,
                          temperature=recipe.sampling.temperature, anneal_decay=recipe.sampling.anneal_decay,
                          size_cap=recipe.sampling.size_cap, min_share=recipe.sampling.min_share)
    # Each step here is one batch draw; annealed sampling reads how far the run's optimizer steps have come.
    accum = recipe.train.grad_accum
    run_steps = total_steps(sampler.steps_per_epoch, recipe.train.epochs, accum, recipe.train.max_steps)
    plan = []
    for step in range(steps):
        tasks = sampler.tasks_at(step, run_progress(step // accum, run_steps))
        plan.append([(name, streams[name].next_indices()) for name in tasks])
    return plan


def regroup(plan: Plan, data, pool_batches: int, seed: int) -> Plan:
    """The same examples per task, length-grouped as TaskStream groups them (pools capped at the batches the
    plan holds); every batch keeps its step and task, batch sizes are kept (a partial batch gets the tail)."""
    regrouped = [list(step) for step in plan]
    for name in {task for step in plan for task, _ in step}:
        slots = [(s, j) for s, step in enumerate(plan) for j, (task, _) in enumerate(step) if task == name]
        sizes = [len(plan[s][j][1]) for s, j in slots]
        order = torch.tensor([i for s, j in slots for i in plan[s][j][1]])
        batch_size = max(sizes)
        grouped = group_by_length(order, example_lengths(data.train[name]), batch_size,
                                  max(1, min(pool_batches, len(order) // batch_size)),
                                  torch.Generator().manual_seed(seed)).tolist()
        # Full batches first, then partial ones, as group_by_length lays them out.
        start = 0
        for s, j in sorted(slots, key=lambda slot: -len(plan[slot[0]][slot[1]][1])):
            size = len(plan[s][j][1])
            regrouped[s][j] = (name, grouped[start: start + size])
            start += size
    return regrouped


def collate_plan(plan: Plan, data, pad_id: int) -> list[list[tuple[str, dict[str, torch.Tensor]]]]:
    return [[(name, collate(data.train[name][indices], pad_id)) for name, indices in step] for step in plan]


# ---------------------------------------------------------------------------------------------
# Counting


def padded_tokens(batch: dict[str, torch.Tensor]) -> int:
    """Tokens the encoder is handed, padding included; a siamese pair is padded to the longer side, twice."""
    if "input_ids_b" in batch:
        return 2 * batch["input_ids"].shape[0] * max(batch["input_ids"].shape[1], batch["input_ids_b"].shape[1])
    return batch["input_ids"].numel()


@dataclass
class Tally:
    """What one side did, and how long it took."""

    steps: int = 0
    examples: int = 0
    sequences: int = 0
    real_tokens: int = 0
    padded_tokens: int = 0
    model_flops: int = 0
    seconds: float = 0.0

    def add_batch(self, batch: dict[str, torch.Tensor], encoder_config, multiplier: int) -> None:
        lengths = sequence_lengths(batch)
        self.examples += batch["input_ids"].shape[0]
        self.sequences += len(lengths)
        self.real_tokens += sum(lengths)
        self.padded_tokens += padded_tokens(batch)
        self.model_flops += multiplier * encoder_forward_flops(encoder_config, lengths)

    def figures(self, peak_flops_per_s: float) -> dict:
        seconds = max(self.seconds, 1e-12)
        return {**dataclasses.asdict(self),
                "real_tokens_per_s": self.real_tokens / seconds,
                "padded_tokens_per_s": self.padded_tokens / seconds,
                "examples_per_s": self.examples / seconds,
                "s_per_step": seconds / max(self.steps, 1),
                "padding_efficiency": self.real_tokens / max(self.padded_tokens, 1),
                "model_flops_per_s": self.model_flops / seconds,
                "mfu": self.model_flops / seconds / peak_flops_per_s}


def ratios(ours: dict, theirs: dict) -> dict:
    """mtbert / transformers for every figure both sides have (above 1: mtbert higher)."""
    return {key: ours[key] / theirs[key] for key, value in ours.items()
            if isinstance(value, (int, float)) and isinstance(theirs.get(key), (int, float)) and theirs[key]}


# ---------------------------------------------------------------------------------------------
# Timing


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _autocast(device: torch.device, bf16: bool):
    return torch.autocast(device.type, dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()


def _to(batch: dict[str, torch.Tensor], device: torch.device) -> dict[str, torch.Tensor]:
    return {key: value.to(device) for key, value in batch.items()}


def train_step(model: nn.Module, optimizer: torch.optim.Optimizer, step: list[tuple[str, dict]],
               tasks: dict[str, Task], grad_clip: float | None, device: torch.device, bf16: bool) -> None:
    """One optimizer step over the step's batches, as the training loop takes it (losses weighted and summed)."""
    loss = torch.zeros((), device=device)
    for name, batch in step:
        with _autocast(device, bf16):
            outputs = model(name, batch)
        loss = loss + tasks[name].loss_weight * LOSSES[tasks[name].loss](outputs, batch["labels"])
    loss.backward()
    if grad_clip:
        torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)


def time_training(models: dict, optimizers: dict, batches: dict, tasks: dict[str, Task], recipe: Recipe,
                  warmup: int, device: torch.device, bf16: bool) -> dict[str, Tally]:
    """Alternate the sides step by step (order flipped every step); steps after `warmup` are timed."""
    tallies = {side: Tally() for side in models}
    sides = list(models)
    for model in models.values():
        model.train()
    for index in range(len(next(iter(batches.values())))):
        for side in sides if index % 2 == 0 else sides[::-1]:
            step = [(name, _to(batch, device)) for name, batch in batches[side][index]]
            _sync(device)
            start = time.perf_counter()
            train_step(models[side], optimizers[side], step, tasks, recipe.train.grad_clip, device, bf16)
            _sync(device)
            if index >= warmup:
                tallies[side].seconds += time.perf_counter() - start
                tallies[side].steps += 1
                for _, batch in step:
                    tallies[side].add_batch(batch, models[side].config.encoder, TRAINING_MULTIPLIER)
    return tallies


def predict_examples(data, tasks: dict[str, Task], limit: int) -> dict:
    return {name: data.dev[name].select(range(min(limit, len(data.dev[name])))) for name in tasks}


def prediction_batches(side: str, dataset, recipe: Recipe, pad_id: int) -> list[dict[str, torch.Tensor]]:
    """The batches a side's prediction pass forms (for counting tokens; built again, untimed)."""
    if side in SAME_BATCHES:
        loader = eval_loader(dataset, recipe.eval.batch_size, pad_id, max_tokens=recipe.speed.eval_max_tokens)
        return [{k: v for k, v in batch.items() if k != "index"} for batch in loader]
    columns = [c for c in dataset.column_names if c.startswith(("input_ids", "token_type_ids"))]
    rows = dataset.select_columns(columns)
    size = recipe.eval.batch_size
    return [collate(rows[start: start + size], pad_id) for start in range(0, len(rows), size)]


@torch.no_grad()
def predict(side: str, model, task: Task, dataset, recipe: Recipe, pad_id: int, device: torch.device,
            bf16: bool) -> TaskPredictions:
    """One whole prediction pass. mtbert and transformers_grouped: mtbert's evaluation path (sorted by length,
    token budget if set, order restored). transformers: per-batch inference in file order, each batch padded to
    its longest example."""
    if side in SAME_BATCHES:
        loader = eval_loader(dataset, recipe.eval.batch_size, pad_id, max_tokens=recipe.speed.eval_max_tokens)
        with _autocast(device, bf16):
            return run_inference(model, task, loader, device=device)
    model.eval()
    columns = [c for c in dataset.column_names if c.startswith(("input_ids", "token_type_ids"))]
    rows = dataset.select_columns(columns)
    preds, probs = [], []
    for start in range(0, len(rows), recipe.eval.batch_size):
        batch = _to(collate(rows[start: start + recipe.eval.batch_size], pad_id), device)
        with _autocast(device, bf16):
            pred, prob = predictions(task.kind, model(task.name, batch))
        preds.append(pred.cpu())
        if prob is not None:
            probs.append(prob.cpu())
    return TaskPredictions(torch.cat(preds).numpy(), torch.cat(probs).numpy() if probs else None, None)


def time_prediction(models: dict, tasks: dict[str, Task], datasets_by_task: dict, recipe: Recipe, pad_id: int,
                    device: torch.device, bf16: bool) -> tuple[dict[str, Tally], dict]:
    """Each task's examples, whole passes, sides alternating (order flipped per task), after a small warm-up."""
    tallies = {side: Tally() for side in models}
    outputs: dict[str, dict[str, TaskPredictions]] = {side: {} for side in models}
    sides = list(models)
    for name, dataset in datasets_by_task.items():
        for side in sides:
            predict(side, models[side], tasks[name], dataset.select(range(min(16, len(dataset)))), recipe, pad_id,
                    device, bf16)
    for index, (name, dataset) in enumerate(datasets_by_task.items()):
        for side in sides if index % 2 == 0 else sides[::-1]:
            _sync(device)
            start = time.perf_counter()
            outputs[side][name] = predict(side, models[side], tasks[name], dataset, recipe, pad_id, device, bf16)
            _sync(device)
            tallies[side].seconds += time.perf_counter() - start
            for batch in prediction_batches(side, dataset, recipe, pad_id):
                tallies[side].steps += 1
                tallies[side].add_batch(batch, models[side].config.encoder, 1)
    return tallies, outputs


# ---------------------------------------------------------------------------------------------
# Where the time goes

# Operator name -> category, for a readable split of a training step's time (first match wins).
PROFILE_CATEGORIES = (
    ("matrix products", ("aten::mm", "aten::addmm", "aten::bmm", "aten::baddbmm", "aten::_scaled_dot_product")),
    ("dropout masks (random numbers)", ("aten::bernoulli_", "aten::uniform_", "aten::rand")),
    ("optimizer step and zeroing", ("aten::_fused_adamw", "aten::_foreach", "aten::lerp", "aten::addcdiv",
                                    "aten::addcmul", "aten::sqrt", "Optimizer.zero_grad")),
    ("attention softmax and masking", ("aten::_softmax", "aten::_safe_softmax", "aten::where", "aten::all",
                                       "aten::isneginf", "aten::logical_not")),
    ("LayerNorm", ("aten::native_layer_norm",)),
    ("GELU", ("aten::gelu",)),
    ("gathers and scatters (packing, embeddings)", ("aten::index", "aten::scatter", "aten::embedding",
                                                    "aten::gather", "aten::nonzero")),
    ("copies and fills", ("aten::copy_", "aten::fill_", "aten::zero_", "aten::clone", "aten::contiguous")),
    ("element-wise arithmetic and reductions", ("aten::mul", "aten::add", "aten::div", "aten::sum", "aten::sub",
                                               "aten::linalg_vector_norm", "aten::clamp", "aten::tanh")),
)


def profile_training(model, optimizer, batches: list, tasks: dict[str, Task], recipe: Recipe, device: torch.device,
                     bf16: bool, folder: Path, side: str) -> dict:
    """Profile a few training steps with torch.profiler: the operator table and a Chrome trace go to `folder`,
    the share of self time per category comes back."""
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    model.train()
    with profile(activities=activities) as profiler:
        for step in batches:
            train_step(model, optimizer, [(n, _to(b, device)) for n, b in step], tasks, recipe.train.grad_clip,
                       device, bf16)
        _sync(device)
    events = profiler.key_averages()
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{side}-train.txt").write_text(events.table(sort_by="self_cpu_time_total", row_limit=40))
    profiler.export_chrome_trace(str(folder / f"{side}-train-trace.json"))
    shares: dict[str, float] = {}
    for event in events:
        category = next((name for name, prefixes in PROFILE_CATEGORIES if event.key.startswith(prefixes)), "other")
        shares[category] = shares.get(category, 0.0) + event.self_cpu_time_total
    total = sum(shares.values()) or 1.0
    return {"steps": len(batches), "self_cpu_s": total / 1e6,
            "shares": dict(sorted(((k, v / total) for k, v in shares.items()), key=lambda item: -item[1]))}


# ---------------------------------------------------------------------------------------------
# Peak memory, one fresh process per side and phase


def _status_mib(field: str) -> float | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    if field == "VmHWM":  # not Linux: getrusage's high-water mark (kilobytes on Linux, bytes on macOS)
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return peak / MIB if platform.system() == "Darwin" else peak / 1024
    return None


def _memory_child(job: dict) -> dict:
    """Run one side's work (training steps or the prediction pass) in this fresh process; report its peak."""
    import datasets

    recipe, side, phase = job["recipe"], job["side"], job["phase"]
    torch.set_num_threads(job["threads"])
    device = torch.device(job["device"])
    datasets.disable_progress_bars()
    with contextlib.redirect_stdout(io.StringIO()):  # the parent has reported the data already
        data = load_run_data(recipe)
    pad_id = data.tokenizer.pad_token_id or 0
    bf16 = speed.use_bf16(recipe.speed, device)
    config = MultiTaskConfig.from_dict(job["config"])
    if phase == "train":
        plan = training_plan(recipe, data, job["warmup"] + job["steps"])
        if side in SAME_BATCHES and recipe.speed.length_pool:
            plan = regroup(plan[: job["warmup"]], data, recipe.speed.length_pool, recipe.seed) + \
                regroup(plan[job["warmup"]:], data, recipe.speed.length_pool, recipe.seed)
        batches = collate_plan(plan, data, pad_id)
    baseline = _status_mib("VmRSS")
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    model = build_side(side, config, load_file(job["weights"]), recipe).to(device)
    if phase == "train":
        optimizer = build_optimizer_for(side, model, recipe)
        model.train()
        for step in batches:
            train_step(model, optimizer, [(n, _to(b, device)) for n, b in step], data.tasks, recipe.train.grad_clip,
                       device, bf16)
    else:
        for name, dataset in predict_examples(data, data.tasks, job["predict_examples"]).items():
            predict(side, model, data.tasks[name], dataset, recipe, pad_id, device, bf16)
    _sync(device)
    peak = _status_mib("VmHWM")
    report = {"peak_rss_mib": peak, "peak_rss_increase_mib": peak - baseline if baseline is not None else None}
    if device.type == "cuda":
        report["peak_gpu_mib"] = torch.cuda.max_memory_allocated(device) / MIB
    return report


def measure_memory(job: dict, sides: list[str], phases: tuple[str, ...] = ("train", "predict")) -> dict:
    """{phase: {side: report}}, each from its own spawned process, one after another."""
    context = multiprocessing.get_context("spawn")
    results: dict = {phase: {} for phase in phases}
    for phase in phases:
        for side in sides:
            with context.Pool(1) as pool:
                results[phase][side] = pool.apply(_memory_child, ({**job, "side": side, "phase": phase},))
    return results


# ---------------------------------------------------------------------------------------------
# The whole benchmark


def machine_description(device: torch.device) -> dict:
    cpu = platform.processor() or ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    described = {"device": device.type, "cpu": cpu, "cpu_count": os.cpu_count(),
                 "torch_threads": torch.get_num_threads(), "bf16_native": speed.bf16_supported(device)}
    if device.type == "cuda":
        described["gpu"] = torch.cuda.get_device_name(device)
    return described


def run_bench(recipe: Recipe, *, steps: int = 30, warmup: int = 3, compare: str | None = None,
              predict_limit: int = 512, memory: bool = True, profile: Path | None = None,
              profile_steps: int = 6, say=print) -> dict:
    """Measure, and return everything as one JSON-ready dict (see the module docstring for the method)."""
    import transformers
    from accelerate.utils import set_seed

    if steps < 1 or warmup < 0 or predict_limit < 1:
        raise MtbertError("--steps and --predict-examples must be at least 1, --warmup at least 0")
    compares = set(compare.split(",")) if compare else set()
    if compares - set(COMPARISONS):
        raise MtbertError(f"--compare: expected one of {', '.join(COMPARISONS)} (or both, comma-separated), "
                          f"got {compare!r}")
    streamed = [name for name, task in recipe.tasks.items() if task.streaming]
    if streamed:  # the bench replays planned batches by dataset index, which a stream has not
        raise MtbertError(f"tasks.{streamed[0]}.streaming: mtbert bench measures in-memory tasks; run it with "
                          f"tasks.{streamed[0]}.streaming=false")
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    bf16 = speed.use_bf16(recipe.speed, device)
    set_seed(recipe.seed)
    data = load_run_data(recipe)
    pad_id = data.tokenizer.pad_token_id or 0
    sides = ["mtbert"] + ([GROUPED, "transformers"] if "transformers" in compares else [])

    say("measuring the matmul peak ...")
    peak_dtype = torch.bfloat16 if bf16 else torch.float32
    peaks = [measure_matmul_peak(peak_dtype, device)]

    # Both sides start from the same weights, saved once (the memory processes load the same file).
    built = build_model(recipe, data.tasks, data.tokenizer)
    config, state = built.config, {k: v.detach().clone().contiguous() for k, v in built.state_dict().items()}
    del built
    models = {side: build_side(side, config, state, recipe).to(device) for side in sides}
    parity = _parity(models, data, pad_id, device) if "transformers" in compares else None
    train_tallies, profiles = _training_phase(models, recipe, data, steps, warmup, device, bf16, profile,
                                              profile_steps, say)

    say(f"prediction: up to {predict_limit} dev examples per task per side ...")
    # Training moved the two sides apart (different batch orders): predict from the starting weights again.
    models = {side: build_side(side, config, state, recipe).to(device) for side in sides}
    if "onnxruntime" in compares:
        models.update(build_onnx_sides(config, state, recipe, data.tasks, say))
    examples = predict_examples(data, data.tasks, predict_limit)
    predict_tallies, outputs = time_prediction(models, data.tasks, examples, recipe, pad_id, device, bf16)
    peaks.append(measure_matmul_peak(peak_dtype, device))
    peak = max(peaks, key=lambda p: p["flops_per_s"])

    result = {
        "recipe": recipe.name,
        "machine": machine_description(device),
        "versions": {"torch": torch.__version__, "transformers": transformers.__version__},
        "settings": {"steps": steps, "warmup": warmup, "predict_examples": predict_limit,
                     "precision": "bf16 autocast" if bf16 else "fp32",
                     "speed": dataclasses.asdict(recipe.speed),
                     "batch_size": {name: task.batch_size for name, task in data.tasks.items()},
                     "eval_batch_size": recipe.eval.batch_size,
                     "optimizer": {side: optimizer_description(side, recipe) for side in sides}},
        "matmul_peak": {"used": peak, "measured": peaks},
        "method": METHOD,
        "train": {side: train_tallies[side].figures(peak["flops_per_s"]) for side in sides},
        "predict": {side: predict_tallies[side].figures(peak["flops_per_s"]) for side in models},
    }
    for side, profiled in profiles.items():
        result["train"][side]["profile"] = profiled
    _agreements(result, data.tasks, outputs, compares, parity)
    if "onnxruntime" in compares:
        _describe_onnx(result, models)
    if memory:
        say("peak memory: one fresh process per side and phase ...")
        job = {"recipe": recipe, "config": config.to_dict(), "steps": steps, "warmup": warmup,
               "predict_examples": predict_limit, "device": device.type, "threads": torch.get_num_threads()}
        memory_results = _memory_phase(job, state, sides)
        for phase, by_side in memory_results.items():
            for side, report in by_side.items():
                result[phase][side].update(report)
    for phase in ("train", "predict"):
        for side, _, ratio in COLUMNS[1:]:
            if side in result[phase]:
                result[phase][ratio] = ratios(result[phase]["mtbert"], result[phase][side])
    return result


def _describe_onnx(result: dict, models: dict) -> None:
    """What the ONNX sides ran with: ONNX Runtime's version, the opset, int8's scheme, threads, fused operators."""
    import onnxruntime

    from mtbert import onnx_model

    result["versions"]["onnxruntime"] = onnxruntime.__version__
    result["onnx"] = {"opset": onnx_model.OPSET, "int8": onnx_model.QUANTIZATION,
                      "threads": torch.get_num_threads(),
                      "transformers_fused_operators": models["transformers_onnx"].fused_operators}


def _agreements(result: dict, tasks: dict[str, Task], outputs: dict, compares: set[str], parity: float | None) -> None:
    """Predictions of every other side against mtbert's (torch), example by example; dev scores where labelled."""
    if "transformers" in compares:
        result["parity_max_abs_diff"] = parity
        result["predict"]["agreement"] = {name: agreement(tasks[name], ours, outputs["transformers"][name])
                                          for name, ours in outputs["mtbert"].items()}
    if "onnxruntime" in compares:
        for side in ONNX_SIDES:
            result["predict"][f"agreement_{side}"] = {name: agreement(tasks[name], ours, outputs[side][name])
                                                      for name, ours in outputs["mtbert"].items()}
    result["predict"]["dev_scores"] = {side: {name: score(tasks[name], predicted)
                                              for name, predicted in by_task.items() if predicted.labels is not None}
                                       for side, by_task in outputs.items()}


def _training_phase(models: dict, recipe: Recipe, data, steps: int, warmup: int, device: torch.device, bf16: bool,
                    profile: Path | None, profile_steps: int, say) -> tuple[dict, dict]:
    """Time `warmup` + `steps` training steps per side on the same batches (mtbert's length-grouped when the
    recipe groups them), then profile a few more if asked; return the tallies and the profiles."""
    sides = list(models)
    optimizers = {side: build_optimizer_for(side, models[side], recipe) for side in sides}
    pad_id = data.tokenizer.pad_token_id or 0
    say(f"training: {warmup} warm-up + {steps} timed steps per side ...")
    plan = training_plan(recipe, data, warmup + steps)
    plans = {side: plan for side in sides}
    if recipe.speed.length_pool:
        grouped = regroup(plan[:warmup], data, recipe.speed.length_pool, recipe.seed) + \
            regroup(plan[warmup:], data, recipe.speed.length_pool, recipe.seed)
        plans.update({side: grouped for side in sides if side in SAME_BATCHES})
    batches = {side: collate_plan(plans[side], data, pad_id) for side in sides}
    tallies = time_training(models, optimizers, batches, data.tasks, recipe, warmup, device, bf16)
    profiles = {}
    if profile is not None:
        say(f"profiling {profile_steps} training steps per side into {profile} ...")
        for side in sides:
            profiles[side] = profile_training(models[side], optimizers[side],
                                              batches[side][warmup: warmup + profile_steps], data.tasks, recipe,
                                              device, bf16, Path(profile), side)
    return tallies, profiles


def _memory_phase(job: dict, state: dict[str, torch.Tensor], sides: list[str]) -> dict:
    """measure_memory with the starting weights saved once, for every fresh process to load."""
    with tempfile.TemporaryDirectory() as folder:
        weights = str(Path(folder) / "weights.safetensors")
        save_file(state, weights)
        return measure_memory(job | {"weights": weights}, sides)


@torch.no_grad()
def _parity(models: dict, data, pad_id: int, device: torch.device) -> float:
    """Largest output difference between the sides on one dev batch per task, in eval mode, fp32."""
    worst = 0.0
    for model in models.values():
        model.eval()
    for name, dataset in data.dev.items():
        batch = _to(collate(dataset.select(range(min(8, len(dataset))))[:], pad_id), device)
        ours, theirs = (models[side](name, batch).float() for side in ("mtbert", "transformers"))
        worst = max(worst, float((ours - theirs).abs().max()))
    return worst


# ---------------------------------------------------------------------------------------------
# The report


ROWS = [("real tokens/s", "real_tokens_per_s", "{:,.0f}"), ("padded tokens/s", "padded_tokens_per_s", "{:,.0f}"),
        ("examples/s", "examples_per_s", "{:,.1f}"), ("s/step (batch)", "s_per_step", "{:.4f}"),
        ("padding efficiency", "padding_efficiency", "{:.2f}"), ("MFU", "mfu", "{:.1%}"),
        ("peak RSS MiB", "peak_rss_mib", "{:,.0f}"), ("peak RSS increase MiB", "peak_rss_increase_mib", "{:,.0f}"),
        ("peak GPU MiB", "peak_gpu_mib", "{:,.0f}")]


COLUMNS = (("mtbert", "mtbert", None), (GROUPED, "transformers, same batches", "ratio_same_batches"),
           ("transformers", "transformers, plain loop", "ratio"),
           ("mtbert_onnx", "mtbert ONNX", "ratio_mtbert_onnx"),
           ("mtbert_onnx_int8", "mtbert ONNX int8", "ratio_mtbert_onnx_int8"),
           ("transformers_onnx", "transformers ONNX", "ratio_transformers_onnx"))
"Report columns: side, heading, the ratio key shown after it (mtbert / that side); the fair reference first."


def _table(figures: dict) -> list[list[str]]:
    """One phase's rows: a label, then each side's figure and mtbert's ratio to it."""
    columns = [column for column in COLUMNS if column[0] in figures]
    header = [""]
    for _, heading, ratio in columns:
        header += [heading] + (["ratio"] if ratio in figures else [])
    rows = [header]
    for label, key, fmt in ROWS:
        if not any(figures[side].get(key) is not None for side, _, _ in columns):
            continue
        row = [label]
        for side, _, ratio in columns:
            row.append(fmt.format(figures[side][key]) if figures[side].get(key) is not None else "-")
            if ratio in figures:
                row.append(f"{figures[ratio][key]:.2f}x" if key in figures[ratio] else "-")
        rows.append(row)
    return rows


def format_report(result: dict) -> str:
    sides = [side for side, _, _ in COLUMNS if side in result["train"]]
    peak = result["matmul_peak"]["used"]
    settings = result["settings"]
    lines = [f"{result['machine']['device']} ({result['machine'].get('gpu') or result['machine']['cpu']}, "
             f"{result['machine']['torch_threads']} threads), {settings['precision']}, matmul peak "
             f"{peak['flops_per_s'] / 1e9:,.1f} GFLOP/s ({peak['dtype']}, n={peak['size']})"]
    for phase, title in (("train", f"training: {settings['steps']} steps after {settings['warmup']} warm-up"),
                         ("predict", f"prediction: up to {settings['predict_examples']} dev examples per task")):
        rows = _table(result[phase])
        widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
        lines += ["", title] + ["  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths)))
                                for r in rows]
    if "agreement" in result["predict"]:
        lines.append("")
        for name, agreed in result["predict"]["agreement"].items():
            detail = ", ".join(f"{k} {v:.3g}" if isinstance(v, float) else f"{k} {v}" for k, v in agreed.items())
            lines.append(f"predictions {name}: {detail}")
        lines.append("same weights, one dev batch per task: max |output difference| "
                     f"{result['parity_max_abs_diff']:.2e}")
    lines += _onnx_lines(result["predict"])
    for side in sides:
        profiled = result["train"][side].get("profile")
        if profiled:
            owner = f"{side}'" if side.endswith("s") else f"{side}'s"
            lines += ["", f"where {owner} training time goes ({profiled['steps']} steps, share of self time):"]
            lines += [f"  {share:6.1%}  {category}" for category, share in profiled["shares"].items()]
    return "\n".join(lines)


def _onnx_lines(figures: dict) -> list[str]:
    """ONNX Runtime's predictions against mtbert's torch ones, and every side's dev scores (main metric)."""
    lines = []
    for side in ONNX_SIDES:
        for name, agreed in figures.get(f"agreement_{side}", {}).items():
            detail = ", ".join(f"{k} {v:.3g}" if isinstance(v, float) else f"{k} {v}" for k, v in agreed.items())
            lines.append(f"{side} against mtbert (torch), {name}: {detail}")
    scored = {side: by_task for side, by_task in figures.get("dev_scores", {}).items() if by_task}
    if scored and len(scored) > 1:
        lines.append("dev score (main metric) on the same examples: " + "; ".join(
            f"{side} " + ", ".join(f"{name} {values['main']:.4f}" for name, values in by_task.items())
            for side, by_task in scored.items()))
    return [""] + lines if lines else []


def run(recipe_path: Path, overrides: list[str], *, steps: int, warmup: int, compare: str | None, predict_examples: int,
        memory: bool, output: Path | None, profile: Path | None, data_dir: str | None,
        echo: Callable[[str], None], say: Callable[[str], None]) -> None:
    """`mtbert bench`: measure, print the report, and write every figure (with the command that made them) as
    JSON to `output`."""
    result = run_bench(load_recipe(recipe_path, overrides, data_dir=data_dir), steps=steps, warmup=warmup,
                       compare=compare, predict_limit=predict_examples, memory=memory, profile=profile, say=say)
    result["command"] = " ".join(["mtbert bench", str(recipe_path), *overrides, f"--steps {steps}",
                                  f"--warmup {warmup}", f"--predict-examples {predict_examples}",
                                  *([f"--compare {compare}"] if compare else []), *([] if memory else ["--no-memory"]),
                                  *([f"--profile {profile}"] if profile else []),
                                  *([f"--data-dir {data_dir}"] if data_dir else [])])
    echo(format_report(result))
    if output is not None:
        write_text_atomically(output, json_text(result, indent=2) + "\n")
        say(f"wrote {output}")
