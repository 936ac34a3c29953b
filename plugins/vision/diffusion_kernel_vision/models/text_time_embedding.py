"""The pooled-text time embedding of DeepFloyd IF (``addition_embed_type="text"``): the text
encoder's token states are pooled into one vector by attention (a learned query built from their
mean, as in CLIP's attention-pooling image head, Radford et al. 2021, sec. 2.4) and added to the
timestep embedding, the way Imagen conditions on pooled text (Saharia et al. 2022, sec. 2.2 and
appendix F) and GLIDE on its final token (Nichol et al. 2021, sec. 2.3).

Weight keys follow the diffusers format (``norm1``, ``pool.{q,k,v}_proj``,
``pool.positional_embedding``, ``proj``, ``norm2``).
"""

from __future__ import annotations

import torch
from diffusion_kernel.errors import ConfigError
from torch import nn


class AttentionPooling(nn.Module):
    """(B, L, D) tokens -> (B, D): one query, ``mean(tokens) + positional_embedding``, attends
    (``num_heads`` heads, no output projection) over [that query token, tokens]."""

    def __init__(self, num_heads: int, embed_dim: int):
        super().__init__()
        if embed_dim % num_heads:
            raise ConfigError(f"attention pooling over width {embed_dim} with {num_heads} heads "
                              f"(addition_embed_type_num_heads): the width must be a multiple")
        self.num_heads = num_heads
        self.positional_embedding = nn.Parameter(torch.randn(1, embed_dim) / embed_dim**0.5)
        self.k_proj = nn.Linear(embed_dim, embed_dim)
        self.q_proj = nn.Linear(embed_dim, embed_dim)
        self.v_proj = nn.Linear(embed_dim, embed_dim)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        batch, _, width = tokens.shape
        query_token = tokens.mean(dim=1, keepdim=True) + self.positional_embedding.to(tokens.dtype)
        keys = torch.cat([query_token, tokens], dim=1)
        query = self._heads(self.q_proj(query_token))
        key, value = self._heads(self.k_proj(keys)), self._heads(self.v_proj(keys))
        # Both factors scaled by d^(-1/4) rather than the product by d^(-1/2): the reference
        # implementation's choice against half-precision overflow, kept for equal numbers.
        scale = (width // self.num_heads) ** -0.25
        weights = torch.einsum("bdq,bdk->bqk", query * scale, key * scale)
        weights = torch.softmax(weights.float(), dim=-1).to(weights.dtype)
        pooled = torch.einsum("bqk,bdk->bdq", weights, value)  # (B * heads, d, 1)
        return pooled.reshape(batch, width)

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        """(B, L, D) -> (B * heads, D / heads, L)."""
        batch, length, width = x.shape
        x = x.view(batch, length, self.num_heads, width // self.num_heads).transpose(1, 2)
        return x.reshape(batch * self.num_heads, length, -1).transpose(1, 2)


class TextTimeEmbedding(nn.Module):
    """LayerNorm -> attention pooling -> linear to the time embedding width -> LayerNorm."""

    def __init__(self, encoder_dim: int, time_embed_dim: int, num_heads: int = 64):
        super().__init__()
        self.norm1 = nn.LayerNorm(encoder_dim)
        self.pool = AttentionPooling(num_heads, encoder_dim)
        self.proj = nn.Linear(encoder_dim, time_embed_dim)
        self.norm2 = nn.LayerNorm(time_embed_dim)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        """(B, L, encoder_dim) text states -> (B, time_embed_dim)."""
        return self.norm2(self.proj(self.pool(self.norm1(hidden_states))))
