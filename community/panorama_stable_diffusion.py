"""Panoramas (and any size larger than the model was trained on) with MultiDiffusion: Bar-Tal et
al. 2023, "MultiDiffusion: Fusing Diffusion Paths for Controlled Image Generation".

The large latent J is covered by overlapping windows F_i(J) of the model's own size. At every
step each window is denoised on its own, Phi(F_i(J_t)), and the windows are fused by the
least-squares solution of Eq. 3-5, which for plain crops is the per-pixel average of all the
windows covering that pixel:

    J_{t-1} = sum_i F_i^{-1}(W_i * Phi(F_i(J_t))) / sum_i F_i^{-1}(W_i),   W_i = 1

Every window keeps its own copy of the scheduler, so multistep and stochastic schedulers see
one consistent history per window. A window covering the whole latent is plain Stable Diffusion.

    pipe = DiffusionPipeline.from_pretrained(model, custom_pipeline="panorama_stable_diffusion",
                                             trust_remote_code=True)
    pipe("a photo of the dolomites", height=512, width=2048).images[0]
"""

from __future__ import annotations

import copy

import torch
from diffusion_kernel import PipelineError, StableDiffusionPipeline


def windows(height: int, width: int, size: tuple[int, int],
            stride: int) -> list[tuple[int, int, int, int]]:
    """(top, bottom, left, right) of windows of ``size`` every ``stride`` latent pixels, the last
    one flush with the border, so that every pixel is covered."""
    def starts(length: int, window: int) -> list[int]:
        points = list(range(0, length - window + 1, stride))
        return points if points[-1] == length - window else [*points, length - window]

    return [(top, top + size[0], left, left + size[1])
            for top in starts(height, size[0]) for left in starts(width, size[1])]


class PanoramaPipeline(StableDiffusionPipeline):
    """Stable Diffusion at any size (multiples of 8) by MultiDiffusion."""

    @torch.no_grad()
    def __call__(self, prompt: str | list[str], height: int | None = None,
                 width: int | None = None, num_inference_steps: int = 50,
                 guidance_scale: float = 7.5, negative_prompt: str | list[str] | None = None,
                 num_images_per_prompt: int = 1, eta: float = 0.0, generator=None,
                 latents: torch.Tensor | None = None, window_size: int | None = None,
                 stride: int = 8, output_type: str = "pil", return_dict: bool = True):
        """Generate ``height`` x ``width`` images (default: the model's size high and four
        times it wide). ``window_size`` / ``stride``: in latent pixels (default: the UNet's sample
        size, and 8 as in the paper). Returns ``StableDiffusionPipelineOutput``."""
        default = self._default_size(0)
        height = height or default
        width = width or default * 4
        self._check_size(height, width)
        batch = self._check_common(prompt, negative_prompt, None, None, num_images_per_prompt,
                                   generator, output_type, ("latents",))
        if stride < 1:
            raise PipelineError(f"stride must be a positive number of latent pixels, got {stride}")
        device = self._execution_device
        cfg = self._do_cfg(guidance_scale)
        embeds, negative = self.encode_prompt(prompt, device, num_images_per_prompt, cfg,
                                              negative_prompt)
        embeds = torch.cat([negative, embeds]) if cfg else embeds
        steps, _ = self._set_timesteps(num_inference_steps, device)
        latents = self.prepare_latents(batch, self.unet.config.in_channels, height, width,
                                       embeds.dtype, device, generator, latents)
        h, w = latents.shape[-2:]
        size = window_size or self.unet.config.sample_size
        size = (min(size, h), min(size, w))
        views = windows(h, w, size, stride)
        schedulers = [copy.deepcopy(self.scheduler) for _ in views]
        extra = self.step_kwargs(generator, eta)
        for t in self.progress_bar(steps):
            value = torch.zeros_like(latents)
            count = torch.zeros_like(latents)
            for (top, bottom, left, right), scheduler in zip(views, schedulers):
                crop = latents[..., top:bottom, left:right]
                model_input = torch.cat([crop] * 2) if cfg else crop
                model_input = scheduler.scale_model_input(model_input, t)
                eps = self.unet(model_input, t, encoder_hidden_states=embeds).sample
                if cfg:
                    eps_uncond, eps_cond = eps.chunk(2)
                    eps = eps_uncond + guidance_scale * (eps_cond - eps_uncond)
                denoised = scheduler.step(eps, t, crop, **extra).prev_sample
                value[..., top:bottom, left:right] += denoised
                count[..., top:bottom, left:right] += 1
            latents = value / count  # the per-pixel average of the windows (Eq. 5)
        return self.finish(latents, output_type, return_dict)
