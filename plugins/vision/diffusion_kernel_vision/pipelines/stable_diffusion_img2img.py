"""Stable Diffusion image-to-image (SDEdit, Meng et al. 2022): noise the VAE latents of an image
to an intermediate timestep chosen by ``strength`` and denoise from there with the prompt."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from diffusion_kernel.errors import PipelineError

from .common import Generators, randn
from .stable_diffusion_common import (
    StableDiffusionBase,
    StableDiffusionPipelineOutput,
    TensorInputs,
)


class StableDiffusionImg2ImgPipeline(StableDiffusionBase):
    """``pipe(prompt, image=init_image, strength=0.75).images``."""

    @torch.no_grad()
    def __call__(
        self,
        prompt: str | list[str] | None = None,
        image: Any = None,
        strength: float = 0.8,
        num_inference_steps: int = 50,
        timesteps: list[int] | None = None,
        sigmas: list[float] | None = None,
        guidance_scale: float = 7.5,
        negative_prompt: str | list[str] | None = None,
        num_images_per_prompt: int = 1,
        eta: float = 0.0,
        generator: Generators = None,
        prompt_embeds: torch.Tensor | None = None,
        negative_prompt_embeds: torch.Tensor | None = None,
        output_type: str = "pil",
        return_dict: bool = True,
        cross_attention_kwargs: dict[str, Any] | None = None,
        clip_skip: int | None = None,
        callback_on_step_end: Callable | None = None,
        callback_on_step_end_tensor_inputs: TensorInputs = ("latents",),
    ) -> StableDiffusionPipelineOutput | tuple[Any, None]:
        """Transform ``image`` (PIL, numpy (H, W, C) in [0, 1], tensor (C, H, W) in [0, 1],
        a list or a batch; or VAE latents) towards ``prompt``.

        ``strength`` in [0, 1]: how much of the schedule to run (0 keeps the image, 1 ignores
        it); only ``int(num_inference_steps * strength)`` steps run. Other arguments as in
        ``StableDiffusionPipeline``. Returns ``StableDiffusionPipelineOutput``.
        """
        if image is None:
            raise PipelineError("image is required: pass the image to transform (PIL, numpy or "
                                "torch)")
        self._check_strength(strength)
        batch = self._check_common(prompt, negative_prompt, prompt_embeds,
                                   negative_prompt_embeds, num_images_per_prompt, generator,
                                   output_type, callback_on_step_end_tensor_inputs)
        device = self._execution_device
        prompt_embeds, negative_prompt_embeds = self._call_embeddings(
            prompt, negative_prompt, prompt_embeds, negative_prompt_embeds, num_images_per_prompt,
            guidance_scale, clip_skip, cross_attention_kwargs)
        pixels = self.image_processor.preprocess(image)
        all_steps, count = self._set_timesteps(num_inference_steps, device, timesteps, sigmas)
        steps = self._strength_timesteps(count, strength)
        dtype = prompt_embeds.dtype
        clean = self.encode_images(pixels.to(device=device, dtype=dtype), batch, generator)
        noise = randn(clean.shape, generator, device, dtype)
        latents = self.scheduler.add_noise(clean, noise, steps[:1].repeat(batch))
        latents = self.denoise(latents, steps, prompt_embeds, negative_prompt_embeds,
                               guidance_scale, self.step_kwargs(generator, eta),
                               callback_on_step_end, callback_on_step_end_tensor_inputs,
                               cross_attention_kwargs=cross_attention_kwargs)
        return self.finish(latents, output_type, return_dict)
