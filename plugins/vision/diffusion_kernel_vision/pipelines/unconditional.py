"""The loop shared by unconditional image pipelines (DDPM, DDIM, PNDM, latent diffusion): draw
Gaussian noise, denoise it with the scheduler, turn the result into images."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from diffusion_kernel.pipelines import DiffusionPipeline, ImagePipelineOutput

from ..processing.image_processor import VaeImageProcessor, check_output_type
from .common import Generators, check_generators, randn, sample_of, step_kwargs


class UnconditionalImagePipeline(DiffusionPipeline):
    """Base of pipelines that sample ``batch_size`` images from noise with a UNet and a
    scheduler; subclasses define ``__call__`` with their own defaults and call ``_generate``."""

    model_cpu_offload_seq = "unet"

    def _sample_shape(self, batch_size: int) -> tuple[int, ...]:
        size = self.unet.config.sample_size
        size = (size, size) if isinstance(size, int) else tuple(size)
        return (batch_size, self.unet.config.in_channels, *size)

    def _generate(
        self,
        batch_size: int,
        generator: Generators,
        num_inference_steps: int,
        output_type: str,
        return_dict: bool,
        step_extra: dict[str, Any] | None = None,
        callback_on_step_end: Callable | None = None,
        callback_on_step_end_tensor_inputs: tuple[str, ...] = ("latents",),
    ) -> ImagePipelineOutput | tuple:
        check_output_type(output_type)
        check_generators(generator, batch_size)
        self.check_callback_inputs(callback_on_step_end_tensor_inputs)
        device = self._execution_device
        # The run's schedule first: sigma-space schedulers set init_noise_sigma from it.
        self.scheduler.set_timesteps(num_inference_steps)
        latents = randn(self._sample_shape(batch_size), generator, device, self.unet.dtype)
        latents = latents * self.scheduler.init_noise_sigma
        extra = step_kwargs(self.scheduler, generator, **(step_extra or {}))
        with torch.no_grad():
            for i, t in enumerate(self.progress_bar(self.scheduler.timesteps)):
                model_input = self.scheduler.scale_model_input(latents, t)
                prediction = sample_of(self.unet(model_input, t))
                latents = self.scheduler.step(prediction, t, latents, **extra).prev_sample
                latents = self.step_end(callback_on_step_end, i, t,
                                        callback_on_step_end_tensor_inputs,
                                        {"latents": latents}).get("latents", latents)
            images = latents if output_type == "latent" else self._decode(latents)
        self.maybe_free_model_hooks()
        images = VaeImageProcessor(do_resize=False).postprocess(images, output_type)
        return ImagePipelineOutput(images=images) if return_dict else (images,)

    def _decode(self, samples: torch.Tensor) -> torch.Tensor:
        """Pixel-space pipelines sample images directly; latent ones override this."""
        return samples
