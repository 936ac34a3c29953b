"""Gaussian noise with per-image generators, shared by the pipelines (initial latents) and the
VAE (posterior samples)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

Generators = torch.Generator | Sequence[torch.Generator] | None


def randn(shape: Sequence[int], generator: Generators = None, device: Any = None,
          dtype: torch.dtype | None = None) -> torch.Tensor:
    """Standard normal noise of ``shape``. With a list of generators (one per image: the caller
    checks the count), image i is drawn from generator i alone, so a batch made with seeds
    s1..s4 equals four runs with one seed each. Noise is drawn on the generator's device (a CPU
    generator gives the same numbers for every target device) and then moved to ``device``."""
    device = torch.device(device or "cpu")
    if isinstance(generator, list | tuple):
        if len(generator) == 1:
            generator = generator[0]
        else:
            return torch.cat([randn((1, *shape[1:]), g, device, dtype) for g in generator])
    draw_on = generator.device if generator is not None else device
    return torch.randn(tuple(shape), generator=generator, device=draw_on, dtype=dtype).to(device)
