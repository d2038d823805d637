"""Parameter accounting for a multi-task model: totals, each copy of encoder weights, each branch, each task.

Every parameter is counted once in the totals, however many branches use it. A *copy* is one owner's
set of encoder weights (`shared`, `frozen`, `sst`, `quora+sts`, ...); a *branch* is the encoder one or
more tasks run through, assembled from copies; an *adapter* (LoRA or PALs) is one task group's small set
of weights on top of the copies; a task's figures add its adapter, pooler and head.
"""

from __future__ import annotations

from collections.abc import Iterable

from torch import nn

from mtbert.model.adapters import adapter_parameters
from mtbert.model.multitask import MultiTaskModel


def _count(parameters: Iterable[nn.Parameter]) -> tuple[int, int]:
    """(all, trainable) over distinct parameters."""
    unique = {id(p): p for p in parameters}.values()
    return sum(p.numel() for p in unique), sum(p.numel() for p in unique if p.requires_grad)


def parameter_counts(model: MultiTaskModel) -> dict:
    """{total, trainable, frozen, encoder, adapters_total, heads, copies, adapters, branches, tasks, own_per_task,
    own_bytes_per_task}, plain data. Copies and branches count base weights; `adapters` each owner's adapter.
    A task's `own` counts the parameters no other task uses: what adding one more task like it costs."""
    total, trainable = _count(model.parameters())
    encoder, _ = _count(model.encoder.parameters())
    plan = model.config.sharing
    adapters = adapter_parameters(model.encoder, plan)
    adapter_ids = {id(p) for params in adapters.values() for p in params}
    counts: dict = {"total": total, "trainable": trainable, "frozen": total - trainable, "encoder": encoder,
                    "adapters_total": _count(p for params in adapters.values() for p in params)[0],
                    "heads": total - encoder, "plan": plan.describe()}
    counts["copies"] = {}
    for owner, part in model.encoder.copies.items():
        n, t = _count(p for p in part.parameters() if id(p) not in adapter_ids)
        counts["copies"][owner] = {"parameters": n, "trainable": t}
    counts["adapters"] = {}
    for owner, params in adapters.items():
        n, t = _count(params)
        counts["adapters"][owner] = {"tasks": owner.split("+"), "parameters": n, "trainable": t}
    branch_params = {name: {id(p): p for p in model.encoder.branch(tasks[0]).parameters() if id(p) not in adapter_ids}
                     for name, tasks in model.encoder.branch_names().items()}
    counts["branches"] = {}
    for name, tasks in model.encoder.branch_names().items():
        others = {key for other, params in branch_params.items() if other != name for key in params}
        n, t = _count(branch_params[name].values())
        own, _ = _count(p for key, p in branch_params[name].items() if key not in others)
        counts["branches"][name] = {"tasks": list(tasks), "parameters": n, "trainable": t, "own": own}
    counts["tasks"] = {task: _task_counts(model, task, counts, branch_params, adapters) for task in model.config.tasks}
    owned = [_own_parameters(model, task, branch_params, adapters) for task in model.config.tasks]
    counts["own_per_task"] = sum(sum(p.numel() for p in ps) for ps in owned) / len(owned)
    counts["own_bytes_per_task"] = sum(sum(p.numel() * p.element_size() for p in ps) for ps in owned) / len(owned)
    return counts


def _task_counts(model: MultiTaskModel, task: str, counts: dict, branch_params: dict, adapters: dict) -> dict:
    branch = next(name for name, tasks in model.encoder.branch_names().items() if task in tasks)
    head_n, head_t = _count(_head_parameters(model, task))
    branch_n, branch_t = _count(branch_params[branch].values())
    owner = model.config.sharing.adapter_owner(task)
    adapter_n, adapter_t = _count(adapters[owner]) if owner is not None else (0, 0)
    own, _ = _count(_own_parameters(model, task, branch_params, adapters))
    return {"branch": branch, "encoder": branch_n, "adapter": adapter_n, "head": head_n,
            "total": branch_n + adapter_n + head_n, "trainable": branch_t + adapter_t + head_t, "own": own}


def _head_parameters(model: MultiTaskModel, task: str) -> list[nn.Parameter]:
    return [*(model.heads[task].parameters() if task in model.heads else ()),
            *(model.poolers[task].parameters() if task in model.poolers else ())]


def _own_parameters(model: MultiTaskModel, task: str, branch_params: dict, adapters: dict) -> list[nn.Parameter]:
    """The parameters only `task` uses: its branch's, when no other task runs through any of them; its adapter, when
    it owns one alone; its pooler and head."""
    plan = model.config.sharing
    others = {key for other in plan.tasks if other != task
              for key in branch_params["+".join(_branch_tasks(model, other))]}
    mine = branch_params["+".join(_branch_tasks(model, task))]
    own = [p for key, p in mine.items() if key not in others]
    owner = plan.adapter_owner(task)
    if owner == task:
        own += adapters[owner]
    return own + _head_parameters(model, task)


def _branch_tasks(model: MultiTaskModel, task: str) -> tuple[str, ...]:
    return next(tasks for tasks in model.encoder.branch_names().values() if task in tasks)


def format_counts(counts: dict) -> str:
    """A few readable lines for the start of a run."""
    lines = [f"sharing: {counts['plan']}",
             f"parameters: total {counts['total']:,} | trainable {counts['trainable']:,} | frozen {counts['frozen']:,}"
             f" | encoder {counts['encoder']:,} | poolers and heads {counts['heads']:,}"]
    lines.append("  copies: " + " | ".join(
        f"{owner} {c['parameters']:,}{'' if c['trainable'] else ' (frozen)'}" for owner, c in counts["copies"].items()))
    lines.append("  branches: " + " | ".join(
        f"{name} {b['parameters']:,} ({b['own']:,} its own)" for name, b in counts["branches"].items()))
    if counts["adapters"]:
        lines.append("  adapters: " + " | ".join(
            f"{owner} {a['parameters']:,}{'' if a['trainable'] else ' (frozen)'}"
            for owner, a in counts["adapters"].items()))
    lines.append("  tasks: " + " | ".join(
        f"{task} {t['total']:,} ({t['trainable']:,} trainable, {t['own']:,} its own)"
        for task, t in counts["tasks"].items()))
    return "\n".join(lines)
