"""The sharing-plan language: which copy of each encoder part every task runs through. Torch-free, so
that reading a recipe (mtbert/config.py) checks a plan without importing the model.

A *sharing plan* gives the embeddings and every encoder layer a mode:

- ``frozen``: one copy, never updated;
- ``shared``: one copy, trained by every task;
- ``individual``: one copy per task group (``groups: [[quora, sts]]``); a task in no group gets its own.

*Relational* layers are extra encoder layers stacked on top for one task group (the paraphrase +
similarity layer of the multi-task minBERT studies). An *adapter* adds a few parameters per task group on
the encoder's own layers, whatever their mode: LoRA (``+lora[r=8]``) or projected attention layers
(``+pals``); mtbert/model/adapters.py builds them. Each copy is named by its owner — ``frozen``,
``shared``, or a group's tasks joined by ``+`` such as ``quora+sts``. A task's *branch* is the path of
owners its stack runs through, bottom first (`SharingPlan.path`); mtbert/model/sharing.py builds the
module from a resolved plan.

Plans arrive as plain data — a short string or a mapping — so this module knows nothing of YAML;
a bad plan raises SharingPlanError carrying the path of the offending key below ``model.sharing``.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import re
from dataclasses import dataclass
from typing import Any, NamedTuple

MODES = ("frozen", "shared", "individual")
RELATIONAL_INITS = ("copy_top", "random")
_LETTERS = {"F": "frozen", "S": "shared", "I": "individual"}
# Owner names a task group may not take: the single copies are called by their mode.
_RESERVED = ("frozen", "shared")

SHORT_FORMS = ("shared | frozen | individual, or a layer string such as F2-S3-I1: segments F<n> (frozen), "
               "S<n> (shared), I<n> (individual) or I<n>[quora+sts] (groups, comma-separated) joined by '-', "
               "bottom first, optionally led by an embeddings segment (EF, ES, EI[...]) and followed by "
               "relational layers +R<n>[quora+sts] and one adapter +lora[r=8] or +pals")

ADAPTER_KINDS = ("lora", "pals")
LORA_TARGETS = ("query", "key", "value", "attention_output", "ffn_in", "ffn_out")
"What LoRA may adapt in each layer: the attention's projections, its output projection, the feed-forward's two."
TARGET_SETS = {"all": LORA_TARGETS, "attention": LORA_TARGETS[:4], "ffn": LORA_TARGETS[4:]}
"Names for several targets at once."
_ADAPTER_SETTINGS = {"lora": ("r", "alpha", "dropout", "targets"), "pals": ("size", "heads")}
PALS_WIDTH_RATIO = 204 / 768
"PALs' projected width d_s over the hidden size: 204 for BERT-base (768) in Stickland & Murray's code."


class SharingPlanError(ValueError):
    """A plan that cannot be built; `path` leads to the offending key below `model.sharing`."""

    def __init__(self, message: str, path: tuple[str, ...] = ()):
        super().__init__(message)
        self.message, self.path = message, tuple(str(p) for p in path)

    def __str__(self) -> str:
        return f"{'.'.join(('model', 'sharing', *self.path))}: {self.message}"


# ---------------------------------------------------------------------------------------------
# The resolved plan


@dataclass(frozen=True)
class Part:
    """How one part (the embeddings or one layer) is shared."""

    mode: str
    "frozen, shared or individual."
    groups: tuple[tuple[str, ...], ...] = ()
    "individual: the task groups, one copy each; a resolved plan lists every task in exactly one group."


@dataclass(frozen=True)
class Relational:
    """Extra layers on top of the encoder, owned by one task group."""

    tasks: tuple[str, ...]
    "The owning group, in task order."
    layers: int = 1
    "How many extra layers."
    init: str = "copy_top"
    "copy_top: copies of the encoder's top layer as loaded; random: BERT's normal initialisation."

    @property
    def owner(self) -> str:
        return "+".join(self.tasks)


@dataclass(frozen=True)
class Adapter:
    """Per-group modules on the encoder's own layers (not relational ones), one set per task group; the
    defaults here are the only ones (the recipe's structured form leaves a setting null to take them)."""

    kind: str
    "lora or pals."
    groups: tuple[tuple[str, ...], ...] = ()
    "One adapter per group; a resolved plan lists every task in exactly one group."
    r: int = 8
    "lora: rank of each update B A."
    alpha: float = 16.0
    "lora: the update is scaled by alpha / r."
    dropout: float = 0.0
    "lora: dropout on the adapter's input."
    targets: tuple[str, ...] = ("query", "value")
    "lora: which projections of every layer carry an adapter (LORA_TARGETS); Hu et al. 2021 adapt query and value."
    size: int | None = None
    "pals: width d_s of the projected attention; None: PALS_WIDTH_RATIO of the hidden size, rounded up to a multiple \
of heads."
    heads: int = 6
    "pals: attention heads in the projected space (6 in Stickland & Murray's code)."

    def owner(self, task: str) -> str:
        return next("+".join(group) for group in self.groups if task in group)

    def width(self, hidden_size: int) -> int:
        """pals: d_s for an encoder of this hidden size."""
        if self.size is not None:
            return self.size
        return self.heads * math.ceil(hidden_size * PALS_WIDTH_RATIO / self.heads)

    def describe(self) -> str:
        if self.kind == "lora":
            text = (f"lora r={self.r} alpha={_number_text(self.alpha)} dropout={_number_text(self.dropout)} "
                    f"on {','.join(self.targets)}")
        else:
            text = f"pals {'scaled' if self.size is None else self.size} dims, {self.heads} heads"
        return text + "".join(f" [{'+'.join(g)}]" for g in self.groups)

    def to_dict(self) -> dict:
        return {"kind": self.kind, "groups": [list(g) for g in self.groups], "r": self.r, "alpha": self.alpha,
                "dropout": self.dropout, "targets": list(self.targets), "size": self.size, "heads": self.heads}

    @classmethod
    def from_dict(cls, data: dict) -> Adapter:
        data = dict(data)
        return cls(**data | {"groups": tuple(tuple(g) for g in data.get("groups", ())),
                             "targets": tuple(data.get("targets", cls.targets))})


def _number_text(value: float) -> str:
    return f"{value:g}"


class BranchPath(NamedTuple):
    """The copy each part of one task's stack comes from."""

    embeddings: str
    layers: tuple[str, ...]
    "One owner per layer, bottom first; relational layers last."

    @property
    def pooler(self) -> str:
        return self.layers[-1] if self.layers else self.embeddings


@dataclass(frozen=True)
class SharingPlan:
    """A plan resolved against an encoder and a task list: every part of every task has one owner."""

    tasks: tuple[str, ...]
    embeddings: Part
    layers: tuple[Part, ...]
    relational: tuple[Relational, ...] = ()
    text: str = ""
    "The plan as written (a short string), for display; empty for a structured plan."
    adapter: Adapter | None = None
    "LoRA or PALs on the encoder's layers, one per task group; None: none."

    def adapter_owner(self, task: str) -> str | None:
        """The name of the adapter `task` runs through (its group's tasks joined by '+'), or None."""
        return self.adapter.owner(task) if self.adapter is not None else None

    def owner(self, part: Part, task: str) -> str:
        if part.mode != "individual":
            return part.mode
        return next("+".join(group) for group in part.groups if task in group)

    def relational_of(self, task: str) -> Relational | None:
        return next((r for r in self.relational if task in r.tasks), None)

    def path(self, task: str) -> BranchPath:
        if task not in self.tasks:
            raise ValueError(f"task {task!r} is not in the sharing plan; its tasks: {', '.join(self.tasks)}")
        layers = [self.owner(part, task) for part in self.layers]
        extra = self.relational_of(task)
        if extra is not None:
            layers += [extra.owner] * extra.layers
        return BranchPath(self.owner(self.embeddings, task), tuple(layers))

    def branches(self) -> dict[BranchPath, tuple[str, ...]]:
        """Each distinct branch and the tasks that run through it, in task order."""
        found: dict[BranchPath, tuple[str, ...]] = {}
        for task in self.tasks:
            path = self.path(task)
            found[path] = found.get(path, ()) + (task,)
        return found

    def describe(self) -> str:
        """One line, e.g. `embeddings shared | layers 0-3 shared | 4-5 individual [sst] [quora+sts] | ...`."""
        def part_text(part: Part) -> str:
            return part.mode + "".join(f" [{'+'.join(g)}]" for g in part.groups)

        runs: list[tuple[int, int, str]] = []
        for i, part in enumerate(self.layers):
            text = part_text(part)
            if runs and runs[-1][2] == text:
                runs[-1] = (runs[-1][0], i, text)
            else:
                runs.append((i, i, text))
        layers = ", ".join(f"{a}-{b} {t}" if a != b else f"{a} {t}" for a, b, t in runs)
        parts = [f"embeddings {part_text(self.embeddings)}", f"layers {layers}"]
        parts += [f"relational {r.layers} layer(s) [{r.owner}] ({r.init})" for r in self.relational]
        if self.adapter is not None:
            parts.append(self.adapter.describe())
        return " | ".join(parts)

    def to_dict(self) -> dict:
        return {"text": self.text, "tasks": list(self.tasks), "embeddings": _part_dict(self.embeddings),
                "layers": [_part_dict(p) for p in self.layers],
                "relational": [{"tasks": list(r.tasks), "layers": r.layers, "init": r.init} for r in self.relational],
                "adapter": self.adapter.to_dict() if self.adapter is not None else None}

    @classmethod
    def from_dict(cls, data: dict) -> SharingPlan:
        def part(d: dict) -> Part:
            return Part(d["mode"], tuple(tuple(g) for g in d.get("groups", ())))

        return cls(tasks=tuple(data["tasks"]), embeddings=part(data["embeddings"]),
                   layers=tuple(part(p) for p in data["layers"]),
                   relational=tuple(Relational(tuple(r["tasks"]), r["layers"], r["init"])
                                    for r in data.get("relational", ())),
                   text=data.get("text", ""),
                   adapter=Adapter.from_dict(data["adapter"]) if data.get("adapter") else None)


def _part_dict(part: Part) -> dict:
    return {"mode": part.mode, "groups": [list(g) for g in part.groups]}


# ---------------------------------------------------------------------------------------------
# Reading a plan: a short string or a mapping -> checked spec -> resolved against the layer count


@dataclass
class _Range:
    start: int
    end: int | None
    "Inclusive; None reaches the top of the encoder."
    part: Part
    "Groups as written (tasks in no group are filled in by resolve)."
    path: tuple[str, ...]
    text: str


@dataclass
class PlanSpec:
    """A plan checked against the task names, not yet against the encoder's layer count."""

    tasks: list[str]
    text: str
    "The short string as written; empty for a mapping."
    embeddings: Part | None
    "None: as the bottom layer."
    ranges: list[_Range]
    relational: list[Relational]
    counted: int | None = None
    "For a layer string, the sum of its counts, which must equal the encoder's layer count."
    adapter: Adapter | None = None
    "Groups as written (tasks in no group are filled in by resolve)."

    def resolve(self, num_layers: int) -> SharingPlan:
        """Check the ranges against the layer count and give every task an owner for every part."""
        if self.counted is not None and self.counted != num_layers:
            raise SharingPlanError(f"the layer counts of {self.text!r} add up to {self.counted}, but the encoder "
                                   f"has {num_layers} layers")
        layers: list[Part | None] = [None] * num_layers
        for r in self.ranges:
            end = num_layers - 1 if r.end is None else r.end
            if end >= num_layers:
                raise SharingPlanError(f"layer {end} is out of range: the encoder has {num_layers} layers, "
                                       f"0-{num_layers - 1}", r.path)
            for i in range(r.start, end + 1):
                layers[i] = _fill_groups(r.part, self.tasks)
        missing = [str(i) for i, part in enumerate(layers) if part is None]
        if missing:
            raise SharingPlanError(f"no mode for layer(s) {', '.join(missing)}: the ranges must cover every layer "
                                   f"of the encoder (0-{num_layers - 1}) exactly once", ("layers",))
        if self.embeddings is not None:
            embeddings = _fill_groups(self.embeddings, self.tasks)
        else:  # as the bottom layer
            embeddings = layers[0] if layers else Part("shared")
        if self.relational and num_layers == 0:
            raise SharingPlanError("relational layers need an encoder with at least one layer")
        for part in [embeddings, *layers]:
            for group in part.groups:
                _check_owner(group)
        for extra in self.relational:
            _check_owner(extra.tasks)
        adapter = self.adapter
        if adapter is not None:
            adapter = dataclasses.replace(adapter, groups=_fill_groups(Part("individual", adapter.groups),
                                                                        self.tasks).groups)
            for group in adapter.groups:
                _check_owner(group)
        return SharingPlan(tuple(self.tasks), embeddings, tuple(layers), tuple(self.relational), self.text, adapter)


def parse_plan(spec: Any, tasks: list[str]) -> PlanSpec:
    """Check a plan (a short string or a mapping) against the task names."""
    if isinstance(spec, str):
        return _parse_short(spec, tasks)
    if isinstance(spec, dict):
        return _parse_mapping(spec, tasks)
    raise SharingPlanError(f"expected {SHORT_FORMS}; or a mapping with embeddings, layers and relational; "
                           f"got {spec!r}")


def resolve_plan(spec: Any, num_layers: int, tasks: list[str]) -> SharingPlan:
    """parse_plan, then resolve against an encoder of `num_layers` layers."""
    return parse_plan(spec, tasks).resolve(num_layers)


def _split_outside_brackets(text: str, separator: str) -> list[str]:
    pieces, depth, current = [], 0, []
    for char in text:
        depth += (char == "[") - (char == "]")
        if char == separator and depth == 0:
            pieces.append("".join(current))
            current = []
        else:
            current.append(char)
    pieces.append("".join(current))
    return pieces


_SEGMENT = re.compile(r"(?P<letter>[FSI])(?P<count>\d+)(?:\[(?P<groups>[^\[\]]*)\])?")
_EMBEDDINGS = re.compile(r"E(?P<letter>[FSI])(?:\[(?P<groups>[^\[\]]*)\])?")
_RELATIONAL = re.compile(r"R(?P<count>\d+)\[(?P<groups>[^\[\]]*)\]")
_ADAPTER = re.compile(r"(?P<kind>lora|pals)(?:\[(?P<inside>[^\[\]]*)\])?")


def _parse_adapter_short(match: re.Match, tasks: list[str]) -> Adapter:
    """`lora`, `lora[r=16,alpha=32,targets=query/value,quora+sts]`: settings key=value and task groups, mixed."""
    settings: dict[str, Any] = {}
    groups = []
    inside = (match["inside"] or "").strip()
    for item in inside.split(",") if inside else []:
        item = item.strip()
        key, sep, value = item.partition("=")
        if not sep:
            groups.append([t.strip() for t in item.split("+")])
            continue
        key, value = key.strip(), value.strip()
        if key in settings:
            raise SharingPlanError(f"{match[0]!r}: {key} is given twice")
        settings[key] = value.split("/") if key == "targets" else _short_number(key, value, match[0])
    return _adapter(match["kind"], settings, _check_groups(groups, tasks, ()), ())


def _short_number(key: str, value: str, piece: str) -> int | float:
    try:
        return int(value) if key in ("r", "size", "heads") else float(value)
    except ValueError:
        raise SharingPlanError(f"{piece!r}: {key}={value!r} is not a number") from None


def _adapter(kind: str, settings: dict[str, Any], groups: tuple, path: tuple[str, ...]) -> Adapter:
    """An Adapter from settings checked against its kind; a null setting takes the default."""
    known = [name for names in _ADAPTER_SETTINGS.values() for name in names]
    values = {}
    for key, value in settings.items():
        if key not in known:
            raise SharingPlanError(f"unknown adapter setting {key!r}; {_did_you_mean(key, known)}lora takes r, "
                                   f"alpha, dropout, targets; pals takes size, heads", path)
        if value is None:
            continue
        if key not in _ADAPTER_SETTINGS[kind]:
            other = next(k for k, names in _ADAPTER_SETTINGS.items() if key in names)
            raise SharingPlanError(f"{key} is a {other} setting; {kind} takes {', '.join(_ADAPTER_SETTINGS[kind])}",
                                   path + ((key,) if path else ()))
        values[key] = _adapter_value(key, value, path + ((key,) if path else ()))
    adapter = Adapter(kind, groups, **values)
    if kind == "pals" and adapter.size is not None and adapter.size % adapter.heads:
        raise SharingPlanError(f"pals size {adapter.size} is not a multiple of its {adapter.heads} heads", path)
    return adapter


def _adapter_value(key: str, value: Any, path: tuple[str, ...]) -> Any:
    if key == "targets":
        names = [value] if isinstance(value, str) else value
        if not isinstance(names, list) or not names or not all(isinstance(n, str) for n in names):
            raise SharingPlanError(f"expected a list of targets such as [query, value], got {value!r}", path)
        chosen = []
        for name in names:
            name = name.strip()
            if name not in LORA_TARGETS and name not in TARGET_SETS:
                choices = [*LORA_TARGETS, *TARGET_SETS]
                raise SharingPlanError(f"unknown LoRA target {name!r}; {_did_you_mean(name, choices)}choose from "
                                       f"{', '.join(choices)}", path)
            chosen += [t for t in TARGET_SETS.get(name, (name,)) if t not in chosen]
        return tuple(t for t in LORA_TARGETS if t in chosen)  # one order, whatever the order written
    whole = key in ("r", "size", "heads")
    if isinstance(value, bool) or not isinstance(value, (int, float)) or (whole and not float(value).is_integer()):
        raise SharingPlanError(f"{key} must be {'a whole number' if whole else 'a number'}, got {value!r}", path)
    bad = (value < 1 if whole else value <= 0 if key == "alpha" else not 0 <= value < 1) or not math.isfinite(value)
    if bad:
        bound = "at least 1" if whole else "above 0" if key == "alpha" else "in [0, 1)"
        raise SharingPlanError(f"{key} must be {bound}, got {value!r}", path)
    return int(value) if whole else float(value)


def _parse_short(text: str, tasks: list[str]) -> PlanSpec:
    text = text.strip()
    base, *extras = _split_outside_brackets(text, "+")

    def unreadable(piece: str) -> SharingPlanError:
        within = f" in {text!r}" if piece.strip() != text else ""
        return SharingPlanError(f"cannot read {piece!r}{within}; expected {SHORT_FORMS}")

    relational, adapter = [], None
    for piece in extras:
        match = _RELATIONAL.fullmatch(piece.strip())
        adapter_match = _ADAPTER.fullmatch(piece.strip())
        if adapter_match:
            if adapter is not None:
                raise SharingPlanError(f"{text!r} has two adapter segments; a plan takes one "
                                       f"(+lora[...] or +pals[...])")
            adapter = _parse_adapter_short(adapter_match, tasks)
            continue
        if not match:
            raise unreadable(piece)
        groups = _parse_groups(match["groups"], tasks, ())
        if len(groups) != 1:
            raise SharingPlanError(f"{piece!r}: a relational segment is owned by one task group, e.g. "
                                   f"R1[quora+sts]; write one segment per group")
        relational.append(Relational(groups[0], _count(match["count"], piece)))
    _check_relational(relational, ())

    base = base.strip()
    if base in MODES:
        return PlanSpec(tasks, text, None, [_Range(0, None, Part(base), (), base)], relational, adapter=adapter)
    segments = _split_outside_brackets(base, "-")
    embeddings = None
    if segments[0].startswith("E"):
        match = _EMBEDDINGS.fullmatch(segments[0])
        if not match:
            raise unreadable(segments[0])
        embeddings = _part(_LETTERS[match["letter"]], _parse_groups(match["groups"], tasks, ()), ())
        segments = segments[1:]
    ranges, start = [], 0
    for segment in segments:
        match = _SEGMENT.fullmatch(segment)
        if not match:
            raise unreadable(segment)
        count = _count(match["count"], segment)
        part = _part(_LETTERS[match["letter"]], _parse_groups(match["groups"], tasks, ()), ())
        ranges.append(_Range(start, start + count - 1, part, (), segment))
        start += count
    if not ranges:
        raise unreadable(base)
    return PlanSpec(tasks, text, embeddings, ranges, relational, counted=start, adapter=adapter)


def _count(digits: str, piece: str) -> int:
    if int(digits) < 1:
        raise SharingPlanError(f"{piece!r}: a segment covers at least 1 layer")
    return int(digits)


def _parse_groups(text: str | None, tasks: list[str], path: tuple[str, ...]) -> tuple[tuple[str, ...], ...]:
    """'quora+sts,sst' -> (('quora', 'sts'), ('sst',)); None (no brackets) -> ()."""
    if text is None:
        return ()
    groups = [[t.strip() for t in group.split("+")] for group in text.split(",")]
    return _check_groups(groups, tasks, path)


def _did_you_mean(word: str, choices: list[str]) -> str:
    near = difflib.get_close_matches(word, choices, n=1)
    return f"did you mean {near[0]!r}? " if near else ""


def _check_groups(groups: list, tasks: list[str], path: tuple[str, ...]) -> tuple[tuple[str, ...], ...]:
    seen: dict[str, int] = {}
    checked = []
    for i, group in enumerate(groups):
        if isinstance(group, str):
            group = [group]
        if not group or any(not isinstance(t, str) or not t for t in group):
            raise SharingPlanError(f"group {i} {group!r} must name at least one task", path)
        for task in group:
            if task not in tasks:
                raise SharingPlanError(f"group {_group_text(group)} names {task!r}, which is not a task of "
                                       f"this recipe; {_did_you_mean(task, tasks)}its tasks: {', '.join(tasks)}",
                                       path)
            if task in seen:
                where = "twice in one group" if seen[task] == i else "in two groups"
                raise SharingPlanError(f"task {task!r} is {where}; a task runs through one copy of each layer",
                                       path)
            seen[task] = i
        checked.append(tuple(t for t in tasks if t in group))
    return tuple(checked)


def _group_text(group) -> str:
    return "[" + ", ".join(map(str, group)) + "]"


def _part(mode: str, groups: tuple, path: tuple[str, ...]) -> Part:
    if groups and mode != "individual":
        raise SharingPlanError(f"groups are only for mode individual, not {mode}", path + ("groups",) if path else ())
    return Part(mode, groups)


def _check_relational(relational: list[Relational], path: tuple[str, ...]) -> None:
    owners: dict[str, int] = {}
    for i, extra in enumerate(relational):
        for task in extra.tasks:
            if task in owners:
                raise SharingPlanError(f"task {task!r} is in two relational groups; a task has one stack",
                                       path + ((str(i),) if path else ()))
            owners[task] = i


def _parse_mapping(spec: dict, tasks: list[str]) -> PlanSpec:
    unknown = set(spec) - {"embeddings", "layers", "relational", "adapter"}
    if unknown:
        raise SharingPlanError(f"unknown key(s) {', '.join(sorted(unknown))}; a structured plan has embeddings, "
                               f"layers, relational and adapter")
    embeddings = None
    raw_embeddings = spec.get("embeddings")
    if isinstance(raw_embeddings, str):
        raw_embeddings = {"mode": raw_embeddings}
    if raw_embeddings is not None:
        embeddings = _mapping_part(raw_embeddings, tasks, ("embeddings",))
    layers = spec.get("layers") or []
    if not isinstance(layers, list) or not layers:
        raise SharingPlanError("a structured plan lists its layer ranges, e.g. [{range: 0-3, mode: frozen}, "
                               "{range: 4-5, mode: shared}]", ("layers",))
    ranges: list[_Range] = []
    for i, entry in enumerate(layers):
        path = ("layers", str(i))
        if not isinstance(entry, dict) or "range" not in entry:
            raise SharingPlanError("each entry needs a range (3, 0-3 or all) and a mode", path)
        start, end = _parse_range(entry["range"], path + ("range",))
        text = "all layers" if end is None else f"layers {start}-{end}" if start != end else f"layer {start}"
        new = _Range(start, end, _mapping_part(entry, tasks, path), path + ("range",), text)
        for other in ranges:
            top = float("inf")  # an open range reaches the top, whatever the layer count
            if new.start <= (top if other.end is None else other.end) and \
                    other.start <= (top if new.end is None else new.end):
                verb = "overlaps" if new.start == new.end else "overlap"
                raise SharingPlanError(f"{new.text} {verb} {other.text} (model.sharing.{'.'.join(other.path[:2])})",
                                       new.path)
        ranges.append(new)
    relational = []
    for i, entry in enumerate(spec.get("relational") or []):
        path = ("relational", str(i))
        if not isinstance(entry, dict) or not entry.get("tasks"):
            raise SharingPlanError("a relational entry names its task group, e.g. {tasks: [quora, sts]}", path)
        groups = _check_groups([entry["tasks"]], tasks, path + ("tasks",))
        count = entry.get("layers", 1)
        if not isinstance(count, int) or count < 1:
            raise SharingPlanError(f"must be at least 1, got {count!r}", path + ("layers",))
        init = entry.get("init") or "copy_top"
        if init not in RELATIONAL_INITS:
            raise SharingPlanError(f"expected one of {', '.join(RELATIONAL_INITS)}, got {init!r}", path + ("init",))
        relational.append(Relational(groups[0], count, init))
    _check_relational(relational, ("relational",))
    adapter = _mapping_adapter(spec["adapter"], tasks) if spec.get("adapter") is not None else None
    return PlanSpec(tasks, "", embeddings, ranges, relational, adapter=adapter)


def _mapping_adapter(entry: Any, tasks: list[str]) -> Adapter:
    path = ("adapter",)
    if not isinstance(entry, dict):
        raise SharingPlanError("expected a mapping such as {type: lora, r: 8}", path)
    kind = entry.get("type")
    if kind not in ADAPTER_KINDS:
        raise SharingPlanError(f"expected one of {', '.join(ADAPTER_KINDS)}, got {kind!r}", path + ("type",))
    settings = {k: v for k, v in entry.items() if k not in ("type", "groups")}
    return _adapter(kind, settings, _entry_groups(entry, tasks, path), path)


def _mapping_part(entry: dict, tasks: list[str], path: tuple[str, ...]) -> Part:
    mode = entry.get("mode")
    if mode not in MODES:
        raise SharingPlanError(f"expected one of {', '.join(MODES)}, got {mode!r}", path + ("mode",))
    return _part(mode, _entry_groups(entry, tasks, path), path)


def _entry_groups(entry: dict, tasks: list[str], path: tuple[str, ...]) -> tuple:
    """A mapping's `groups` (a part's or the adapter's), checked."""
    groups = entry.get("groups") or []
    if not isinstance(groups, list):
        raise SharingPlanError(f"expected a list of task groups, e.g. [[quora, sts]], got {groups!r}",
                               path + ("groups",))
    return _check_groups(groups, tasks, path + ("groups",))


def _parse_range(value: Any, path: tuple[str, ...]) -> tuple[int, int | None]:
    text = str(value).strip()
    if text == "all":
        return 0, None
    match = re.fullmatch(r"(\d+)(?:\s*-\s*(\d+))?", text)
    if not match:
        raise SharingPlanError(f"expected a layer index (3), an inclusive range (0-3) or all, got {value!r}", path)
    start = int(match[1])
    end = int(match[2]) if match[2] is not None else start
    if end < start:
        raise SharingPlanError(f"range {text} runs backwards; write {end}-{start}", path)
    return start, end


def _fill_groups(part: Part, tasks: list[str]) -> Part:
    """Every task in exactly one group: the written groups, then each remaining task alone, in task order."""
    if part.mode != "individual":
        return part
    groups = {task: group for group in part.groups for task in group}
    filled = []
    for task in tasks:
        group = groups.get(task, (task,))
        if group not in filled:
            filled.append(group)
    return Part("individual", tuple(filled))


def _check_owner(group: tuple[str, ...]) -> None:
    """A group's copy is named by its tasks joined with '+': that name must be unambiguous."""
    owner = "+".join(group)
    if owner in _RESERVED:
        raise SharingPlanError(f"a task named {owner!r} cannot own a copy of encoder weights: the {owner} copy "
                               f"has that name; rename the task")
    for task in group:
        if "+" in task or "." in task:
            raise SharingPlanError(f"task {task!r} owns a copy of encoder weights, so its name cannot hold '+' "
                                   f"(copy names join task names with it) or '.' (parameter names use it)")
