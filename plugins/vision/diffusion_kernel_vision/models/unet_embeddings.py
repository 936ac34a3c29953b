"""Timestep and class inputs of the 2D U-Nets: a batch of timesteps from whatever the caller
passes, and the class-label embeddings the format offers."""

from __future__ import annotations

import torch
from diffusion_kernel.errors import ConfigError
from diffusion_kernel.nn import TimestepEmbedding
from torch import nn


def timestep_batch(timestep: torch.Tensor | float | int, sample: torch.Tensor,
                   number_dtype: torch.dtype | None = None) -> torch.Tensor:
    """One timestep per sample: a Python number or a 0-d tensor is repeated over the batch.

    A Python number becomes an int64 tensor (float64 for a float), or ``number_dtype``."""
    if not torch.is_tensor(timestep):
        dtype = number_dtype or (torch.float64 if isinstance(timestep, float) else torch.int64)
        timestep = torch.tensor([timestep], dtype=dtype, device=sample.device)
    elif timestep.ndim == 0:
        timestep = timestep[None].to(sample.device)
    return timestep.expand(sample.shape[0])


def class_embedding(class_embed_type: str | None, num_class_embeds: int | None,
                    timestep_input_dim: int, time_embed_dim: int, act_fn: str = "silu",
                    projection_input_dim: int | None = None) -> nn.Module | None:
    """The module that embeds ``class_labels`` into the time embedding's space.

    ``None`` with ``num_class_embeds``: a learned table; ``"timestep"``: labels embedded like
    timesteps; ``"identity"``: labels already are embeddings; ``"projection"``: an MLP from
    ``projection_input_dim``; ``"simple_projection"``: one linear layer."""
    if class_embed_type is None:
        return nn.Embedding(num_class_embeds, time_embed_dim) if num_class_embeds else None
    if class_embed_type == "timestep":
        return TimestepEmbedding(timestep_input_dim, time_embed_dim, act_fn=act_fn)
    if class_embed_type == "identity":
        return nn.Identity()
    if class_embed_type == "projection":
        return TimestepEmbedding(projection_input_dim, time_embed_dim)
    if class_embed_type == "simple_projection":
        return nn.Linear(projection_input_dim, time_embed_dim)
    raise ConfigError(f"unknown class_embed_type {class_embed_type!r}; use null, 'timestep', "
                      f"'identity', 'projection' or 'simple_projection'")
