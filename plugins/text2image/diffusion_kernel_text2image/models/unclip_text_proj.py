"""How the unCLIP decoder is conditioned on CLIP (Ramesh et al. 2022, sec. 2.1): "we modify the
architecture described in Nichol et al. (2021) by projecting and adding CLIP embeddings to the
existing timestep embedding, and by projecting CLIP embeddings into four extra tokens of context
that are concatenated to the sequence of outputs from the GLIDE text encoder".

Here the decoder's time embedding gets ``embedding_proj(z_t) + proj(z_i)`` (the text embedding
z_t and the image embedding z_i), passed to the U-Net as ``class_labels`` (its
``class_embed_type="identity"``); its context tokens are [``clip_extra_context_tokens`` tokens
from z_i, the projected and layer-normed text token states]. For classifier-free guidance the
unconditional half gets a learned image embedding (``learned_classifier_free_guidance_embeddings``)
in place of z_i. Weight keys follow the diffusers format.
"""

from __future__ import annotations

import torch
from diffusion_kernel.errors import ModelInputError
from diffusion_kernel.modeling import ModelMixin
from torch import nn


class UnCLIPTextProjModel(ModelMixin):
    """``text_proj(image_embeddings=z_i, prompt_embeds=z_t, text_encoder_hidden_states=states,
    do_classifier_free_guidance=cfg)`` -> (decoder context tokens, additive time embedding)."""

    def __init__(self, *, clip_extra_context_tokens: int = 4, clip_embeddings_dim: int = 768,
                 time_embed_dim: int, cross_attention_dim: int):
        super().__init__()
        self.clip_extra_context_tokens = clip_extra_context_tokens
        self.learned_classifier_free_guidance_embeddings = nn.Parameter(
            torch.zeros(clip_embeddings_dim))
        self.embedding_proj = nn.Linear(clip_embeddings_dim, time_embed_dim)
        self.clip_image_embeddings_project_to_time_embeddings = nn.Linear(clip_embeddings_dim,
                                                                          time_embed_dim)
        self.clip_extra_context_tokens_proj = nn.Linear(
            clip_embeddings_dim, clip_extra_context_tokens * cross_attention_dim)
        self.encoder_hidden_states_proj = nn.Linear(clip_embeddings_dim, cross_attention_dim)
        self.text_encoder_hidden_states_norm = nn.LayerNorm(cross_attention_dim)

    def forward(self, *, image_embeddings: torch.Tensor, prompt_embeds: torch.Tensor,
                text_encoder_hidden_states: torch.Tensor,
                do_classifier_free_guidance: bool) -> tuple[torch.Tensor, torch.Tensor]:
        """``image_embeddings`` (B, D) (the conditional half only, under guidance: the learned
        unconditional embedding is prepended); ``prompt_embeds`` (B', D) and
        ``text_encoder_hidden_states`` (B', L, D) with B' = 2B under guidance.
        Returns (context tokens (B', extra + L, cross_attention_dim), time embedding (B',
        time_embed_dim))."""
        if do_classifier_free_guidance:
            unconditional = self.learned_classifier_free_guidance_embeddings
            image_embeddings = torch.cat(
                [unconditional[None].expand(image_embeddings.shape[0], -1), image_embeddings])
        if image_embeddings.shape[0] != prompt_embeds.shape[0]:
            raise ModelInputError(
                f"UnCLIPTextProjModel: {image_embeddings.shape[0]} image embeddings for "
                f"{prompt_embeds.shape[0]} text embeddings (with guidance the text batch holds "
                f"the unconditional half too); they must match")
        batch = prompt_embeds.shape[0]
        to_time = self.clip_image_embeddings_project_to_time_embeddings
        time_embeddings = self.embedding_proj(prompt_embeds) + to_time(image_embeddings)
        # The format lays the extra tokens' projection out as (width, tokens): keep that order.
        extra = self.clip_extra_context_tokens_proj(image_embeddings)
        extra = extra.reshape(batch, -1, self.clip_extra_context_tokens).permute(0, 2, 1)
        text = self.text_encoder_hidden_states_norm(
            self.encoder_hidden_states_proj(text_encoder_hidden_states))
        return torch.cat([extra, text], dim=1), time_embeddings
