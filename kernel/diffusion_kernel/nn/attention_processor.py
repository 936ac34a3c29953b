"""Attention processors: the computation an ``Attention`` layer runs, swappable per layer.

A processor is any callable ``processor(attn, hidden_states, encoder_hidden_states=None,
attention_mask=None, temb=None, **kwargs) -> Tensor`` (the diffusers signature), where ``attn``
is the ``Attention`` module whose projections (``to_q``, ``to_k``, ``to_v``, ``to_out``) and
options it uses. Code written for diffusers (IP-Adapter-style processors that add their own key
and value projections, attention-map capture, custom masks) runs unchanged on our layers.

``AttnProcessor`` is the default: multi-head scaled dot-product attention (Vaswani et al. 2017,
eq. 1 and sec. 3.2.2) through ``torch.nn.functional.scaled_dot_product_attention``, with the
layer's attention slicing and fused projections. It has no Python-level branching on tensor
values, so a compiled denoising loop traces without graph breaks.
"""

from __future__ import annotations

import torch
from torch.nn import functional as F

from .inplace import add_to_fresh


class AttnProcessor:
    """The default processor: SDPA, sliced when ``attn.slice_size`` is set, reading the fused
    ``q/k/v`` (or ``k/v``) projection when ``attn.fuse_projections()`` has been called.

    ``hidden_states``: (B, N, C) tokens or a (B, C, *spatial) feature map;
    ``encoder_hidden_states``: (B, M, D) context for cross-attention; ``attention_mask``: an
    additive bias over the key tokens, (B, M) or (B, 1, M). ``temb`` and other keyword arguments
    are accepted for the common signature and not used.
    """

    def __call__(self, attn, hidden_states: torch.Tensor,
                 encoder_hidden_states: torch.Tensor | None = None,
                 attention_mask: torch.Tensor | None = None, temb: torch.Tensor | None = None,
                 **kwargs) -> torch.Tensor:
        residual = hidden_states
        feature_map_shape = hidden_states.shape if hidden_states.ndim > 3 else None
        if feature_map_shape is not None:  # (B, C, *spatial) -> (B, N, C)
            hidden_states = hidden_states.flatten(2).transpose(1, 2)
        if attn.group_norm is not None:
            hidden_states = attn.group_norm(hidden_states.transpose(1, 2)).transpose(1, 2)

        query, key, value = project_qkv(attn, hidden_states, encoder_hidden_states)
        query, key, value = (split_heads(t, attn.heads) for t in (query, key, value))
        out = attend(query, key, value, key_bias(attention_mask), attn.slice_size)
        batch, _, tokens, _ = out.shape
        out = out.transpose(1, 2).reshape(batch, tokens, -1)
        out = attn.to_out[0](out)
        if attn.training:  # dropout; a no-op call in eval mode
            out = attn.to_out[1](out)

        if feature_map_shape is not None:
            out = out.transpose(1, 2).reshape(feature_map_shape)
        if attn.residual_connection:
            out = add_to_fresh(out, residual)
        if attn.rescale_output_factor != 1.0:
            out = out / attn.rescale_output_factor
        return out


# The diffusers name of its SDPA processor, for code that imports it.
AttnProcessor2_0 = AttnProcessor


def project_qkv(attn, hidden_states: torch.Tensor, encoder_hidden_states: torch.Tensor | None
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(query, key, value) as (B, tokens, heads * dim_head): one matrix product for q, k and v
    (self-attention) or for k and v (cross-attention) when the layer's projections are fused."""
    fused_qkv, fused_kv = attn.fused_qkv_weight, attn.fused_kv_weight
    if encoder_hidden_states is None and fused_qkv is not None:
        return F.linear(hidden_states, fused_qkv, attn.fused_qkv_bias).chunk(3, dim=-1)
    context = hidden_states if encoder_hidden_states is None else encoder_hidden_states
    query = attn.to_q(hidden_states)
    if encoder_hidden_states is not None and fused_kv is not None:
        key, value = F.linear(context, fused_kv, attn.fused_kv_bias).chunk(2, dim=-1)
        return query, key, value
    return query, attn.to_k(context), attn.to_v(context)


def split_heads(x: torch.Tensor, heads: int) -> torch.Tensor:
    """(B, N, heads * d) -> (B, heads, N, d)."""
    batch, tokens, _ = x.shape
    return x.view(batch, tokens, heads, -1).transpose(1, 2)


def key_bias(mask: torch.Tensor | None) -> torch.Tensor | None:
    """An additive key mask (B, M) or (B, 1, M) as (B, 1, 1, M), broadcast over heads/queries."""
    if mask is None:
        return None
    if mask.ndim == 2:
        mask = mask[:, None]
    return mask[:, None]


def attend(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
           bias: torch.Tensor | None, slice_size: int | None = None) -> torch.Tensor:
    """softmax(q k^T / sqrt(d) + bias) v on (B, heads, N, d) tensors; with ``slice_size``, that
    many of the B * heads problems at a time (only their N x M score matrices exist at once)."""
    if slice_size is None:
        return F.scaled_dot_product_attention(query, key, value, attn_mask=bias)
    batch, heads, tokens, dim = query.shape
    q, k, v = (t.reshape(batch * heads, t.shape[2], t.shape[3]) for t in (query, key, value))
    if bias is not None:  # (B or 1, heads or 1, 1 or N, M): one row per (batch, head)
        rows = bias.shape[2]
        bias = bias.expand(batch, heads, rows, bias.shape[-1]).reshape(batch * heads, rows, -1)
    out = torch.empty_like(q)
    for start in range(0, batch * heads, slice_size):
        rows = slice(start, start + slice_size)
        out[rows] = F.scaled_dot_product_attention(
            q[rows], k[rows], v[rows], attn_mask=None if bias is None else bias[rows])
    return out.view(batch, heads, tokens, dim)
