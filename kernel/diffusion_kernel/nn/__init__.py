"""Layers every modality shares: sinusoidal timestep embeddings, the timestep MLP, activations and
feed-forward layers, multi-head attention (with slicing and swappable processors), model outputs
and gradient checkpointing.

Nothing here is 1D- or 2D-specific: modality plugins build their blocks on these.
"""

from .activations import GEGLU, GELU, FeedForward, get_activation
from .attention import Attention, AttentionMixin, AttentionSlicingMixin, set_attention_slice
from .attention_processor import AttnProcessor, AttnProcessor2_0
from .checkpointing import maybe_checkpoint
from .embeddings import (
    GaussianFourierProjection,
    TimestepEmbedding,
    Timesteps,
    get_timestep_embedding,
)
from .inplace import activate_fresh, add_to_fresh
from .outputs import ModelOutput

__all__ = [
    "GEGLU",
    "GELU",
    "Attention",
    "AttentionMixin",
    "AttentionSlicingMixin",
    "AttnProcessor",
    "AttnProcessor2_0",
    "FeedForward",
    "GaussianFourierProjection",
    "ModelOutput",
    "TimestepEmbedding",
    "activate_fresh",
    "add_to_fresh",
    "Timesteps",
    "get_activation",
    "get_timestep_embedding",
    "maybe_checkpoint",
    "set_attention_slice",
]
