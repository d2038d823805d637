"""Hard parameter sharing, the module: every copy of every encoder part a sharing plan asks for
(mtbert/model/plan.py reads and resolves plans).

BERT's pooler (dense + tanh on [CLS], what the ``cls`` pooler uses) belongs to the top of a task's stack:
there is one pooler per copy of a top layer (the relational group's, for a task that has relational
layers), frozen exactly when that top layer is.

Each copy holds its parts under their Hugging Face names, so a parameter reads
``copies.quora+sts.encoder.layer.5.attention.self.query.weight``: drop ``copies.<owner>.`` and it is a
BertModel key. A task's *branch* is the BertModel assembled from the copies it uses. Branches own no
weights, and a task's forward is its branch's own ``BertModel.forward``, so whatever BertModel does
with masks and inputs, every branch does too. A plan's adapters (mtbert/model/adapters.py) sit on the copies'
layers; a task's forward first makes its own adapter the active one.
"""

from __future__ import annotations

import copy
import dataclasses
from itertools import chain

import torch
from torch import nn

from mtbert.model import adapters
from mtbert.model.bert import BertConfig, BertLayer, BertModel, BertModelOutput
from mtbert.model.plan import BranchPath, SharingPlan


class _Copy(nn.Module):
    """The parts of a BertModel one owner holds, under their Hugging Face names.

    `encoder.layer` is keyed by layer index (a copy may hold layers 4 and 5 only); `embeddings` and
    `pooler` are attached when the owner holds them.
    """

    def __init__(self) -> None:
        super().__init__()
        # Slots in BertModel's order (embeddings, encoder, pooler), so parameters iterate in that order.
        self.register_module("embeddings", None)
        self.encoder = nn.Module()
        self.encoder.layer = nn.ModuleDict()
        self.register_module("pooler", None)


class BranchedEncoder(nn.Module):
    """Every copy of every encoder part the plan asks for; ``forward(task, ...)`` runs the task's branch."""

    def __init__(self, config: BertConfig, plan: SharingPlan, source: BertModel | None = None) -> None:
        """`source` gives the initial weights (pretrained or random): the first owner of each part takes the
        source's module itself, every further owner a copy, so all branches start from the same weights."""
        super().__init__()
        if len(plan.layers) != config.num_hidden_layers:
            raise ValueError(f"the plan has {len(plan.layers)} layers, the encoder {config.num_hidden_layers}")
        source = source if source is not None else BertModel(config)
        if source.pooler is None:
            raise ValueError("the source encoder needs its pooler")
        self.config, self.plan = config, plan
        self.copies = nn.ModuleDict()
        placed: set[int] = set()

        def place(module: nn.Module) -> nn.Module:
            if id(module) in placed:
                return copy.deepcopy(module)
            placed.add(id(module))
            return module

        paths = [plan.path(task) for task in plan.tasks]
        for owner in _unique(p.embeddings for p in paths):
            self._copy(owner).embeddings = place(source.embeddings)
        for i in range(config.num_hidden_layers):
            for owner in _unique(p.layers[i] for p in paths):
                self._copy(owner).encoder.layer[str(i)] = place(source.encoder.layer[i])
        for extra in plan.relational:
            for j in range(extra.layers):
                if extra.init == "copy_top":
                    layer = copy.deepcopy(source.encoder.layer[config.num_hidden_layers - 1])
                else:
                    layer = BertLayer(config)
                    layer.apply(source._init_weights)  # BertModel's own initialisation
                self._copy(extra.owner).encoder.layer[str(config.num_hidden_layers + j)] = layer
        for owner in _unique(p.pooler for p in paths):
            self._copy(owner).pooler = place(source.pooler)
        if "frozen" in self.copies:
            self.copies["frozen"].requires_grad_(False)
        adapters.attach(self, plan, config)  # LoRA or PALs per task group, after the copies hold their weights
        # Branch views, built on first use; a plain dict, so they are not submodules and every
        # parameter is registered exactly once, under copies.
        self._branches: dict[BranchPath, BertModel] = {}
        self._unpad = False

    @property
    def unpad(self) -> bool:
        """Every branch packs the real tokens before its layers (BertModel.unpad); a plain switch."""
        return self._unpad

    @unpad.setter
    def unpad(self, value: bool) -> None:
        self._unpad = bool(value)
        for view in self._branches.values():
            view.unpad = self._unpad

    def layers(self) -> list[BertLayer]:
        """Every encoder layer of every copy (relational layers included), each once."""
        return [layer for part in self.copies.values() for layer in part.encoder.layer.values()]

    def _copy(self, owner: str) -> _Copy:
        if owner not in self.copies:
            self.copies[owner] = _Copy()
        return self.copies[owner]

    def branch(self, task: str) -> BertModel:
        """The BertModel `task` runs through; its modules are this encoder's copies, shared with other branches."""
        path = self.plan.path(task)
        view = self._branches.get(path)
        if view is None:
            view = self._branches[path] = self._assemble(path)
        return view

    def _assemble(self, path: BranchPath) -> BertModel:
        config = dataclasses.replace(self.config, num_hidden_layers=len(path.layers))
        with torch.device("meta"):  # the skeleton's own weights are replaced below: allocate none
            view = BertModel(config)
        view.embeddings = self.copies[path.embeddings].embeddings
        view.encoder.layer = nn.ModuleList(self.copies[owner].encoder.layer[str(i)]
                                           for i, owner in enumerate(path.layers))
        view.pooler = self.copies[path.pooler].pooler
        view.unpad = self._unpad
        left = [name for name, t in chain(view.named_parameters(), view.named_buffers()) if t.is_meta]
        if left:
            raise RuntimeError(f"BertModel has parts the sharing plan does not place: {', '.join(left[:5])}")
        return view.train(self.training)

    def forward(self, task: str, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                token_type_ids: torch.Tensor | None = None, first_token_only: bool = False) -> BertModelOutput:
        """The task's branch; first_token_only as in BertModel.forward (last_hidden_state (B, 1, H))."""
        return self.encode(task, self.embed(task, input_ids, token_type_ids), attention_mask, first_token_only)

    def embed(self, task: str, input_ids: torch.Tensor, token_type_ids: torch.Tensor | None = None) -> torch.Tensor:
        """The task's branch's embeddings: (B, T) ids -> (B, T, H) input of its first layer."""
        return self._view(task).embed(input_ids, token_type_ids)

    def encode(self, task: str, hidden: torch.Tensor, attention_mask: torch.Tensor | None = None,
               first_token_only: bool = False) -> BertModelOutput:
        """The task's branch from its embeddings' output (B, T, H) on (BertModel.encode)."""
        return self._view(task).encode(hidden, attention_mask, first_token_only)

    def _view(self, task: str) -> BertModel:
        adapters.activate(self, self.plan, task)
        view = self.branch(task)
        if view.training != self.training:
            view.train(self.training)
        return view

    def branch_names(self) -> dict[str, tuple[str, ...]]:
        """Branch name (its tasks joined by '+') -> its tasks."""
        return {"+".join(tasks): tasks for tasks in self.plan.branches().values()}


def _unique(items) -> list:
    return list(dict.fromkeys(items))


def upgrade_unbranched_state_dict(tensors: dict[str, torch.Tensor], plan: SharingPlan,
                                  prefix: str = "encoder.") -> dict[str, torch.Tensor]:
    """Keys of a model saved before sharing plans (one plain BertModel under `prefix`) -> the copies layout.

    Only for plans with one copy of every part (shared or frozen), the only ones such models had.
    """
    owners = {plan.embeddings.mode, *(p.mode for p in plan.layers)}
    if len(owners) != 1 or "individual" in owners:
        raise ValueError("only a plan with one copy of every part can read an unbranched checkpoint")
    (owner,) = owners
    upgraded = {}
    for key, tensor in tensors.items():
        if key.startswith(prefix) and not key.startswith(prefix + "copies."):
            key = f"{prefix}copies.{owner}.{key[len(prefix):]}"
        upgraded[key] = tensor
    return upgraded
