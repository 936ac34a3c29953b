"""Self-attention over a feature map with the text tokens' keys and values added to its own: the
attention layer of GLIDE's text U-Net (Nichol et al. 2021, sec. 2.3 and appendix: "the
projections of the token embeddings are concatenated to the keys and values of every attention
layer"), kept by the unCLIP decoder and DeepFloyd IF.

Every pixel queries the concatenation of [text tokens, pixels]: the text keys and values come
from their own projections (``add_k_proj`` / ``add_v_proj``, from the text width), the pixel ones
from ``to_k`` / ``to_v``. With ``only_cross_attention`` the pixels attend to the text alone.
Weight keys follow the diffusers format (``to_q``, ``to_k``, ``to_v``, ``to_out.0``,
``add_k_proj``, ``add_v_proj``, ``group_norm``, ``norm_cross``).

The computation is the layer's processor (``AttnAddedKVProcessor``, the diffusers name), so the
model-level processor API (``attn_processors``, ``set_attn_processor``) covers these layers too.
"""

from __future__ import annotations

import torch
from diffusion_kernel.errors import ConfigError, ModelInputError
from diffusion_kernel.nn import Attention, add_to_fresh
from diffusion_kernel.nn.attention_processor import attend, split_heads
from torch import nn
from torch.nn import functional as F

from .conditioning_cache import reused

CROSS_ATTENTION_NORMS = (None, "layer_norm", "group_norm")


class AttnAddedKVProcessor:
    """The added key/value attention: ``hidden_states`` (B, C, H, W); ``encoder_hidden_states``
    (B, M, text width); ``attention_mask`` an additive bias over the M text tokens, (B, M) or
    (B, 1, M) (the pixels are never masked). SDPA, sliced when the layer's ``slice_size`` is set.
    Returns a map shaped like ``hidden_states`` (with the residual added)."""

    def __call__(self, attn: AddedKVAttention, hidden_states: torch.Tensor,
                 encoder_hidden_states: torch.Tensor | None = None,
                 attention_mask: torch.Tensor | None = None, temb: torch.Tensor | None = None,
                 **kwargs) -> torch.Tensor:
        if encoder_hidden_states is None:
            raise ModelInputError("this attention layer (added key/value projections) needs "
                                  "the text tokens: pass encoder_hidden_states")
        batch = hidden_states.shape[0]
        cache = attn.conditioning_cache  # set inside UNet2DConditionModel.reuse_conditioning()
        key, value = reused(cache, (attn, "text"), encoder_hidden_states,
                            lambda: _text_keys_values(attn, encoder_hidden_states))
        pixels = attn.group_norm(hidden_states.flatten(2)).transpose(1, 2)  # (B, N, C)

        query = split_heads(attn.to_q(pixels), attn.heads)
        if not attn.only_cross_attention:  # keys and values: [text tokens, pixels]
            key = torch.cat([key, split_heads(attn.to_k(pixels), attn.heads)], dim=2)
            value = torch.cat([value, split_heads(attn.to_v(pixels), attn.heads)], dim=2)
        keys = key.shape[2]
        bias = reused(cache, (attn, "bias", keys), attention_mask,
                      lambda: _text_bias(attention_mask, keys))
        out = attend(query, key, value, bias, attn.slice_size)
        out = out.transpose(1, 2).reshape(batch, -1, attn.heads * attn.dim_head)
        out = attn.to_out[0](out)
        if attn.training:  # dropout; a no-op call in eval mode
            out = attn.to_out[1](out)
        # to_out's new output, back to the map's shape (a view): the residual goes into it
        return add_to_fresh(out.transpose(1, 2).reshape(hidden_states.shape), hidden_states)


def _text_keys_values(attn: AddedKVAttention, encoder_hidden_states: torch.Tensor
                      ) -> tuple[torch.Tensor, torch.Tensor]:
    """The text tokens' keys and values, (B, heads, M, dim_head) each: the same at every step of
    a sampling loop."""
    context = attn.norm_encoder_hidden_states(encoder_hidden_states)
    return (split_heads(attn.add_k_proj(context), attn.heads),
            split_heads(attn.add_v_proj(context), attn.heads))


# The diffusers name of its SDPA variant, for code that imports it.
AttnAddedKVProcessor2_0 = AttnAddedKVProcessor


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
        self.conditioning_cache = None  # see UNet2DConditionModel.reuse_conditioning
        if only_cross_attention:  # the pixels give no keys or values of their own
            self.to_k = self.to_v = None
        self.add_k_proj = nn.Linear(added_kv_proj_dim, self.inner_dim)
        self.add_v_proj = nn.Linear(added_kv_proj_dim, self.inner_dim)
        if cross_attention_norm == "layer_norm":
            self.norm_cross = nn.LayerNorm(channels)
        elif cross_attention_norm == "group_norm":
            self.norm_cross = nn.GroupNorm(cross_attention_norm_num_groups, added_kv_proj_dim,
                                           eps=1e-5)

    def default_processor(self) -> AttnAddedKVProcessor:
        return AttnAddedKVProcessor()

    def norm_encoder_hidden_states(self, encoder_hidden_states: torch.Tensor) -> torch.Tensor:
        """The text tokens through ``norm_cross`` (a group norm over the text width, or a layer
        norm), as is without one."""
        if isinstance(self.norm_cross, nn.GroupNorm):  # over the text width: (B, D, M)
            return self.norm_cross(encoder_hidden_states.transpose(1, 2)).transpose(1, 2)
        if self.norm_cross is not None:
            return self.norm_cross(encoder_hidden_states)
        return encoder_hidden_states

    def prepare_attention_mask(self, attention_mask: torch.Tensor | None, target_length: int,
                               batch_size: int, out_dim: int = 3) -> torch.Tensor | None:
        """For processors written for the format: its added key/value processors call this with
        the pixel count and get the text mask padded BY that many zeros, which covers the keys
        [text tokens, pixels]. Same here (the base layer pads TO the target length)."""
        if attention_mask is not None:
            mask = attention_mask[:, None] if attention_mask.ndim == 2 else attention_mask
            attention_mask = F.pad(mask, (0, target_length))
        return super().prepare_attention_mask(attention_mask, attention_mask.shape[-1]
                                              if attention_mask is not None else 0,
                                              batch_size, out_dim)

    def fuse_projections(self) -> None:
        """Nothing is fused for this layer (the reference refuses to fuse it): its processor
        keeps using the separate projections."""


def _text_bias(mask: torch.Tensor | None, keys: int) -> torch.Tensor | None:
    """An additive bias over the text tokens, (B, M) or (B, 1, M), as (B, 1, 1, keys): the keys
    after the text tokens (the pixels) get 0."""
    if mask is None:
        return None
    if mask.ndim == 2:
        mask = mask[:, None]
    return F.pad(mask, (0, keys - mask.shape[-1]))[:, None]
