"""The multi-task model: the encoder's branches (sharing.py), then per task a pooler and a head (composition only)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from mtbert.model.bert import BertConfig, BertModel
from mtbert.model.heads import HeadSpec, build_head
from mtbert.model.plan import SharingPlan, resolve_plan
from mtbert.model.pooling import build_pooler
from mtbert.model.sharing import BranchedEncoder


@dataclass
class TaskHeadSpec:
    """What the model needs to know about one task."""

    kind: str
    "classes, binary or regression."
    num_outputs: int
    "Logits per example (classes), else 1."
    pooler: str = "cls"
    "A name from pooling.POOLER_NAMES (cls, cls_raw, mean, max, mean_max, swap, stochastic, routing)."
    encoding: str = "single"
    "single (one sentence), cross ([CLS] a [SEP] b) or siamese (a and b encoded apart)."
    siamese_regression: str = "features"
    "Siamese regression: head on [u, v, |u-v|, u*v] (features), or scaled cosine (cosine)."
    label_range: list[float] | None = None
    "[low, high] of a regression score; scales the siamese cosine."
    head: HeadSpec = field(default_factory=HeadSpec)
    "The head's shape."
    pooler_options: dict | None = None
    "The pooler's settings, e.g. routing's {outputs, size, iterations}; None: its defaults."


@dataclass
class MultiTaskConfig:
    """Everything needed to rebuild the model's modules; stored with every exported model."""

    encoder: BertConfig
    tasks: dict[str, TaskHeadSpec]
    sharing: SharingPlan | str | dict = "shared"
    "The resolved sharing plan; a short string or a structured mapping is resolved against encoder and tasks."

    def __post_init__(self) -> None:
        if not isinstance(self.sharing, SharingPlan):
            self.sharing = resolve_plan(self.sharing, self.encoder.num_hidden_layers, list(self.tasks))
        if list(self.sharing.tasks) != list(self.tasks):
            raise ValueError(f"the sharing plan is for tasks {', '.join(self.sharing.tasks)}, the model has "
                             f"{', '.join(self.tasks)}")

    def to_dict(self) -> dict:
        return {"encoder": dataclasses.asdict(self.encoder), "sharing": self.sharing.to_dict(),
                "tasks": {name: dataclasses.asdict(spec) for name, spec in self.tasks.items()}}

    @classmethod
    def from_dict(cls, data: dict) -> MultiTaskConfig:
        tasks = {}
        for name, spec in data["tasks"].items():
            spec = dict(spec)
            spec["head"] = HeadSpec(**spec.get("head", {}))
            tasks[name] = TaskHeadSpec(**spec)
        sharing = data.get("sharing", "shared")  # a string in models saved before sharing plans
        if isinstance(sharing, dict):
            sharing = SharingPlan.from_dict(sharing)
        return cls(encoder=BertConfig(**data["encoder"]), tasks=tasks, sharing=sharing)


class Embedded(NamedTuple):
    """A batch as the task's branch's embeddings give it, before the first layer."""

    hidden: torch.Tensor
    "(B, T, H) output of the embeddings; (2B, T, H) for a siamese pair, first sentences first."
    attention_mask: torch.Tensor
    "(B, T) 1 for real tokens, 0 for padding; (2B, T) for a siamese pair."

    def perturbed(self, noise: torch.Tensor) -> Embedded:
        """The same batch with `noise` (shaped like hidden) added to the embeddings' output."""
        return self._replace(hidden=self.hidden + noise)


# Poolers that read the last layer at the [CLS] position only.
FIRST_TOKEN_POOLERS = ("cls", "cls_raw")


class MultiTaskModel(nn.Module):
    last_layer_cls_only: bool = False
    """Tasks pooled from [CLS] run the encoder's last layer for the [CLS] token only: the same vectors, less
    work. A plain attribute the caller sets (mtbert's recipes: speed.last_layer_cls_only)."""

    def __init__(self, config: MultiTaskConfig, encoder: BertModel | None = None):
        """`encoder` gives the initial encoder weights (copied into every branch, and consumed); default random."""
        super().__init__()
        self.config = config
        self.encoder = BranchedEncoder(config.encoder, config.sharing, source=encoder)
        hidden = config.encoder.hidden_size
        self.poolers = nn.ModuleDict()
        self.heads = nn.ModuleDict()
        for name, spec in config.tasks.items():
            pooler = build_pooler(spec.pooler, hidden, spec.pooler_options)
            if pooler is not None:
                self.poolers[name] = pooler
            if spec.encoding == "siamese" and spec.kind == "regression" and spec.siamese_regression == "cosine":
                continue  # the score is the scaled cosine: no head
            in_features = 4 * hidden if spec.encoding == "siamese" else hidden
            self.heads[name] = build_head(spec.head, in_features, spec.num_outputs)

    def encoder_for(self, task: str) -> BertModel:
        """The BertModel `task` runs through: its branch, whose parts other branches may share."""
        return self.encoder.branch(task)

    def sentence_vectors(self, task: str, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                         token_type_ids: torch.Tensor) -> torch.Tensor:
        """Encode with the task's branch and pool: (B, T) ids -> (B, H)."""
        out = self.encoder(task, input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids,
                           first_token_only=self._first_token_only(task))  # last_hidden_state (B, T, H) or (B, 1, H)
        return self._pool_output(task, out, attention_mask)

    def embed(self, task: str, batch: dict[str, torch.Tensor]) -> Embedded:
        """The task's branch's embeddings of a batch, the point from which `forward(embedded=...)` continues;
        a siamese pair's two sentences are stacked, (2B, T, H), first sentences first."""
        ids, mask, types = self._inputs(task, batch)
        return Embedded(self.encoder.embed(task, ids, types), mask)

    def pool(self, task: str, embedded: Embedded) -> torch.Tensor:
        """Run the task's branch from its embeddings' output and pool: (B, T, H) -> (B, H)."""
        out = self.encoder.encode(task, embedded.hidden, embedded.attention_mask, self._first_token_only(task))
        return self._pool_output(task, out, embedded.attention_mask)

    def _first_token_only(self, task: str) -> bool:
        return self.last_layer_cls_only and self.config.tasks[task].pooler in FIRST_TOKEN_POOLERS

    def _pool_output(self, task: str, out, attention_mask: torch.Tensor) -> torch.Tensor:
        if self.config.tasks[task].pooler == "cls":
            return out.pooler_output  # the branch's BertPooler
        return self.poolers[task](out.last_hidden_state, attention_mask)

    def _inputs(self, task: str, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """ids, mask and token types the branch runs on: (B, T) each, or (2B, T) for a siamese pair."""
        if self.config.tasks[task].encoding == "siamese" and "input_ids_b" in batch:
            return self._siamese_inputs(batch)
        return batch["input_ids"], batch["attention_mask"], batch["token_type_ids"]  # one sentence (or a cross pair)

    def forward(self, task: str, batch: dict[str, torch.Tensor] | None = None, *,
                embedded: Embedded | None = None, vectors: bool = False) -> torch.Tensor:
        """Logits (B, C) for classes, else one value per example (B,).

        embedded: continue from this output of `embed` (perhaps perturbed) instead of embedding `batch`.
        vectors: return the pooled sentence vectors instead, (B, H) ((2B, H) for a siamese pair), what
        contrastive objectives compare (through forward, so that a DDP wrapper sees the call).
        """
        spec = self.config.tasks[task]
        if embedded is None:
            pooled = self.sentence_vectors(task, *self._inputs(task, batch))  # (B, H), or (2B, H) for a siamese pair
        else:
            pooled = self.pool(task, embedded)
        if vectors:
            return pooled
        if spec.encoding != "siamese":
            return self._squeeze(spec, self.heads[task](pooled))
        u, v = _halves(pooled)  # (B, H) each
        if spec.kind == "regression" and spec.siamese_regression == "cosine":
            low, high = spec.label_range
            return low + (high - low) * F.cosine_similarity(u, v, dim=-1)
        features = torch.cat([u, v, (u - v).abs(), u * v], dim=-1)  # (B, 4H)
        return self._squeeze(spec, self.heads[task](features))

    def _siamese_vectors(self, task: str, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """Both sentences of each pair through the encoder in one pass: (2B, T) in, two (B, H) out."""
        return _halves(self.forward(task, batch, vectors=True))

    def _siamese_inputs(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """A pair batch's two sentences stacked, padded to one length: ids, mask, token types, each (2B, T)."""
        a, b = batch["input_ids"], batch["input_ids_b"]
        length = max(a.shape[1], b.shape[1])

        def stack(key: str, value: int = 0) -> torch.Tensor:
            x, y = batch[key], batch[f"{key}_b"]
            return torch.cat([F.pad(x, (0, length - x.shape[1]), value=value),
                              F.pad(y, (0, length - y.shape[1]), value=value)])  # (2B, T)

        return stack("input_ids", self.config.encoder.pad_token_id), stack("attention_mask"), stack("token_type_ids")

    @staticmethod
    def _squeeze(spec: TaskHeadSpec, out: torch.Tensor) -> torch.Tensor:
        return out if spec.kind == "classes" else out.squeeze(-1)


def _halves(stacked: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """A siamese pair's two halves of (2B, ...): first sentences, second sentences. Split by shape rather than
    chunk(2), whose rounding makes torch.export fix the batch size of an exported graph."""
    first, second = stacked.unflatten(0, (2, -1)).unbind(0)  # (B, ...) each
    return first, second
