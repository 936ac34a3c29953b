"""Walks between seeds and prompts with Stable Diffusion: frames for a video that morphs one
image into the next.

Between consecutive (prompt, seed) pairs the initial noise is interpolated spherically (slerp,
Shoemake 1985): Gaussian noise in high dimension lies near a sphere of radius sqrt(d), and a
straight line between two samples passes through vectors of too small a norm, which the model
has never seen; slerp keeps the norm. Prompt embeddings are interpolated linearly (``"lerp"``,
default) or spherically (``"slerp"``). Frame ``k`` is written as ``frame_{k:06d}.png``.

    pipe = DiffusionPipeline.from_pretrained(model, custom_pipeline="interpolate_stable_diffusion",
                                             trust_remote_code=True)
    pipe.walk(["a cat", "a dog"], seeds=[1, 2], num_interpolation_steps=8, output_dir="frames")
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import torch
from diffusion_kernel import PipelineError, StableDiffusionPipeline


def slerp(t: float, v0: torch.Tensor, v1: torch.Tensor, dot_threshold: float = 0.9995):
    """Spherical interpolation from ``v0`` (t=0) to ``v1`` (t=1) along the great circle through
    them (exactly ``v0`` and ``v1`` at the ends); nearly parallel vectors are interpolated
    linearly, where the sine formula loses precision."""
    a, b = v0.double().flatten(), v1.double().flatten()
    cos = float(torch.dot(a, b) / (a.norm() * b.norm()))
    if abs(cos) > dot_threshold:
        return lerp(t, v0, v1)
    theta = math.acos(cos)
    c0 = math.sin((1 - t) * theta) / math.sin(theta)
    c1 = math.sin(t * theta) / math.sin(theta)
    return c0 * v0 + c1 * v1


def lerp(t: float, v0: torch.Tensor, v1: torch.Tensor) -> torch.Tensor:
    return (1 - t) * v0 + t * v1


class InterpolationPipeline(StableDiffusionPipeline):
    """Stable Diffusion with ``walk``: frames interpolating between seeds and prompts."""

    def noise_for_seed(self, seed: int, height: int, width: int) -> torch.Tensor:
        """The initial noise ``pipe(..., generator=torch.Generator().manual_seed(seed))`` draws
        (on the CPU, so the same for every device)."""
        shape = (1, self.unet.config.in_channels, height // self.vae_scale_factor,
                 width // self.vae_scale_factor)
        return torch.randn(shape, generator=torch.Generator().manual_seed(seed))

    @torch.no_grad()
    def walk(self, prompts: list[str], seeds: list[int], num_interpolation_steps: int = 6,
             output_dir: str | os.PathLike = "frames", interpolation: str = "lerp",
             height: int | None = None, width: int | None = None, guidance_scale: float = 7.5,
             negative_prompt: str | None = None, **call_kwargs) -> list[Path]:
        """Render ``num_interpolation_steps`` frames from each (prompt, seed) to the next, and
        the last pair itself: ``(len(prompts) - 1) * num_interpolation_steps + 1`` PNG files in
        ``output_dir`` (created). ``interpolation``: ``"lerp"`` or ``"slerp"`` for the prompt
        embeddings (the noise is always slerped). Other keyword arguments go to each call
        (``num_inference_steps``...). Returns the frame paths in order."""
        if len(prompts) != len(seeds) or len(prompts) < 2:
            raise PipelineError(f"walk needs at least two prompts and one seed per prompt, got "
                                f"{len(prompts)} prompts and {len(seeds)} seeds")
        if interpolation not in ("lerp", "slerp"):
            raise PipelineError(f"interpolation must be 'lerp' or 'slerp', got {interpolation!r}")
        if num_interpolation_steps < 1:
            raise PipelineError("num_interpolation_steps must be at least 1")
        height = height or self._default_size(0)
        width = width or self._default_size(1)
        mix = slerp if interpolation == "slerp" else lerp
        device = self._execution_device
        cfg = self._do_cfg(guidance_scale)
        encoded = [self.encode_prompt(p, device, 1, cfg, negative_prompt) for p in prompts]
        noises = [self.noise_for_seed(s, height, width) for s in seeds]
        out = Path(output_dir)
        out.mkdir(parents=True, exist_ok=True)
        plan = [(i, k / num_interpolation_steps) for i in range(len(prompts) - 1)
                for k in range(num_interpolation_steps)] + [(len(prompts) - 2, 1.0)]
        paths = []
        for frame, (i, t) in enumerate(plan):
            (embeds0, negative0), (embeds1, _) = encoded[i], encoded[i + 1]
            image = self(prompt_embeds=mix(t, embeds0, embeds1), negative_prompt_embeds=negative0,
                         latents=slerp(t, noises[i], noises[i + 1]), height=height, width=width,
                         guidance_scale=guidance_scale, output_type="pil",
                         **call_kwargs).images[0]
            paths.append(out / f"frame_{frame:06d}.png")
            image.save(paths[-1])
        return paths
