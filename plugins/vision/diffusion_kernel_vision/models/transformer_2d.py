"""The spatial transformer of latent diffusion (Rombach et al. 2022, sec. 3.3 and appendix; the
"SpatialTransformer" of the LDM code): a feature map is normalised, projected to tokens, run through
transformer blocks that self-attend, cross-attend to the conditioning (text) tokens and apply a
GEGLU feed-forward, then projected back and added to its input. Weight keys follow the diffusers
``Transformer2DModel`` / ``BasicTransformerBlock`` format."""

from __future__ import annotations

import torch
from diffusion_kernel.nn import Attention, FeedForward, add_to_fresh, maybe_checkpoint
from torch import nn


class BasicTransformerBlock(nn.Module):
    """Pre-norm transformer block: ``x += attn1(norm1(x))``; ``x += attn2(norm2(x), context)``;
    ``x += ff(norm3(x))``.

    ``only_cross_attention``: ``attn1`` attends to the context too; ``cross_attention_dim=None``
    drops ``attn2`` (self-attention only); ``double_self_attention``: ``attn2`` is a second
    self-attention.
    """

    def __init__(self, dim: int, num_attention_heads: int, attention_head_dim: int,
                 dropout: float = 0.0, cross_attention_dim: int | None = None,
                 activation_fn: str = "geglu", attention_bias: bool = False,
                 only_cross_attention: bool = False, double_self_attention: bool = False,
                 upcast_attention: bool = False, norm_elementwise_affine: bool = True,
                 norm_eps: float = 1e-5, final_dropout: bool = False,
                 ff_inner_dim: int | None = None, ff_bias: bool = True,
                 attention_out_bias: bool = True):
        super().__init__()
        self.only_cross_attention = only_cross_attention
        attention = dict(heads=num_attention_heads, dim_head=attention_head_dim, dropout=dropout,
                         bias=attention_bias, upcast_attention=upcast_attention,
                         out_bias=attention_out_bias)
        self.norm1 = nn.LayerNorm(dim, eps=norm_eps, elementwise_affine=norm_elementwise_affine)
        self.attn1 = Attention(dim, cross_attention_dim if only_cross_attention else None,
                               **attention)
        if cross_attention_dim is not None or double_self_attention:
            self.norm2 = nn.LayerNorm(dim, eps=norm_eps,
                                      elementwise_affine=norm_elementwise_affine)
            self.attn2 = Attention(dim, None if double_self_attention else cross_attention_dim,
                                   **attention)
        else:
            self.norm2 = self.attn2 = None
        self.norm3 = nn.LayerNorm(dim, eps=norm_eps, elementwise_affine=norm_elementwise_affine)
        self.ff = FeedForward(dim, dropout=dropout, activation_fn=activation_fn,
                              final_dropout=final_dropout, inner_dim=ff_inner_dim, bias=ff_bias)

    def forward(self, hidden_states: torch.Tensor, attention_mask: torch.Tensor | None = None,
                encoder_hidden_states: torch.Tensor | None = None,
                encoder_attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        context = encoder_hidden_states if self.only_cross_attention else None
        hidden_states = hidden_states + self.attn1(self.norm1(hidden_states), context,
                                                   attention_mask)
        if self.attn2 is not None:
            hidden_states = hidden_states + self.attn2(self.norm2(hidden_states),
                                                       encoder_hidden_states,
                                                       encoder_attention_mask)
        return hidden_states + self.ff(self.norm3(hidden_states))


class Transformer2DModel(nn.Module):
    """Transformer blocks over the pixels of a feature map (B, C, H, W), with a residual around
    the whole: GroupNorm -> ``proj_in`` (1x1 conv, or a linear layer with
    ``use_linear_projection``) -> blocks -> ``proj_out`` -> + input."""

    def __init__(self, num_attention_heads: int = 16, attention_head_dim: int = 88,
                 in_channels: int | None = None, out_channels: int | None = None,
                 num_layers: int = 1, dropout: float = 0.0, norm_num_groups: int = 32,
                 cross_attention_dim: int | None = None, attention_bias: bool = False,
                 activation_fn: str = "geglu", use_linear_projection: bool = False,
                 only_cross_attention: bool = False, double_self_attention: bool = False,
                 upcast_attention: bool = False, norm_elementwise_affine: bool = True,
                 norm_eps: float = 1e-5):
        super().__init__()
        inner_dim = num_attention_heads * attention_head_dim
        out_channels = out_channels or in_channels
        self.use_linear_projection = use_linear_projection
        self.gradient_checkpointing = False
        self.norm = nn.GroupNorm(norm_num_groups, in_channels, eps=1e-6)
        if use_linear_projection:
            self.proj_in = nn.Linear(in_channels, inner_dim)
            self.proj_out = nn.Linear(inner_dim, out_channels)
        else:
            self.proj_in = nn.Conv2d(in_channels, inner_dim, 1)
            self.proj_out = nn.Conv2d(inner_dim, out_channels, 1)
        self.transformer_blocks = nn.ModuleList([
            BasicTransformerBlock(inner_dim, num_attention_heads, attention_head_dim,
                                  dropout=dropout, cross_attention_dim=cross_attention_dim,
                                  activation_fn=activation_fn, attention_bias=attention_bias,
                                  only_cross_attention=only_cross_attention,
                                  double_self_attention=double_self_attention,
                                  upcast_attention=upcast_attention,
                                  norm_elementwise_affine=norm_elementwise_affine,
                                  norm_eps=norm_eps)
            for _ in range(num_layers)
        ])

    def forward(self, hidden_states: torch.Tensor,
                encoder_hidden_states: torch.Tensor | None = None,
                attention_mask: torch.Tensor | None = None,
                encoder_attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """(B, C, H, W) feature map and (B, M, D) context tokens -> (B, C_out, H, W)."""
        batch, _, height, width = hidden_states.shape
        residual = hidden_states
        hidden_states = self.norm(hidden_states)
        if self.use_linear_projection:
            tokens = self.proj_in(_to_tokens(hidden_states))
        else:
            tokens = _to_tokens(self.proj_in(hidden_states))
        for block in self.transformer_blocks:
            tokens = maybe_checkpoint(self, block, tokens, attention_mask, encoder_hidden_states,
                                      encoder_attention_mask)
        if self.use_linear_projection:
            hidden_states = _to_map(self.proj_out(tokens), height, width)
        else:
            hidden_states = self.proj_out(_to_map(tokens, height, width))
        return add_to_fresh(hidden_states, residual)  # proj_out's new output


def _to_tokens(feature_map: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) -> (B, H*W, C)."""
    batch, channels, height, width = feature_map.shape
    return feature_map.permute(0, 2, 3, 1).reshape(batch, height * width, channels)


def _to_map(tokens: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """(B, H*W, C) -> (B, C, H, W), contiguous for the convolutions that follow."""
    batch, _, channels = tokens.shape
    return tokens.reshape(batch, height, width, channels).permute(0, 3, 1, 2).contiguous()
