"""Self-attention over a feature map with the text tokens' keys and values added to its own: the
attention layer of GLIDE's text U-Net (Nichol et al. 2021, sec. 2.3 and appendix: "the
projections of the token embeddings are concatenated to the keys and values of every attention
layer"), kept by the unCLIP decoder and DeepFloyd IF.

Every pixel queries the concatenation of [text tokens, pixels]: the text keys and values come
from their own projections (``add_k_proj`` / ``add_v_proj``, from the text width), the pixel ones
from ``to_k`` / ``to_v``. With ``only_cross_attention`` the pixels attend to the text alone.
Weight keys follow the diffusers format (``to_q``, ``to_k``, ``to_v``, ``to_out.0``,
``add_k_proj``, ``add_v_proj``, ``group_norm``, ``norm_cross``).
"""

from __future__ import annotations

import torch
from diffusion_kernel.errors import ConfigError, ModelInputError
from diffusion_kernel.nn import Attention
from torch import nn
from torch.nn import functional as F

CROSS_ATTENTION_NORMS = (None, "layer_norm", "group_norm")


class AddedKVAttention(Attention):
    """Attention of a (B, C, H, W) map over [text tokens, pixels], with a group norm on the map,
    an optional norm on the text tokens (``cross_attention_norm``) and a residual connection.

    ``channels`` must be a multiple of ``dim_head`` (``channels // dim_head`` heads)."""

    def __init__(self, channels: int, dim_head: int, added_kv_proj_dim: int,
                 norm_num_groups: int, only_cross_attention: bool = False,
                 cross_attention_norm: str | None = None, eps: float = 1e-5,
                 cross_attention_norm_num_groups: int = 32):
        if not dim_head or channels % dim_head:
            raise ConfigError(f"attention over {channels} channels with attention_head_dim="
                              f"{dim_head}: the channels must be a multiple of the head size")
        if cross_attention_norm not in CROSS_ATTENTION_NORMS:
            raise ConfigError(f"unknown cross_attention_norm {cross_attention_norm!r}; use one of "
                              f"{list(CROSS_ATTENTION_NORMS)}")
        if cross_attention_norm == "layer_norm" and added_kv_proj_dim != channels:
            # The format sizes this norm by the attention's channels, not the text width: any
            # other text width fails at the first call there. Refuse it here instead.
            raise ConfigError(f"cross_attention_norm='layer_norm' normalises the text tokens "
                              f"with a layer norm as wide as the attention ({channels} "
                              f"channels): it needs cross_attention_dim={channels}, got "
                              f"{added_kv_proj_dim}; use 'group_norm' or None")
        super().__init__(channels, cross_attention_dim=channels, heads=channels // dim_head,
                         dim_head=dim_head, bias=True, upcast_softmax=True,
                         norm_num_groups=norm_num_groups, eps=eps, residual_connection=True)
        self.only_cross_attention = only_cross_attention
        if only_cross_attention:  # the pixels give no keys or values of their own
            self.to_k = self.to_v = None
        inner_dim = self.heads * dim_head
        self.add_k_proj = nn.Linear(added_kv_proj_dim, inner_dim)
        self.add_v_proj = nn.Linear(added_kv_proj_dim, inner_dim)
        if cross_attention_norm == "layer_norm":
            self.norm_cross = nn.LayerNorm(channels)
        elif cross_attention_norm == "group_norm":
            self.norm_cross = nn.GroupNorm(cross_attention_norm_num_groups, added_kv_proj_dim,
                                           eps=1e-5)
        else:
            self.norm_cross = None

    def forward(self, hidden_states: torch.Tensor,
                encoder_hidden_states: torch.Tensor | None = None,
                attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """``hidden_states`` (B, C, H, W); ``encoder_hidden_states`` (B, M, text width);
        ``attention_mask`` an additive bias over the M text tokens, (B, M) or (B, 1, M) (the
        pixels are never masked). Returns a map shaped like ``hidden_states``."""
        if encoder_hidden_states is None:
            raise ModelInputError("this attention layer (added key/value projections) needs the "
                                  "text tokens: pass encoder_hidden_states")
        batch, channels = hidden_states.shape[:2]
        context = self._normed_context(encoder_hidden_states)
        pixels = self.group_norm(hidden_states.flatten(2)).transpose(1, 2)  # (B, N, C)

        query = self._split_heads(self.to_q(pixels))
        key = self._split_heads(self.add_k_proj(context))
        value = self._split_heads(self.add_v_proj(context))
        if not self.only_cross_attention:  # keys and values: [text tokens, pixels]
            key = torch.cat([key, self._split_heads(self.to_k(pixels))], dim=2)
            value = torch.cat([value, self._split_heads(self.to_v(pixels))], dim=2)
        bias = _text_bias(attention_mask, key.shape[2])
        out = self._attend(query, key, value, bias)
        out = out.transpose(1, 2).reshape(batch, -1, self.heads * self.dim_head)
        out = self.to_out[0](out)
        if self.training:  # dropout; a no-op call in eval mode
            out = self.to_out[1](out)
        return out.transpose(1, 2).reshape(hidden_states.shape) + hidden_states

    def _normed_context(self, context: torch.Tensor) -> torch.Tensor:
        if isinstance(self.norm_cross, nn.GroupNorm):  # over the text width: (B, D, M)
            return self.norm_cross(context.transpose(1, 2)).transpose(1, 2)
        if self.norm_cross is not None:
            return self.norm_cross(context)
        return context


def _text_bias(mask: torch.Tensor | None, keys: int) -> torch.Tensor | None:
    """An additive bias over the text tokens, (B, M) or (B, 1, M), as (B, 1, 1, keys): the keys
    after the text tokens (the pixels) get 0."""
    if mask is None:
        return None
    if mask.ndim == 2:
        mask = mask[:, None]
    return F.pad(mask, (0, keys - mask.shape[-1]))[:, None]
