"""Task heads: the pooled vector -> logits or a score."""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

ACTIVATIONS = {"gelu": nn.GELU, "relu": nn.ReLU, "tanh": nn.Tanh}
# The modules after each hidden Linear of an mlp, by style. The two fixed stacks are the ones the
# head-design studies compare; act_dropout is the original head, with the configured activation.
HEAD_STYLES = ("act_dropout", "ln_dropout_relu", "gelu_dropout")


@dataclass
class HeadSpec:
    """The shape of one head."""

    type: str = "linear"
    "linear, or mlp (hidden layers, then the output layer)."
    layers: int = 1
    "Hidden layers of an mlp."
    hidden_size: int | None = None
    "Width of the mlp's hidden layers; None means the input width."
    activation: str = "gelu"
    "Activation between mlp layers (style act_dropout; the other styles fix their own)."
    dropout: float = 0.1
    "Dropout on the input and after each hidden layer."
    style: str = "act_dropout"
    "Each mlp hidden layer: act_dropout (Linear, activation, Dropout), ln_dropout_relu or gelu_dropout."


def build_head(spec: HeadSpec, in_features: int, out_features: int) -> nn.Sequential:
    if spec.type not in ("linear", "mlp"):
        raise ValueError(f"unknown head type {spec.type!r}; known: linear, mlp")
    if spec.activation not in ACTIVATIONS:
        raise ValueError(f"unknown activation {spec.activation!r}; known: {', '.join(ACTIVATIONS)}")
    if spec.style not in HEAD_STYLES:
        raise ValueError(f"unknown head style {spec.style!r}; known: {', '.join(HEAD_STYLES)}")
    layers: list[nn.Module] = [nn.Dropout(spec.dropout)]
    width = in_features
    if spec.type == "mlp":
        hidden = spec.hidden_size or in_features
        for _ in range(spec.layers):
            layers += [nn.Linear(width, hidden), *_after_linear(spec, hidden)]
            width = hidden
    layers.append(nn.Linear(width, out_features))
    head = nn.Sequential(*layers)
    for module in head:
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, std=0.02)
            nn.init.zeros_(module.bias)
    return head


def _after_linear(spec: HeadSpec, width: int) -> list[nn.Module]:
    """What follows each hidden Linear of an mlp head, in order."""
    if spec.style == "ln_dropout_relu":
        return [nn.LayerNorm(width), nn.Dropout(spec.dropout), nn.ReLU()]
    if spec.style == "gelu_dropout":
        return [nn.GELU(), nn.Dropout(spec.dropout)]
    return [ACTIVATIONS[spec.activation](), nn.Dropout(spec.dropout)]
