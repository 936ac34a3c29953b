"""DeepFloyd IF stage I: the base model of the Imagen cascade (Saharia et al. 2022, sec. 2.4 and
appendix F), a text-conditioned pixel-space diffusion model that samples small images (64 x 64
for IF-I) from Gaussian noise; stage II (``IFSuperResolutionPipeline``) upsamples them."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from diffusion_kernel.errors import PipelineError

from .common import randn, step_kwargs
from .deepfloyd_if_common import IFPipelineBase, IFPipelineOutput


class IFPipeline(IFPipelineBase):
    """``IFPipeline.from_pretrained(folder)``; ``pipe("a cat", output_type="pt").images`` for
    stage II, or PIL images."""

    def __init__(self, tokenizer: Any, text_encoder: Any, unet: Any, scheduler: Any,
                 safety_checker: Any = None, feature_extractor: Any = None,
                 watermarker: Any = None, requires_safety_checker: bool = True):
        if unet is None or scheduler is None:
            raise PipelineError("IFPipeline needs a unet and a scheduler")
        self.register_modules(tokenizer=tokenizer, text_encoder=text_encoder, unet=unet,
                              scheduler=scheduler, safety_checker=safety_checker,
                              feature_extractor=feature_extractor, watermarker=watermarker)
        self.requires_safety_checker = requires_safety_checker

    def generate_arguments(self, num_samples: int, input: Any = None,
                           num_inference_steps: int | None = None,
                           generator: list | None = None) -> dict[str, Any]:
        """``diffusion-kernel generate PROMPT``: as for any text-to-image pipeline, with the
        plain prompt normalisation (the caption cleaner is not included; no warning per run)."""
        kwargs = super().generate_arguments(num_samples, input, num_inference_steps, generator)
        return {**kwargs, "clean_caption": False}

    @torch.no_grad()
    def __call__(
        self,
        prompt: str | list[str] | None = None,
        num_inference_steps: int = 100,
        timesteps: Sequence[int] | None = None,
        guidance_scale: float = 7.0,
        negative_prompt: str | list[str] | None = None,
        num_images_per_prompt: int = 1,
        height: int | None = None,
        width: int | None = None,
        eta: float = 0.0,
        generator: torch.Generator | list[torch.Generator] | None = None,
        prompt_embeds: torch.Tensor | None = None,
        negative_prompt_embeds: torch.Tensor | None = None,
        output_type: str = "pil",
        return_dict: bool = True,
        callback: Callable[[int, Any, torch.Tensor], None] | None = None,
        callback_steps: int = 1,
        clean_caption: bool = True,
        cross_attention_kwargs: dict[str, Any] | None = None,
        callback_on_step_end: Callable | None = None,
        callback_on_step_end_tensor_inputs: Sequence[str] = ("intermediate_images",),
    ) -> IFPipelineOutput | tuple:
        """Generate images for ``prompt`` (a str or a list; or ``prompt_embeds`` from
        ``encode_prompt``).

        ``guidance_scale`` > 1 turns on classifier-free guidance (``negative_prompt`` /
        ``negative_prompt_embeds`` as the unconditional prompt); ``timesteps``: a custom
        descending schedule instead of ``num_inference_steps``; ``height``/``width`` default to
        the U-Net's sample size; ``generator``: one, or one per image; ``output_type``: ``"pil"``
        (watermarked when a watermarker is loaded), ``"np"`` (in [0, 1]) or ``"pt"`` (raw, in
        [-1, 1], for stage II); ``callback(step, t, images)`` every ``callback_steps`` steps and
        ``callback_on_step_end(pipe, step, t, tensors)`` (tensors named in
        ``callback_on_step_end_tensor_inputs``; it may return replacements);
        ``cross_attention_kwargs`` is accepted and not used. Returns
        ``IFPipelineOutput(images, nsfw_detected=None, watermark_detected=None)``."""
        batch = self._check_call(prompt, prompt_embeds, negative_prompt, negative_prompt_embeds,
                                 num_images_per_prompt, num_inference_steps, timesteps,
                                 generator, output_type, callback, callback_steps,
                                 callback_on_step_end_tensor_inputs)
        height = height or self.unet.config.sample_size
        width = width or self.unet.config.sample_size
        device = self._execution_device

        cfg = guidance_scale > 1.0
        prompt_embeds, negative_prompt_embeds = self.encode_prompt(
            prompt, cfg, num_images_per_prompt, device, negative_prompt, prompt_embeds,
            negative_prompt_embeds, clean_caption)
        steps = self._timesteps(num_inference_steps, timesteps, device)
        # x_T ~ N(0, I) in pixel space, scaled for the scheduler
        images = randn((batch * num_images_per_prompt, self.unet.config.in_channels, height,
                        width), generator, device, prompt_embeds.dtype)
        images = images * self.scheduler.init_noise_sigma
        images = self._denoise(images, steps, prompt_embeds, negative_prompt_embeds,
                               guidance_scale, step_kwargs(self.scheduler, generator, eta),
                               callback, callback_steps, callback_on_step_end,
                               callback_on_step_end_tensor_inputs)
        return self._finish(images, output_type, return_dict)
