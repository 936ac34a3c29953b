"""Unconditional latent diffusion (Rombach et al. 2022): a UNet denoises in the latent space of a
VQ-VAE, which decodes the result to pixels."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from diffusion_kernel.pipelines import ImagePipelineOutput

from .common import Generators, sample_of
from .unconditional import UnconditionalImagePipeline


class LDMPipeline(UnconditionalImagePipeline):
    """``LDMPipeline(vqvae, unet, scheduler)``; ``pipe(num_inference_steps=50).images``."""

    model_cpu_offload_seq = "unet->vqvae"

    def __init__(self, vqvae: Any, unet: Any, scheduler: Any):
        self.register_modules(vqvae=vqvae, unet=unet, scheduler=scheduler)

    def __call__(
        self,
        batch_size: int = 1,
        generator: Generators = None,
        eta: float = 0.0,
        num_inference_steps: int | None = None,
        output_type: str = "pil",
        return_dict: bool = True,
        callback_on_step_end: Callable | None = None,
        callback_on_step_end_tensor_inputs: tuple[str, ...] = ("latents",),
    ) -> ImagePipelineOutput | tuple:
        """Sample ``batch_size`` images in ``num_inference_steps`` steps (default: the folder's
        ``default_num_inference_steps``, else 50; ``eta``: DDIM noise level, ignored by others;
        ``output_type``: ``"pil"``, ``"np"``, ``"pt"`` or ``"latent"``); returns
        ``ImagePipelineOutput(images=...)``."""
        steps = self.inference_steps(num_inference_steps, 50)
        return self._generate(batch_size, generator, steps, output_type,
                              return_dict, {"eta": eta}, callback_on_step_end,
                              callback_on_step_end_tensor_inputs)

    def _decode(self, latents: torch.Tensor) -> torch.Tensor:
        return sample_of(self.vqvae.decode(latents / self.vqvae.config.scaling_factor))
