"""Stable Diffusion text-to-image (Rombach et al. 2022): CLIP text embeddings condition a UNet
that denoises VAE latents under classifier-free guidance; the VAE decodes the result."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from diffusion_kernel.errors import PipelineError

from .common import Generators
from .stable_diffusion_common import (
    StableDiffusionBase,
    StableDiffusionPipelineOutput,
    TensorInputs,
)


class StableDiffusionPipeline(StableDiffusionBase):
    """``StableDiffusionPipeline.from_pretrained(folder)``; ``pipe("a cat").images[0]``."""

    @torch.no_grad()
    def __call__(
        self,
        prompt: str | list[str] | None = None,
        height: int | None = None,
        width: int | None = None,
        num_inference_steps: int = 50,
        timesteps: list[int] | None = None,
        sigmas: list[float] | None = None,
        guidance_scale: float = 7.5,
        negative_prompt: str | list[str] | None = None,
        num_images_per_prompt: int = 1,
        eta: float = 0.0,
        generator: Generators = None,
        latents: torch.Tensor | None = None,
        prompt_embeds: torch.Tensor | None = None,
        negative_prompt_embeds: torch.Tensor | None = None,
        output_type: str = "pil",
        return_dict: bool = True,
        cross_attention_kwargs: dict[str, Any] | None = None,
        guidance_rescale: float = 0.0,
        clip_skip: int | None = None,
        callback_on_step_end: Callable | None = None,
        callback_on_step_end_tensor_inputs: TensorInputs = ("latents",),
    ) -> StableDiffusionPipelineOutput | tuple[Any, None]:
        """Generate images for ``prompt`` (a str or a list; or ``prompt_embeds``).

        ``height``/``width``: multiples of 8 (default: the UNet's sample size times the VAE
        factor); ``guidance_scale`` > 1 turns on classifier-free guidance (with
        ``negative_prompt`` / ``negative_prompt_embeds`` as the unconditional prompt);
        ``guidance_rescale`` in [0, 1] pulls the guided prediction's spread back towards the
        conditional one's (Lin et al. 2023, Sec. 3.4; 0.7 there), against over-exposure with
        zero-terminal-SNR models;
        ``generator``: one, or one per image (images then do not depend on the batch);
        ``latents``: the initial noise to start from; ``eta``: DDIM's noise level;
        ``output_type``: ``"pil"``, ``"np"``, ``"pt"`` or ``"latent"``;
        ``callback_on_step_end(pipe, step, t, tensors)`` sees the tensors named in
        ``callback_on_step_end_tensor_inputs`` and may return replacements.
        Returns ``StableDiffusionPipelineOutput(images, nsfw_content_detected=None)``.
        """
        height = height or self._default_size(0)
        width = width or self._default_size(1)
        self._check_size(height, width)
        if not 0.0 <= guidance_rescale <= 1.0:
            raise PipelineError(f"guidance_rescale must be between 0 and 1 (the paper uses 0.7), "
                                f"got {guidance_rescale}")
        batch = self._check_common(prompt, negative_prompt, prompt_embeds,
                                   negative_prompt_embeds, num_images_per_prompt, generator,
                                   output_type, callback_on_step_end_tensor_inputs)
        device = self._execution_device
        prompt_embeds, negative_prompt_embeds = self._call_embeddings(
            prompt, negative_prompt, prompt_embeds, negative_prompt_embeds, num_images_per_prompt,
            guidance_scale, clip_skip, cross_attention_kwargs)
        steps, _ = self._set_timesteps(num_inference_steps, device, timesteps, sigmas)
        latents = self.prepare_latents(batch, self.unet.config.in_channels, height, width,
                                       prompt_embeds.dtype, device, generator, latents)
        latents = self.denoise(latents, steps, prompt_embeds, negative_prompt_embeds,
                               guidance_scale, self.step_kwargs(generator, eta),
                               callback_on_step_end, callback_on_step_end_tensor_inputs,
                               cross_attention_kwargs=cross_attention_kwargs,
                               guidance_rescale=guidance_rescale)
        return self.finish(latents, output_type, return_dict)
