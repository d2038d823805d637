"""A BERT encoder written out by hand, read top to bottom: config, embeddings, packing, attention,
feed-forward, layer, encoder, pooler, model.

Every parameter name equals the key Hugging Face uses in a BERT checkpoint, so a converted
Hugging Face state dict loads with ``load_state_dict`` and no renaming table. This module does no
file I/O; reading and writing weights lives in ``mtbert.exported``.
"""

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, fields
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

# --------------------------------------------------------------------------------------
# Configuration


def _gelu_tanh(x: torch.Tensor) -> torch.Tensor:
    return F.gelu(x, approximate="tanh")


# Hugging Face's names for the activations BERT checkpoints use; "gelu" is the exact erf form.
ACTIVATIONS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "gelu": F.gelu,
    "gelu_new": _gelu_tanh,
    "gelu_pytorch_tanh": _gelu_tanh,
    "relu": F.relu,
}


@dataclass
class BertConfig:
    """Shape and regularisation of the encoder; field names follow Hugging Face's config.json."""

    vocab_size: int = 30522
    """Number of rows in the word embedding table."""
    hidden_size: int = 768
    """Width H of every token vector between layers."""
    num_hidden_layers: int = 12
    """Number of stacked transformer layers."""
    num_attention_heads: int = 12
    """Heads per attention block; must divide hidden_size."""
    intermediate_size: int = 3072
    """Width of the feed-forward block inside each layer."""
    hidden_act: str = "gelu"
    """Feed-forward activation: one of ACTIVATIONS."""
    hidden_dropout_prob: float = 0.1
    """Dropout on embeddings and on each sub-block's output before the residual add."""
    attention_probs_dropout_prob: float = 0.1
    """Dropout on the attention probabilities."""
    max_position_embeddings: int = 512
    """Longest sequence the learned position table covers."""
    type_vocab_size: int = 2
    """Number of segment (token type) ids."""
    layer_norm_eps: float = 1e-12
    """Epsilon inside every LayerNorm."""
    pad_token_id: int = 0
    """Token id of padding; its word embedding row starts at zero and receives no gradient."""
    initializer_range: float = 0.02
    """Standard deviation of the normal init of Linear and Embedding weights."""

    def __post_init__(self) -> None:
        if self.hidden_size % self.num_attention_heads != 0:
            raise ValueError(
                f"hidden_size ({self.hidden_size}) must be divisible by "
                f"num_attention_heads ({self.num_attention_heads})"
            )
        if self.hidden_act not in ACTIVATIONS:
            raise ValueError(f"hidden_act {self.hidden_act!r} is not supported; use one of {sorted(ACTIVATIONS)}")
        if not 0 <= self.pad_token_id < self.vocab_size:
            raise ValueError(
                f"pad_token_id ({self.pad_token_id}) must be a row of the vocabulary (vocab_size {self.vocab_size})"
            )

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    @classmethod
    def from_dict(cls, config: dict[str, Any]) -> "BertConfig":
        """Build from a Hugging Face config.json dict; keys this encoder does not use are ignored."""
        # Only absolute positions are implemented; silently ignoring another scheme would load a
        # checkpoint whose outputs are wrong.
        position_type = config.get("position_embedding_type", "absolute")
        if position_type != "absolute":
            raise ValueError(f"position_embedding_type {position_type!r} is not supported; only 'absolute' is")
        values = {}
        for field in fields(cls):
            if field.name in config:
                values[field.name] = _checked_value(field.name, config[field.name])
        return cls(**values)

    def to_dict(self) -> dict[str, Any]:
        """A dict that Hugging Face accepts as a BERT config.json."""
        return {"model_type": "bert", "architectures": ["BertModel"], **asdict(self)}


def _checked_value(key: str, value: Any) -> Any:
    expected = type(getattr(BertConfig, key))
    if expected is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    # bool is a subclass of int, but `"hidden_size": true` is a broken config, not a width of 1.
    if isinstance(value, bool) or not isinstance(value, expected):
        # ValueError, not TypeError: a bad config file is one kind of bad value for callers.
        raise ValueError(f"config key {key!r} must be {expected.__name__}, got {value!r}")
    return value


# --------------------------------------------------------------------------------------
# Dropout
#
# On a CPU that is not Intel's (its MKL path is Intel-only), torch's dropout draws a uniform random number
# per element from its mt19937 generator, one element at a time, and drawing is most of what dropout
# costs: a tenth of a MiniLM training step. A keep-or-drop decision needs 16 random bits to be exact to
# 1/65536, so ``dropout`` takes two decisions from each 32-bit draw: fewer draws, a different random stream than
# ``F.dropout`` (same seed, other masks), the same distribution to 1/65536. Elsewhere (CUDA draws in
# parallel with Philox) and when ``cheap_masks`` is off, it is ``F.dropout``.

_LANES = 65536  # values of one 16-bit lane


def keep_mask(shape: torch.Size | tuple[int, ...], p: float, device: torch.device) -> torch.Tensor:
    """Boolean mask of `shape`, each element False (dropped) with probability round(p * 65536) / 65536."""
    count = math.prod(shape)
    words = torch.randint(-2**31, 2**31 - 1, ((count + 1) // 2,), dtype=torch.int32, device=device)  # (⌈n/2⌉,)
    lanes = words.view(torch.int16)[:count]  # (n,): 16 random bits each, uniform over [-32768, 32767]
    return (lanes >= round(p * _LANES) - _LANES // 2).view(shape)


class _ScaleKept(torch.autograd.Function):
    """x * mask * scale, one pass forward and backward, saving the 1-byte mask (as F.dropout does)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, mask: torch.Tensor, scale: float) -> torch.Tensor:
        ctx.save_for_backward(mask)
        ctx.scale = scale
        return torch.ops.aten.native_dropout_backward(x, mask, scale)  # the kernel computes x * mask * scale

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None, None]:
        (mask,) = ctx.saved_tensors
        return torch.ops.aten.native_dropout_backward(grad, mask, ctx.scale), None, None


def dropout(x: torch.Tensor, p: float, training: bool, cheap_masks: bool = False) -> torch.Tensor:
    """F.dropout(x, p, training), with masks of 16 random bits per element on the CPU when cheap_masks."""
    if not training or p == 0:
        return x
    dropped = round(p * _LANES)
    if not cheap_masks or x.device.type != "cpu" or dropped in (0, _LANES) or not x.is_floating_point():
        return F.dropout(x, p, True)
    return _ScaleKept.apply(x, keep_mask(x.shape, p, x.device), _LANES / (_LANES - dropped))


class BertDropout(nn.Dropout):
    """nn.Dropout through ``dropout``; no weights, so checkpoints are those of nn.Dropout."""

    cheap_masks: bool = False
    """CPU masks from 16 random bits per element (see "Dropout" above); a plain switch (speed.cheap_dropout)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return dropout(x, self.p, self.training, self.cheap_masks)


# --------------------------------------------------------------------------------------
# Embeddings


class BertEmbeddings(nn.Module):
    """Word + learned position + token type embeddings, then LayerNorm and dropout."""

    def __init__(self, config: BertConfig) -> None:
        super().__init__()
        self.word_embeddings = nn.Embedding(config.vocab_size, config.hidden_size, padding_idx=config.pad_token_id)
        self.position_embeddings = nn.Embedding(config.max_position_embeddings, config.hidden_size)
        self.token_type_embeddings = nn.Embedding(config.type_vocab_size, config.hidden_size)
        self.LayerNorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.dropout = BertDropout(config.hidden_dropout_prob)

    def forward(self, input_ids: torch.Tensor, token_type_ids: torch.Tensor | None = None) -> torch.Tensor:
        seq_len = input_ids.shape[1]
        max_len = self.position_embeddings.num_embeddings
        if seq_len > max_len:
            raise ValueError(f"sequence length {seq_len} exceeds max_position_embeddings ({max_len})")
        if token_type_ids is None:
            token_type_ids = torch.zeros_like(input_ids)
        positions = torch.arange(seq_len, device=input_ids.device)  # (T,)
        hidden = (
            self.word_embeddings(input_ids)  # (B, T, H)
            + self.token_type_embeddings(token_type_ids)  # (B, T, H)
            + self.position_embeddings(positions)  # (T, H), broadcast over B
        )
        return self.dropout(self.LayerNorm(hidden))


# --------------------------------------------------------------------------------------
# Masks and packing
#
# A layer takes its hidden states in one of two layouts, told apart by the mask that comes with them:
#   padded  hidden (B, T, H) with the boolean mask from ``padding_mask`` (B, 1, 1, T), or None;
#   packed  hidden (N, H), the N real tokens of the batch only, with the ``PackedMask`` from ``pack``.
# Everything in a layer but attention works token by token, so on packed input the projections, the
# feed-forward block, LayerNorm and dropout do no work on padding: at fine-tuning lengths they are almost
# all of the FLOPs, and batches padded to their longest example are often mostly padding. Attention mixes
# the tokens of a sequence, so it scatters its queries, keys and values back to (B, T, H), runs the usual
# masked attention and keeps the real rows. A caller driving the layers itself packs once around its loop:
#
#     hidden = model.embed(input_ids, token_type_ids)      # (B, T, H)
#     mask = model.attention_mask_for(attention_mask)      # (B, 1, 1, T)
#     hidden, mask = model.pack(hidden, mask)              # (N, H), PackedMask
#     for layer in model.encoder.layer:                    # any sequence of layers
#         hidden = layer(hidden, mask)                     # (N, H)
#     hidden = model.unpack(hidden, mask)                  # (B, T, H), zeros at padding
#
# A layer called with first_token_only=True returns only each sequence's first ([CLS]) token, (B, 1, H),
# in either layout: keys and values still come from every token, but the query, the attention output and
# the feed-forward block run on B rows instead of all tokens. A last layer read only through [CLS] (the
# cls poolers) gives the same [CLS] vector for about 5/6 less of that layer's work.


def padding_mask(attention_mask: torch.Tensor | None) -> torch.Tensor | None:
    """Turn a (B, T) 1/0 mask into the boolean (B, 1, 1, T) mask attention takes, True = attend.

    None stays None: every token is real, and attention without a mask is cheaper.
    """
    if attention_mask is None:
        return None
    return (attention_mask != 0)[:, None, None, :]  # (B, 1, 1, T)


class PackedMask(NamedTuple):
    """What the layers need to run on packed tokens: where each real token sits in the padded batch."""

    positions: torch.Tensor
    """(N,) flat position b * T + t of each real token in the padded (B, T) batch, in increasing order."""
    attention: torch.Tensor
    """(B, 1, 1, T) boolean mask, True = real token, for the attention inside each layer."""
    starts: torch.Tensor
    """(B,) packed row of each sequence's first real token."""

    def to_padded(self, packed: torch.Tensor) -> torch.Tensor:
        """(N, W) -> (B, T, W), zeros at padding."""
        batch, seq_len = self.attention.shape[0], self.attention.shape[-1]
        padded = packed.new_zeros(batch * seq_len, packed.shape[-1])  # (B*T, W)
        return padded.index_copy_(0, self.positions, packed).view(batch, seq_len, -1)  # (B, T, W), in place: one copy

    def to_packed(self, padded: torch.Tensor) -> torch.Tensor:
        """(B, T, W) -> (N, W), the real rows only."""
        return padded.reshape(-1, padded.shape[-1]).index_select(0, self.positions)  # (N, W)


def pack(hidden: torch.Tensor, mask: torch.Tensor | None) -> tuple[torch.Tensor, PackedMask]:
    """Padded hidden (B, T, H) and its ``padding_mask`` (or None: no padding) -> packed (N, H), PackedMask.

    Finding the real tokens reads the mask, which waits for the device on a GPU (one sync per call).
    """
    batch, seq_len, width = hidden.shape
    if mask is None:
        mask = torch.ones(batch, 1, 1, seq_len, dtype=torch.bool, device=hidden.device)  # (B, 1, 1, T)
    positions = mask.reshape(batch * seq_len).nonzero().squeeze(1)  # (N,)
    lengths = mask.reshape(batch, seq_len).sum(1)  # (B,)
    packed = PackedMask(positions, mask, lengths.cumsum(0) - lengths)
    return packed.to_packed(hidden), packed  # (N, H)


def unpack(hidden: torch.Tensor, mask: PackedMask) -> torch.Tensor:
    """Packed hidden (N, H) -> padded (B, T, H) with zeros at padding (poolers ignore padding anyway)."""
    return mask.to_padded(hidden)


def first_tokens(hidden: torch.Tensor, mask: torch.Tensor | PackedMask | None) -> torch.Tensor:
    """Each sequence's first token, (B, 1, H), from padded (B, T, H) or packed (N, H) hidden states."""
    if isinstance(mask, PackedMask):
        return hidden.index_select(0, mask.starts).unsqueeze(1)  # (B, 1, H)
    return hidden[:, :1]  # (B, 1, H)


# --------------------------------------------------------------------------------------
# Attention


class BertSelfAttention(nn.Module):
    """Multi-head scaled dot-product attention over the whole (unmasked) sequence.

    The query, key and value projections are three nn.Linear under Hugging Face's names, as checkpoints have
    them and adapters (LoRA) wrap them; computing them is one matrix product with the three weights stacked
    when ``fused_qkv`` allows."""

    fused_qkv: bool = False
    """One (H -> 3H) product with the stacked weights instead of three (H -> H) ones, and on packed tokens one
    scatter back instead of three; the same numbers. Only while all three are plain nn.Linear (an adapter's
    wrapper runs its own forward). A plain switch (speed.fused_qkv)."""

    def __init__(self, config: BertConfig) -> None:
        super().__init__()
        self.num_heads = config.num_attention_heads
        self.head_dim = config.head_dim
        self.query = nn.Linear(config.hidden_size, config.hidden_size)
        self.key = nn.Linear(config.hidden_size, config.hidden_size)
        self.value = nn.Linear(config.hidden_size, config.hidden_size)
        self.dropout = BertDropout(config.attention_probs_dropout_prob)  # on the attention probabilities

    def _split_heads(self, x: torch.Tensor) -> torch.Tensor:
        batch, seq_len, _ = x.shape
        x = x.view(batch, seq_len, self.num_heads, self.head_dim)  # (B, T, nh, D)
        return x.transpose(1, 2)  # (B, nh, T, D)

    def _project(self, hidden: torch.Tensor, mask: torch.Tensor | PackedMask | None,
                 *linears: nn.Module) -> list[torch.Tensor]:
        """hidden (B, T, H) or packed (N, H) through each of `linears` -> one padded (B, T, H) each."""
        packed = isinstance(mask, PackedMask)
        if self.fused_qkv and len(linears) > 1 and all(type(x) is nn.Linear and x.bias is not None for x in linears):
            # Stacked per call (a copy of 3 H x H floats, ~1% of the product's time): always the current weights.
            stacked = F.linear(hidden, torch.cat([x.weight for x in linears]),
                               torch.cat([x.bias for x in linears]))  # (B, T, kH) or (N, kH)
            return list((mask.to_padded(stacked) if packed else stacked).chunk(len(linears), dim=-1))  # k x (B, T, H)
        outputs = [linear(hidden) for linear in linears]  # (B, T, H) or (N, H) each
        return [mask.to_padded(x) for x in outputs] if packed else outputs  # (B, T, H) each

    def _attend(self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                mask: torch.Tensor | None) -> torch.Tensor:
        """(B, nh, Tq, D) queries, (B, nh, T, D) keys and values, (B, 1, 1, T) mask or None -> (B, nh, Tq, D)."""
        scale = 1.0 / math.sqrt(self.head_dim)
        p = self.dropout.p if self.training else 0.0
        if p > 0 and self.dropout.cheap_masks and query.device.type == "cpu":
            # torch's fused CPU attention cannot drop, so SDPA would take its math path with torch's masks:
            # the same math here, with dropout's cheaper masks.
            scores = (query * scale) @ key.transpose(-2, -1)  # (B, nh, Tq, T)
            if mask is not None:
                scores = scores.masked_fill(~mask, float("-inf"))  # every row keeps its real keys ([CLS] at least)
            return self.dropout(scores.softmax(-1)) @ value  # (B, nh, Tq, T) @ (B, nh, T, D) -> (B, nh, Tq, D)
        return F.scaled_dot_product_attention(query, key, value, attn_mask=mask, dropout_p=p, scale=scale)

    def forward(self, hidden: torch.Tensor, mask: torch.Tensor | PackedMask | None,
                first_token_only: bool = False) -> torch.Tensor:
        """Padded (B, T, H) with (B, 1, 1, T) or None, or packed (N, H) with a PackedMask -> same layout;
        with first_token_only, the first token's result only: (B, 1, H)."""
        packed = isinstance(mask, PackedMask)
        if first_token_only:
            key, value = self._project(hidden, mask, self.key, self.value)  # (B, T, H) each
            query = self.query(first_tokens(hidden, mask))  # (B, 1, H)
        else:
            query, key, value = self._project(hidden, mask, self.query, self.key, self.value)  # (B, T, H) each
        batch, query_len, width = query.shape
        context = self._attend(self._split_heads(query),  # (B, nh, Tq, D), Tq = T or 1
                               self._split_heads(key),  # (B, nh, T, D)
                               self._split_heads(value),  # (B, nh, T, D)
                               mask.attention if packed else mask)  # (B, nh, Tq, D)
        context = context.transpose(1, 2).reshape(batch, query_len, width)  # (B, Tq, nh, D) -> (B, Tq, H)
        return mask.to_packed(context) if packed and not first_token_only else context  # (N, H) or (B, Tq, H)


class BertSelfOutput(nn.Module):
    """Projection of the attention result, dropout, then residual add and LayerNorm (post-LN)."""

    def __init__(self, config: BertConfig) -> None:
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.hidden_size)
        self.LayerNorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.dropout = BertDropout(config.hidden_dropout_prob)

    def forward(self, context: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        return self.LayerNorm(self.dropout(self.dense(context)) + residual)


class BertAttention(nn.Module):
    """Self-attention and its output block; the nesting mirrors the checkpoint key names."""

    def __init__(self, config: BertConfig) -> None:
        super().__init__()
        self.self = BertSelfAttention(config)
        self.output = BertSelfOutput(config)

    def forward(self, hidden: torch.Tensor, mask: torch.Tensor | PackedMask | None,
                first_token_only: bool = False) -> torch.Tensor:
        residual = first_tokens(hidden, mask) if first_token_only else hidden
        return self.output(self.self(hidden, mask, first_token_only), residual)


# --------------------------------------------------------------------------------------
# Feed-forward


class BertIntermediate(nn.Module):
    """Widening projection H -> intermediate_size with the configured activation."""

    def __init__(self, config: BertConfig) -> None:
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.intermediate_size)
        self.activation = ACTIVATIONS[config.hidden_act]

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.activation(self.dense(hidden))  # (B, T, I)


class BertOutput(nn.Module):
    """Narrowing projection back to H, dropout, then residual add and LayerNorm (post-LN).

    Named as in Hugging Face's BERT; the model's return value is ``BertModelOutput``.
    """

    def __init__(self, config: BertConfig) -> None:
        super().__init__()
        self.dense = nn.Linear(config.intermediate_size, config.hidden_size)
        self.LayerNorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.dropout = BertDropout(config.hidden_dropout_prob)

    def forward(self, widened: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        return self.LayerNorm(self.dropout(self.dense(widened)) + residual)  # (B, T, H)


# --------------------------------------------------------------------------------------
# Layers and encoder


class BertLayer(nn.Module):
    """One transformer layer: attention block then feed-forward block."""

    parallel: Callable[..., torch.Tensor] | None = None
    """An extension point: a callable (hidden, mask, first_token_only) run on the layer's input whose result,
    shaped like the layer's output, joins the residual sum inside the last LayerNorm (PALs, model/adapters.py).
    None: the plain layer."""

    def __init__(self, config: BertConfig) -> None:
        super().__init__()
        self.attention = BertAttention(config)
        self.intermediate = BertIntermediate(config)
        self.output = BertOutput(config)

    def forward(self, hidden: torch.Tensor, mask: torch.Tensor | PackedMask | None,
                first_token_only: bool = False) -> torch.Tensor:
        """hidden (B, T, H) with mask from ``padding_mask`` (B, 1, 1, T) or None -> (B, T, H);
        or packed hidden (N, H) with the PackedMask from ``pack`` -> (N, H);
        with first_token_only, either way -> (B, 1, H), each sequence's first token only."""
        attended = self.attention(hidden, mask, first_token_only)
        residual = attended if self.parallel is None else attended + self.parallel(hidden, mask, first_token_only)
        return self.output(self.intermediate(attended), residual)


class BertEncoder(nn.Module):
    """The stack of layers; callers that share a prefix of layers can call ``layer[i]`` alone."""

    def __init__(self, config: BertConfig) -> None:
        super().__init__()
        self.layer = nn.ModuleList(BertLayer(config) for _ in range(config.num_hidden_layers))

    def forward(self, hidden: torch.Tensor, mask: torch.Tensor | PackedMask | None,
                first_token_only: bool = False) -> torch.Tensor:
        """Padded (B, T, H) or packed (N, H) hidden states, with their mask -> the same layout, or (B, 1, H)
        with first_token_only (the last layer computes the first token only)."""
        last = len(self.layer) - 1
        for index, layer in enumerate(self.layer):
            hidden = layer(hidden, mask, first_token_only and index == last)
        return hidden


class BertPooler(nn.Module):
    """Dense + tanh on the first ([CLS]) token, as in BERT's next-sentence pretraining."""

    def __init__(self, config: BertConfig) -> None:
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.hidden_size)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.dense(hidden[:, 0]))  # (B, H)


# --------------------------------------------------------------------------------------
# Model


class BertModelOutput(NamedTuple):
    last_hidden_state: torch.Tensor
    """(B, T, H) output of the last layer; positions where attention_mask is 0 are meaningless. (B, 1, H),
    the first token only, when forward was called with first_token_only."""
    pooler_output: torch.Tensor | None
    """(B, H) pooled first token, or None for a model built without a pooler."""


class BertModel(nn.Module):
    """Embeddings, encoder and optional pooler.

    ``forward`` is ``embed`` -> ``encode`` (``attention_mask_for`` -> [``pack``] -> ``encoder`` ->
    [``unpack``] -> ``pooler``); each step is public so a caller can run the embeddings once and any subset of
    ``encoder.layer`` after it, padded or packed (see "Masks and packing" above).
    """

    unpad: bool = False
    """forward packs the real tokens before the layers: the same outputs at real positions (to float
    rounding), zeros at padding, less work when batches hold padding. A plain attribute the caller sets."""

    def __init__(self, config: BertConfig, add_pooling_layer: bool = True) -> None:
        super().__init__()
        self.config = config
        self.embeddings = BertEmbeddings(config)
        self.encoder = BertEncoder(config)
        self.pooler = BertPooler(config) if add_pooling_layer else None
        self.apply(self._init_weights)

    def _init_weights(self, module: nn.Module) -> None:
        std = self.config.initializer_range
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, mean=0.0, std=std)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=std)
            if module.padding_idx is not None:
                with torch.no_grad():
                    module.weight[module.padding_idx].zero_()
        elif isinstance(module, nn.LayerNorm):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)

    @staticmethod
    def attention_mask_for(attention_mask: torch.Tensor | None) -> torch.Tensor | None:
        """(B, T) 1/0 mask -> boolean (B, 1, 1, T) mask for the layers; None stays None."""
        return padding_mask(attention_mask)

    def embed(self, input_ids: torch.Tensor, token_type_ids: torch.Tensor | None = None) -> torch.Tensor:
        """(B, T) token ids -> (B, T, H) input of the first layer."""
        return self.embeddings(input_ids, token_type_ids)

    @staticmethod
    def pack(hidden: torch.Tensor, mask: torch.Tensor | None) -> tuple[torch.Tensor, PackedMask]:
        """(B, T, H) and the mask from ``attention_mask_for`` -> packed (N, H) and the layers' PackedMask."""
        return pack(hidden, mask)

    @staticmethod
    def unpack(hidden: torch.Tensor, mask: PackedMask) -> torch.Tensor:
        """Packed (N, H) -> (B, T, H), zeros at padding."""
        return unpack(hidden, mask)

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        first_token_only: bool = False,
    ) -> BertModelOutput:
        """first_token_only: the last layer computes each sequence's first token only (what the pooler and
        any [CLS] reader use): last_hidden_state is then (B, 1, H)."""
        hidden = self.embed(input_ids, token_type_ids)  # (B, T, H)
        return self.encode(hidden, attention_mask, first_token_only)

    def encode(
        self,
        hidden: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        first_token_only: bool = False,
    ) -> BertModelOutput:
        """forward from the embeddings' output (B, T, H) on: the layers and the pooler. What a caller that
        changes the embedded input (an adversarial perturbation, SMART) runs after ``embed``."""
        mask = self.attention_mask_for(attention_mask)  # (B, 1, 1, T) or None
        if self.unpad and mask is not None:
            hidden, mask = self.pack(hidden, mask)  # (N, H), PackedMask
        hidden = self.encoder(hidden, mask, first_token_only)  # (B, T, H), (N, H), or (B, 1, H)
        if isinstance(mask, PackedMask) and not first_token_only:
            hidden = self.unpack(hidden, mask)  # (B, T, H)
        pooled = self.pooler(hidden) if self.pooler is not None else None  # (B, H)
        return BertModelOutput(last_hidden_state=hidden, pooler_output=pooled)
