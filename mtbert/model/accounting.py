"""Parameter accounting for a multi-task model: totals, each copy of encoder weights, each branch, each task.

Every parameter is counted once in the totals, however many branches use it. A *copy* is one owner's
set of encoder weights (`shared`, `frozen`, `sst`, `quora+sts`, ...); a *branch* is the encoder one or
more tasks run through, assembled from copies; a task's figures add its pooler and head.
"""

from __future__ import annotations

from collections.abc import Iterable

from torch import nn

from mtbert.model.multitask import MultiTaskModel


def _count(parameters: Iterable[nn.Parameter]) -> tuple[int, int]:
    """(all, trainable) over distinct parameters."""
    unique = {id(p): p for p in parameters}.values()
    return sum(p.numel() for p in unique), sum(p.numel() for p in unique if p.requires_grad)


def parameter_counts(model: MultiTaskModel) -> dict:
    """{total, trainable, frozen, encoder, heads, copies: {...}, branches: {...}, tasks: {...}}, plain data."""
    total, trainable = _count(model.parameters())
    encoder, _ = _count(model.encoder.parameters())
    counts: dict = {"total": total, "trainable": trainable, "frozen": total - trainable, "encoder": encoder,
                    "heads": total - encoder, "plan": model.config.sharing.describe()}
    counts["copies"] = {}
    for owner, part in model.encoder.copies.items():
        n, t = _count(part.parameters())
        counts["copies"][owner] = {"parameters": n, "trainable": t}
    branch_params = {name: {id(p): p for p in model.encoder.branch(tasks[0]).parameters()}
                     for name, tasks in model.encoder.branch_names().items()}
    counts["branches"] = {}
    for name, tasks in model.encoder.branch_names().items():
        others = {key for other, params in branch_params.items() if other != name for key in params}
        n, t = _count(branch_params[name].values())
        own, _ = _count(p for key, p in branch_params[name].items() if key not in others)
        counts["branches"][name] = {"tasks": list(tasks), "parameters": n, "trainable": t, "own": own}
    counts["tasks"] = {}
    for task in model.config.tasks:
        branch = next(name for name, tasks in model.encoder.branch_names().items() if task in tasks)
        head = [*(model.heads[task].parameters() if task in model.heads else ()),
                *(model.poolers[task].parameters() if task in model.poolers else ())]
        head_n, head_t = _count(head)
        branch_n, branch_t = _count(branch_params[branch].values())
        counts["tasks"][task] = {"branch": branch, "encoder": branch_n, "head": head_n,
                                 "total": branch_n + head_n, "trainable": branch_t + head_t}
    return counts


def format_counts(counts: dict) -> str:
    """A few readable lines for the start of a run."""
    lines = [f"sharing: {counts['plan']}",
             f"parameters: total {counts['total']:,} | trainable {counts['trainable']:,} | frozen {counts['frozen']:,}"
             f" | encoder {counts['encoder']:,} | poolers and heads {counts['heads']:,}"]
    lines.append("  copies: " + " | ".join(
        f"{owner} {c['parameters']:,}{'' if c['trainable'] else ' (frozen)'}" for owner, c in counts["copies"].items()))
    lines.append("  branches: " + " | ".join(
        f"{name} {b['parameters']:,} ({b['own']:,} its own)" for name, b in counts["branches"].items()))
    lines.append("  tasks: " + " | ".join(
        f"{task} {t['total']:,} ({t['trainable']:,} trainable)" for task, t in counts["tasks"].items()))
    return "\n".join(lines)
