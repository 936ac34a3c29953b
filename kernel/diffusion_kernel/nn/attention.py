"""Multi-head scaled dot-product attention (Vaswani et al. 2017, eq. 1 and sec. 3.2.2), computed
with ``torch.nn.functional.scaled_dot_product_attention``.

One module covers self- and cross-attention on token sequences ``(B, N, C)`` and on channel-first
feature maps ``(B, C, *spatial)`` (flattened to ``N = prod(spatial)`` tokens), with the optional
pieces diffusion networks use: a group norm on the input, a residual connection and an output
rescale. Weight keys follow the diffusers format: ``to_q``, ``to_k``, ``to_v``, ``to_out.0``,
``group_norm``.

Attention slicing computes the ``B * heads`` attention problems a slice at a time, so the
``N x N`` score matrices of only one slice exist at once (memory for speed).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn
from torch.nn import functional as F

from ..errors import ConfigError
from .inplace import add_to_fresh


class Attention(nn.Module):
    """Multi-head attention.

    ``query_dim``: channels of the input; ``cross_attention_dim``: channels of the context keys and
    values come from (``None``: self-attention); ``heads`` x ``dim_head``: the projection width.
    ``upcast_attention`` / ``upcast_softmax`` are recorded for the format; the fused kernel already
    accumulates the softmax in float32.
    """

    def __init__(
        self,
        query_dim: int,
        cross_attention_dim: int | None = None,
        heads: int = 8,
        dim_head: int = 64,
        dropout: float = 0.0,
        bias: bool = False,
        upcast_attention: bool = False,
        upcast_softmax: bool = False,
        norm_num_groups: int | None = None,
        eps: float = 1e-5,
        rescale_output_factor: float = 1.0,
        residual_connection: bool = False,
        out_bias: bool = True,
        out_dim: int | None = None,
    ):
        super().__init__()
        inner_dim = dim_head * heads
        self.heads = heads
        self.dim_head = dim_head
        self.is_cross_attention = cross_attention_dim is not None
        self.upcast_attention = upcast_attention
        self.upcast_softmax = upcast_softmax
        self.rescale_output_factor = rescale_output_factor
        self.residual_connection = residual_connection
        self.slice_size: int | None = None
        self.group_norm = (nn.GroupNorm(norm_num_groups, query_dim, eps=eps)
                           if norm_num_groups is not None else None)
        context_dim = cross_attention_dim if cross_attention_dim is not None else query_dim
        self.to_q = nn.Linear(query_dim, inner_dim, bias=bias)
        self.to_k = nn.Linear(context_dim, inner_dim, bias=bias)
        self.to_v = nn.Linear(context_dim, inner_dim, bias=bias)
        self.to_out = nn.ModuleList([nn.Linear(inner_dim, out_dim or query_dim, bias=out_bias),
                                     nn.Dropout(dropout)])

    @property
    def sliceable_head_dim(self) -> int:
        return self.heads

    def set_attention_slice(self, slice_size: int | None) -> None:
        """Compute attention ``slice_size`` (batch x head) problems at a time; ``None``: all."""
        if slice_size is not None and slice_size < 1:
            raise ConfigError(f"attention slice size must be a positive number, got {slice_size}")
        self.slice_size = slice_size

    def forward(self, hidden_states: torch.Tensor,
                encoder_hidden_states: torch.Tensor | None = None,
                attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """``hidden_states`` (B, N, C) or (B, C, *spatial); ``encoder_hidden_states`` (B, M, D) for
        cross-attention; ``attention_mask`` an additive bias over the key tokens, (B, M) or
        (B, 1, M). Returns a tensor shaped like ``hidden_states``."""
        residual = hidden_states
        feature_map_shape = hidden_states.shape if hidden_states.ndim > 3 else None
        if feature_map_shape is not None:  # (B, C, *spatial) -> (B, N, C)
            hidden_states = hidden_states.flatten(2).transpose(1, 2)
        if self.group_norm is not None:
            hidden_states = self.group_norm(hidden_states.transpose(1, 2)).transpose(1, 2)
        context = hidden_states if encoder_hidden_states is None else encoder_hidden_states

        query = self._split_heads(self.to_q(hidden_states))
        key = self._split_heads(self.to_k(context))
        value = self._split_heads(self.to_v(context))
        out = self._attend(query, key, value, _as_bias(attention_mask))
        batch, _, tokens, _ = out.shape
        out = out.transpose(1, 2).reshape(batch, tokens, self.heads * self.dim_head)
        out = self.to_out[0](out)
        if self.training:  # dropout; a no-op call in eval mode
            out = self.to_out[1](out)

        if feature_map_shape is not None:
            out = out.transpose(1, 2).reshape(feature_map_shape)
        if self.residual_connection:
            out = add_to_fresh(out, residual)
        if self.rescale_output_factor != 1.0:
            out = out / self.rescale_output_factor
        return out

    def _split_heads(self, x: torch.Tensor) -> torch.Tensor:
        """(B, N, heads * d) -> (B, heads, N, d)."""
        batch, tokens, _ = x.shape
        return x.view(batch, tokens, self.heads, -1).transpose(1, 2)

    def _attend(self, query, key, value, bias):
        if self.slice_size is None:
            return F.scaled_dot_product_attention(query, key, value, attn_mask=bias)
        batch, heads, tokens, dim = query.shape
        q, k, v = (t.reshape(batch * heads, t.shape[2], t.shape[3]) for t in (query, key, value))
        if bias is not None:
            bias = bias.expand(batch, heads, 1, bias.shape[-1]).reshape(batch * heads, 1, -1)
        out = torch.empty_like(q)
        for start in range(0, batch * heads, self.slice_size):
            rows = slice(start, start + self.slice_size)
            out[rows] = F.scaled_dot_product_attention(
                q[rows], k[rows], v[rows], attn_mask=None if bias is None else bias[rows])
        return out.view(batch, heads, tokens, dim)


def _as_bias(mask: torch.Tensor | None) -> torch.Tensor | None:
    """An additive key mask (B, M) or (B, 1, M) as (B, 1, 1, M), broadcast over heads/queries."""
    if mask is None:
        return None
    if mask.ndim == 2:
        mask = mask[:, None]
    return mask[:, None]


def set_attention_slice(model: nn.Module, slice_size: str | int | Sequence[int | None] | None
                        = "auto") -> None:
    """Turn attention slicing on for every ``Attention`` in ``model``.

    ``"auto"``: half of each layer's heads at a time (two steps per batch element); ``"max"``: one
    head at a time (least memory); an int: that many (batch x head) problems at a time; a list:
    one value per attention layer, in module order; ``None``: off.
    """
    layers = [m for m in model.modules() if isinstance(m, Attention)]
    if slice_size == "auto":
        sizes = [max(layer.heads // 2, 1) for layer in layers]
    elif slice_size == "max":
        sizes = [1] * len(layers)
    elif slice_size is None or isinstance(slice_size, int):
        sizes = [slice_size] * len(layers)
    else:
        sizes = list(slice_size)
        if len(sizes) != len(layers):
            raise ConfigError(f"got {len(sizes)} attention slice sizes for {len(layers)} attention "
                              f"layers; pass one per layer, or a single int, 'auto' or 'max'")
    for layer, size in zip(layers, sizes):
        layer.set_attention_slice(size)


class AttentionSlicingMixin:
    """``set_attention_slice`` / ``disable_attention_slicing`` for models holding ``Attention``."""

    def set_attention_slice(self, slice_size: str | int | Sequence[int | None] | None = "auto"):
        set_attention_slice(self, slice_size)

    def disable_attention_slicing(self) -> None:
        set_attention_slice(self, None)
