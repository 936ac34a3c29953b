"""Pieces every image pipeline uses: initial noise with per-sample generators, the scheduler's
optional step arguments, model outputs, and the check of ``output_type``."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from diffusion_kernel.errors import PipelineError
from diffusion_kernel.noise import Generators
from diffusion_kernel.noise import randn as _draw
from diffusion_kernel.sampling_loop import sample_of, step_kwargs  # noqa: F401 (re-exported)


def check_generators(generator: Generators, batch_size: int) -> None:
    """A list of generators must hold one generator per image of the batch."""
    if isinstance(generator, list | tuple) and len(generator) != batch_size:
        raise PipelineError(
            f"got {len(generator)} generators for {batch_size} images (prompts x "
            f"num_images_per_prompt, or batch_size); pass one generator per image, or a single one")


def randn(shape: Sequence[int], generator: Generators = None, device: Any = None,
          dtype: torch.dtype | None = None) -> torch.Tensor:
    """The kernel's ``noise.randn`` after checking that a list of generators has one per image."""
    check_generators(generator, shape[0])
    return _draw(shape, generator, device, dtype)


