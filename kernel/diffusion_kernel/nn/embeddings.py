"""Timestep embeddings: the sinusoidal features of Vaswani et al. 2017 (sec. 3.5) as used for the
diffusion timestep by Ho et al. 2020 (DDPM, appendix B), and the two-layer MLP that follows them."""

from __future__ import annotations

import math

import torch
from torch import nn

from .activations import get_activation


def get_timestep_embedding(
    timesteps: torch.Tensor,
    embedding_dim: int,
    flip_sin_to_cos: bool = False,
    downscale_freq_shift: float = 1,
    scale: float = 1,
    max_period: int = 10000,
) -> torch.Tensor:
    """Sinusoidal features of a 1-D tensor of (possibly fractional) timesteps: shape (N, dim).

    Frequency k of the ``half = dim // 2`` is
    ``max_period ** (-k / (half - downscale_freq_shift))``; the features are
    ``[sin(scale * t * f), cos(scale * t * f)]`` (``[cos, sin]`` with ``flip_sin_to_cos``),
    zero-padded by one column when ``dim`` is odd.
    """
    if timesteps.ndim != 1:
        raise ValueError(f"timesteps must be a 1-D tensor, got shape {tuple(timesteps.shape)}")
    half = embedding_dim // 2
    exponent = -math.log(max_period) * torch.arange(half, dtype=torch.float32,
                                                    device=timesteps.device)
    frequencies = torch.exp(exponent / (half - downscale_freq_shift))
    angles = scale * (timesteps[:, None].float() * frequencies[None, :])
    sin, cos = torch.sin(angles), torch.cos(angles)
    emb = torch.cat([cos, sin] if flip_sin_to_cos else [sin, cos], dim=-1)
    if embedding_dim % 2 == 1:
        emb = nn.functional.pad(emb, (0, 1))
    return emb


class Timesteps(nn.Module):
    """``get_timestep_embedding`` as a module (no weights)."""

    def __init__(self, num_channels: int, flip_sin_to_cos: bool, downscale_freq_shift: float,
                 scale: float = 1):
        super().__init__()
        self.num_channels = num_channels
        self.flip_sin_to_cos = flip_sin_to_cos
        self.downscale_freq_shift = downscale_freq_shift
        self.scale = scale

    def forward(self, timesteps: torch.Tensor) -> torch.Tensor:
        return get_timestep_embedding(timesteps, self.num_channels, self.flip_sin_to_cos,
                                      self.downscale_freq_shift, self.scale)


class TimestepEmbedding(nn.Module):
    """``linear_2(act(linear_1(x)))``, optionally followed by ``post_act``; ``cond_proj`` adds a
    projected condition to the input first (keys ``linear_1``, ``linear_2``, ``cond_proj``)."""

    def __init__(self, in_channels: int, time_embed_dim: int, act_fn: str = "silu",
                 out_dim: int | None = None, post_act_fn: str | None = None,
                 cond_proj_dim: int | None = None, sample_proj_bias: bool = True):
        super().__init__()
        self.linear_1 = nn.Linear(in_channels, time_embed_dim, sample_proj_bias)
        self.cond_proj = (nn.Linear(cond_proj_dim, in_channels, bias=False)
                          if cond_proj_dim is not None else None)
        self.act = get_activation(act_fn)
        self.linear_2 = nn.Linear(time_embed_dim, out_dim or time_embed_dim, sample_proj_bias)
        self.post_act = get_activation(post_act_fn) if post_act_fn is not None else None

    def forward(self, sample: torch.Tensor, condition: torch.Tensor | None = None) -> torch.Tensor:
        if condition is not None:
            sample = sample + self.cond_proj(condition)
        sample = self.linear_2(self.act(self.linear_1(sample)))
        if self.post_act is not None:
            sample = self.post_act(sample)
        return sample


class GaussianFourierProjection(nn.Module):
    """Random Fourier features of a noise level (Tancik et al. 2020; used for the continuous noise
    scale of score-based models, Song et al. 2021, appendix H.1): ``[sin(2 pi w x), cos(2 pi w
    x)]`` with fixed random frequencies ``w ~ N(0, scale^2)`` (key ``weight``), of ``log(x)``
    with ``log``."""

    def __init__(self, embedding_size: int = 256, scale: float = 1.0, log: bool = True,
                 flip_sin_to_cos: bool = False):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(embedding_size) * scale, requires_grad=False)
        self.log = log
        self.flip_sin_to_cos = flip_sin_to_cos

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.log:
            x = torch.log(x)
        angles = x[:, None] * self.weight[None, :] * 2 * math.pi
        sin, cos = torch.sin(angles), torch.cos(angles)
        return torch.cat([cos, sin] if self.flip_sin_to_cos else [sin, cos], dim=-1)
