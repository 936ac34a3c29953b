"""Standard normal draws with one generator per sample, shared by every plugin that draws noise:
the schedulers' stochastic steps, the pipelines' initial latents and the autoencoders' posterior
samples.

With a list of generators, sample i (index i along dim 0) is drawn from generator i alone, so a
batch made with seeds s1..s4 equals four batch-1 runs with those seeds (the convention of the
diffusers format, whose draws for the same seeds these equal). Noise is drawn on the
generator's device and then moved: a CPU generator gives the same numbers whatever device the
result lives on.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

Generators = torch.Generator | Sequence[torch.Generator] | None


def randn(shape: Sequence[int], generator: Generators = None, device: Any = None,
          dtype: torch.dtype | None = None, out: torch.Tensor | None = None) -> torch.Tensor:
    """Standard normal noise of ``shape`` as ``dtype`` on ``device`` (default: the CPU), or
    written into ``out`` (its shape, dtype and device win). A list of generators must hold one
    per sample; callers check the count and say in their own words what went wrong.

    Drawing into ``out`` gives the same numbers as a new tensor: ``randn`` is ``normal_`` on fresh
    memory. A step that reuses a buffer this way saves an allocation per call."""
    if isinstance(generator, list | tuple):
        if len(generator) == 1:
            generator = generator[0]
        else:
            if out is not None:
                for i, g in enumerate(generator):
                    randn(out[i:i + 1].shape, g, out=out[i:i + 1])
                return out
            return torch.cat([randn((1, *shape[1:]), g, device, dtype) for g in generator])
    if out is not None:
        draw_on = generator.device if generator is not None else out.device
        if draw_on == out.device:
            return out.normal_(generator=generator)
        return out.copy_(torch.randn(out.shape, generator=generator, device=draw_on,
                                     dtype=out.dtype))
    device = torch.device(device or "cpu")
    draw_on = generator.device if generator is not None else device
    return torch.randn(tuple(shape), generator=generator, device=draw_on, dtype=dtype).to(device)
