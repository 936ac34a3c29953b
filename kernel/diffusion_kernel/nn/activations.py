"""Activations by config name, and the transformer feed-forward layer (GELU / GEGLU)."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from ..errors import ConfigError

_ACTIVATIONS = {"swish": nn.SiLU, "silu": nn.SiLU, "mish": nn.Mish, "gelu": nn.GELU,
                "relu": nn.ReLU}


def get_activation(name: str) -> nn.Module:
    """A fresh activation module for a config name (``"silu"``, ``"swish"``, ``"mish"``, ...)."""
    try:
        return _ACTIVATIONS[name.lower()]()
    except KeyError:
        raise ConfigError(f"unknown activation function {name!r}; use one of "
                          f"{sorted(_ACTIVATIONS)}") from None


class GELU(nn.Module):
    """A linear projection followed by GELU (optionally its tanh approximation)."""

    def __init__(self, dim_in: int, dim_out: int, approximate: str = "none", bias: bool = True):
        super().__init__()
        self.proj = nn.Linear(dim_in, dim_out, bias=bias)
        self.approximate = approximate

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return F.gelu(self.proj(hidden_states), approximate=self.approximate)


class GEGLU(nn.Module):
    """Gated GELU unit, Shazeer 2020 ("GLU Variants Improve Transformer", eq. 5):
    ``x W ⊙ GELU(x V)``, with W and V stacked in one projection."""

    def __init__(self, dim_in: int, dim_out: int, bias: bool = True):
        super().__init__()
        self.proj = nn.Linear(dim_in, dim_out * 2, bias=bias)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        hidden_states, gate = self.proj(hidden_states).chunk(2, dim=-1)
        if torch.is_grad_enabled():  # autograd would keep a copy of gelu(gate) for the product
            return hidden_states * F.gelu(gate)
        return F.gelu(gate).mul_(hidden_states)  # inference: no second full-size tensor


_FEED_FORWARD_ACTIVATIONS = {
    "geglu": GEGLU,
    "gelu": GELU,
    "gelu-approximate": lambda dim, inner, bias: GELU(dim, inner, approximate="tanh", bias=bias),
}


class FeedForward(nn.Module):
    """The transformer MLP: activation projection, dropout, output projection (keys ``net.0``,
    ``net.2``; ``net.3`` is a second dropout with ``final_dropout``)."""

    def __init__(self, dim: int, dim_out: int | None = None, mult: int = 4, dropout: float = 0.0,
                 activation_fn: str = "geglu", final_dropout: bool = False,
                 inner_dim: int | None = None, bias: bool = True):
        super().__init__()
        if activation_fn not in _FEED_FORWARD_ACTIVATIONS:
            raise ConfigError(f"unknown feed-forward activation {activation_fn!r}; use one of "
                              f"{sorted(_FEED_FORWARD_ACTIVATIONS)}")
        inner_dim = inner_dim or int(dim * mult)
        layers = [_FEED_FORWARD_ACTIVATIONS[activation_fn](dim, inner_dim, bias=bias),
                  nn.Dropout(dropout), nn.Linear(inner_dim, dim_out or dim, bias=bias)]
        if final_dropout:
            layers.append(nn.Dropout(dropout))
        self.net = nn.ModuleList(layers)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        for layer in self.net:
            if self.training or not isinstance(layer, nn.Dropout):  # eval-mode dropout: no-op
                hidden_states = layer(hidden_states)
        return hidden_states
