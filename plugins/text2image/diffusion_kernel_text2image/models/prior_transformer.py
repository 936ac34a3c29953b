"""The unCLIP diffusion prior (Ramesh et al. 2022, "Hierarchical Text-Conditional Image Generation
with CLIP Latents", sec. 2.1): a decoder-only transformer that predicts a CLIP image embedding
z_i from the caption's CLIP text embedding z_t, its token states, the timestep and the noised
z_i itself.

The sequence is [projected text token states, projected z_t, timestep embedding, projected noisy
z_i, a learned "prd" query token]; learned position embeddings are added, the transformer runs
with a causal mask (plus the text padding mask), and the output at the final token is projected
to the image embedding ("we ... predict the unnoised z_i directly", sec. 2.1, so the prior's
scheduler uses ``prediction_type="sample"``). ``post_process_latents`` undoes the normalisation
of the CLIP embedding the prior was trained on (``clip_mean``, ``clip_std``).

Config fields and weight keys follow the diffusers ``PriorTransformer`` format.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from diffusion_kernel.errors import ConfigError, ModelInputError
from diffusion_kernel.modeling import ModelMixin
from diffusion_kernel.nn import (
    Attention,
    AttentionSlicingMixin,
    FeedForward,
    ModelOutput,
    TimestepEmbedding,
    Timesteps,
)
from torch import nn
from torch.nn import functional as F


@dataclass
class PriorTransformerOutput(ModelOutput):
    """``predicted_image_embedding``: (B, clip_embed_dim)."""

    predicted_image_embedding: torch.Tensor


class PriorTransformerBlock(nn.Module):
    """Pre-norm self-attention block: ``x += attn1(norm1(x), mask)``; ``x += ff(norm3(x))``
    (GELU feed-forward, biased projections). The key layout (``norm1``, ``attn1``, ``norm3``,
    ``ff.net``) is the format's transformer block without its cross-attention."""

    def __init__(self, dim: int, heads: int, head_dim: int, dropout: float = 0.0):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn1 = Attention(dim, heads=heads, dim_head=head_dim, dropout=dropout, bias=True)
        self.norm3 = nn.LayerNorm(dim)
        self.ff = FeedForward(dim, dropout=dropout, activation_fn="gelu")

    def forward(self, hidden_states: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        hidden_states = hidden_states + self.attn1(self.norm1(hidden_states), None, bias)
        return hidden_states + self.ff(self.norm3(hidden_states))


class PriorTransformer(ModelMixin, AttentionSlicingMixin):
    """``prior(noisy_image_embedding, t, proj_embedding=text_embeds,
    encoder_hidden_states=text_states, attention_mask=text_mask).predicted_image_embedding``."""

    def __init__(
        self,
        num_attention_heads: int = 32,
        attention_head_dim: int = 64,
        num_layers: int = 20,
        embedding_dim: int = 768,
        num_embeddings: int = 77,
        additional_embeddings: int = 4,
        dropout: float = 0.0,
        time_embed_act_fn: str = "silu",
        norm_in_type: str | None = None,
        embedding_proj_norm_type: str | None = None,
        encoder_hid_proj_type: str | None = "linear",
        added_emb_type: str | None = "prd",
        time_embed_dim: int | None = None,
        embedding_proj_dim: int | None = None,
        clip_embed_dim: int | None = None,
    ):
        super().__init__()
        for field, value, allowed in (("norm_in_type", norm_in_type, (None, "layer")),
                                      ("embedding_proj_norm_type", embedding_proj_norm_type,
                                       (None, "layer")),
                                      ("encoder_hid_proj_type", encoder_hid_proj_type,
                                       (None, "linear")),
                                      ("added_emb_type", added_emb_type, (None, "prd"))):
            if value not in allowed:
                raise ConfigError(f"PriorTransformer: {field}={value!r} is not supported; use one "
                                  f"of {list(allowed)}")
        inner_dim = num_attention_heads * attention_head_dim
        embedding_proj_dim = embedding_proj_dim or embedding_dim
        clip_embed_dim = clip_embed_dim or embedding_dim
        self.additional_embeddings = additional_embeddings

        self.time_proj = Timesteps(inner_dim, True, 0)
        self.time_embedding = TimestepEmbedding(inner_dim, time_embed_dim or inner_dim,
                                                out_dim=inner_dim, act_fn=time_embed_act_fn)
        self.proj_in = nn.Linear(embedding_dim, inner_dim)
        self.embedding_proj_norm = (nn.LayerNorm(embedding_proj_dim)
                                    if embedding_proj_norm_type == "layer" else None)
        self.embedding_proj = nn.Linear(embedding_proj_dim, inner_dim)
        self.encoder_hidden_states_proj = (nn.Linear(embedding_dim, inner_dim)
                                           if encoder_hid_proj_type == "linear" else None)
        self.positional_embedding = nn.Parameter(
            torch.zeros(1, num_embeddings + additional_embeddings, inner_dim))
        self.prd_embedding = (nn.Parameter(torch.zeros(1, 1, inner_dim))
                              if added_emb_type == "prd" else None)
        self.transformer_blocks = nn.ModuleList(
            PriorTransformerBlock(inner_dim, num_attention_heads, attention_head_dim, dropout)
            for _ in range(num_layers))
        self.norm_in = nn.LayerNorm(inner_dim) if norm_in_type == "layer" else None
        self.norm_out = nn.LayerNorm(inner_dim)
        self.proj_to_clip_embeddings = nn.Linear(inner_dim, clip_embed_dim)
        length = num_embeddings + additional_embeddings
        causal = torch.full([length, length], -10000.0).triu_(1)  # token i sees tokens <= i
        self.register_buffer("causal_attention_mask", causal[None], persistent=False)
        self.clip_mean = nn.Parameter(torch.zeros(1, clip_embed_dim))
        self.clip_std = nn.Parameter(torch.zeros(1, clip_embed_dim))

    def forward(self, hidden_states: torch.Tensor, timestep: torch.Tensor | float | int,
                proj_embedding: torch.Tensor, encoder_hidden_states: torch.Tensor | None = None,
                attention_mask: torch.Tensor | None = None,
                return_dict: bool = True) -> PriorTransformerOutput | tuple[torch.Tensor]:
        """``hidden_states`` (B, embedding_dim): the noisy image embedding; ``proj_embedding``
        (B, embedding_proj_dim): the CLIP text embedding; ``encoder_hidden_states`` (B, L,
        embedding_dim): the text token states; ``attention_mask`` (B, L), 1 = keep (with it,
        the causal mask is applied too, as in the format; without, neither)."""
        batch = hidden_states.shape[0]
        timesteps = _timestep_batch(timestep, batch, hidden_states.device)
        time_embeddings = self.time_embedding(self.time_proj(timesteps).to(self.dtype))
        if self.embedding_proj_norm is not None:
            proj_embedding = self.embedding_proj_norm(proj_embedding)
        proj_embeddings = self.embedding_proj(proj_embedding)
        tokens = []
        if self.encoder_hidden_states_proj is not None:
            if encoder_hidden_states is None:
                raise ModelInputError("this PriorTransformer projects the text token states: "
                                      "pass encoder_hidden_states")
            encoder_hidden_states = self.encoder_hidden_states_proj(encoder_hidden_states)
        if encoder_hidden_states is not None:
            tokens.append(encoder_hidden_states)
        hidden_states = self.proj_in(hidden_states)
        tokens += [_as_tokens(proj_embeddings), time_embeddings[:, None], _as_tokens(hidden_states)]
        if self.prd_embedding is not None:
            tokens.append(self.prd_embedding.to(hidden_states.dtype).expand(batch, -1, -1))
        sequence = torch.cat(tokens, dim=1)
        # z_t, the time and the noisy z_i come right after the text tokens
        prefix = (encoder_hidden_states.shape[1] if encoder_hidden_states is not None else 0) \
            + _as_tokens(proj_embeddings).shape[1] + 1
        sequence = sequence + self._positions(sequence, prefix)
        bias = self._attention_bias(attention_mask, sequence.dtype)
        if self.norm_in is not None:
            sequence = self.norm_in(sequence)
        for block in self.transformer_blocks:
            sequence = block(sequence, bias)
        sequence = self.norm_out(sequence)
        out = sequence[:, -1] if self.prd_embedding is not None else sequence[:, prefix:]
        out = self.proj_to_clip_embeddings(out)
        return PriorTransformerOutput(out) if return_dict else (out,)

    def _positions(self, sequence: torch.Tensor, prefix: int) -> torch.Tensor:
        positions = self.positional_embedding.to(sequence.dtype)
        if positions.shape[1] < sequence.shape[1]:  # shorter text: the format pads in the middle
            extra = self.prd_embedding.shape[1] if self.prd_embedding is not None else 0
            positions = F.pad(positions, (0, 0, prefix, extra))
        return positions

    def _attention_bias(self, attention_mask: torch.Tensor | None,
                        dtype: torch.dtype) -> torch.Tensor | None:
        """(B, L) text mask -> (B, S, S) additive bias: padding and the future are masked."""
        if attention_mask is None:
            return None
        bias = (1 - attention_mask.to(dtype)) * -10000.0
        bias = F.pad(bias, (0, self.additional_embeddings))
        if bias.shape[1] != self.causal_attention_mask.shape[-1]:
            raise ModelInputError(
                f"PriorTransformer: attention_mask covers {attention_mask.shape[1]} text tokens; "
                f"this model takes num_embeddings={self.config.num_embeddings}")
        return (bias[:, None, :] + self.causal_attention_mask).to(dtype)

    def post_process_latents(self, prior_latents: torch.Tensor) -> torch.Tensor:
        """The prior works on normalised CLIP image embeddings: map back to CLIP's scale."""
        return prior_latents * self.clip_std.to(prior_latents.device) + \
            self.clip_mean.to(prior_latents.device)


def _timestep_batch(timestep, batch: int, device) -> torch.Tensor:
    if not torch.is_tensor(timestep):
        timestep = torch.tensor([timestep], dtype=torch.long, device=device)
    elif timestep.ndim == 0:
        timestep = timestep[None].to(device)
    return timestep * torch.ones(batch, dtype=timestep.dtype, device=timestep.device)


def _as_tokens(embedding: torch.Tensor) -> torch.Tensor:
    """(B, D) -> (B, 1, D); (B, N, D) stays."""
    return embedding[:, None] if embedding.ndim == 2 else embedding
