"""Pieces every image pipeline uses: initial noise with per-sample generators, the scheduler's
optional step arguments, model outputs, and the check of ``output_type``."""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from typing import Any

import torch
from diffusion_kernel.errors import PipelineError

Generators = torch.Generator | Sequence[torch.Generator] | None


def check_generators(generator: Generators, batch_size: int) -> None:
    """A list of generators must hold one generator per image of the batch."""
    if isinstance(generator, list | tuple) and len(generator) != batch_size:
        raise PipelineError(
            f"got {len(generator)} generators for {batch_size} images (prompts x "
            f"num_images_per_prompt, or batch_size); pass one generator per image, or a single one")


def randn(shape: Sequence[int], generator: Generators = None, device: Any = None,
          dtype: torch.dtype | None = None) -> torch.Tensor:
    """Standard normal noise of ``shape``. With a list of generators, image i is drawn from
    generator i alone, so a batch made with seeds s1..s4 equals four runs with one seed each.
    Noise is drawn on the generator's device (a CPU generator gives the same numbers for every
    target device) and then moved to ``device``."""
    device = torch.device(device or "cpu")
    if isinstance(generator, list | tuple):
        check_generators(generator, shape[0])
        if len(generator) == 1:
            generator = generator[0]
        else:
            return torch.cat([randn((1, *shape[1:]), g, device, dtype) for g in generator])
    draw_on = generator.device if generator is not None else device
    return torch.randn(tuple(shape), generator=generator, device=draw_on, dtype=dtype).to(device)


def step_kwargs(scheduler: Any, generator: Generators, eta: float | None = None,
                **extra: Any) -> dict[str, Any]:
    """The optional ``step`` arguments this scheduler takes: ``generator`` for stochastic
    samplers, ``eta`` for DDIM (others ignore it), and any ``extra`` it knows."""
    params = inspect.signature(scheduler.step).parameters
    wanted = {"generator": generator, "eta": eta, **extra}
    return {k: v for k, v in wanted.items() if k in params and v is not None}


def sample_of(output: Any) -> torch.Tensor:
    """The tensor a model call returns: ``output.sample`` or the first element of a tuple."""
    if isinstance(output, torch.Tensor):
        return output
    sample = getattr(output, "sample", None)
    return sample if sample is not None else output[0]
