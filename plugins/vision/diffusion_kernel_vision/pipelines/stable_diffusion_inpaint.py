"""Stable Diffusion inpainting: repaint the white part of a mask, keep the black part.

Two kinds of UNet work here:
- inpainting UNets (9 input channels): the latents, the mask at latent size and the VAE latents
  of the masked image are concatenated along channels at every step;
- ordinary UNets (4 channels), the legacy way (RePaint-style blending, Lugmayr et al. 2022):
  after each step the known region is replaced by the image's latents noised to the next
  timestep.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import PIL.Image
import torch
from diffusion_kernel.errors import PipelineError

from ..processing.image_processor import VaeImageProcessor
from .common import Generators, randn
from .stable_diffusion_common import (
    StableDiffusionBase,
    StableDiffusionPipelineOutput,
    TensorInputs,
    mask_to_latent_size,
)


class StableDiffusionInpaintPipeline(StableDiffusionBase):
    """``pipe(prompt, image=image, mask_image=mask).images`` (mask: white = repaint)."""

    _callback_tensor_inputs = ("latents", "prompt_embeds", "negative_prompt_embeds", "mask",
                               "masked_image_latents")

    def __init__(self, vae: Any, text_encoder: Any, tokenizer: Any, unet: Any, scheduler: Any,
                 safety_checker: Any = None, feature_extractor: Any = None,
                 image_encoder: Any = None, requires_safety_checker: bool = False):
        super().__init__(vae, text_encoder, tokenizer, unet, scheduler, safety_checker,
                         feature_extractor, image_encoder, requires_safety_checker)
        self.mask_processor = VaeImageProcessor(vae_scale_factor=self.vae_scale_factor,
                                                do_normalize=False, do_binarize=True,
                                                do_convert_grayscale=True)

    @torch.no_grad()
    def __call__(
        self,
        prompt: str | list[str] | None = None,
        image: Any = None,
        mask_image: Any = None,
        masked_image_latents: torch.Tensor | None = None,
        height: int | None = None,
        width: int | None = None,
        strength: float = 1.0,
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
        clip_skip: int | None = None,
        callback_on_step_end: Callable | None = None,
        callback_on_step_end_tensor_inputs: TensorInputs = ("latents",),
    ) -> StableDiffusionPipelineOutput | tuple[Any, None]:
        """Repaint the region of ``image`` where ``mask_image`` is white (>= 0.5).

        ``image`` / ``mask_image``: PIL, numpy or torch (as for img2img; the mask may be single
        channel) of the same size; both are resized to ``height`` x ``width`` (default: the
        UNet's sample size times the VAE factor). ``strength`` < 1 starts from the noised image
        instead of pure noise. Other arguments as in ``StableDiffusionPipeline``.
        """
        if image is None or mask_image is None:
            raise PipelineError("image and mask_image are both required (mask: white = repaint, "
                                "black = keep)")
        height = height or self._default_size(0)
        width = width or self._default_size(1)
        self._check_size(height, width)
        self._check_strength(strength)
        _check_same_size(image, mask_image)
        in_channels = self.unet.config.in_channels
        latent_channels = self.vae.config.latent_channels
        if in_channels not in (latent_channels, 2 * latent_channels + 1):
            raise PipelineError(
                f"the UNet takes {in_channels} input channels; inpainting needs "
                f"{latent_channels} (an ordinary UNet) or {2 * latent_channels + 1} (an "
                f"inpainting UNet: latents + mask + masked image latents)")
        batch = self._check_common(prompt, negative_prompt, prompt_embeds,
                                   negative_prompt_embeds, num_images_per_prompt, generator,
                                   output_type, callback_on_step_end_tensor_inputs)
        device = self._execution_device
        cfg = self._do_cfg(guidance_scale)
        prompt_embeds, negative_prompt_embeds = self._call_embeddings(
            prompt, negative_prompt, prompt_embeds, negative_prompt_embeds, num_images_per_prompt,
            guidance_scale, clip_skip, cross_attention_kwargs)
        _, count = self._set_timesteps(num_inference_steps, device, timesteps, sigmas)
        steps = self._strength_timesteps(count, strength)
        dtype = prompt_embeds.dtype

        # Initial latents: pure noise at full strength, else the image's latents noised.
        pixels = self.image_processor.preprocess(image, height=height, width=width)
        pixels = pixels.to(device=device, dtype=dtype)
        legacy = in_channels == latent_channels
        image_latents = None
        if legacy or (latents is None and strength < 1.0):
            image_latents = self.encode_images(pixels, batch, generator)
        shape = (batch, latent_channels, height // self.vae_scale_factor,
                 width // self.vae_scale_factor)
        if latents is None:
            noise = randn(shape, generator, device, dtype)
            latents = (noise * self.scheduler.init_noise_sigma if strength == 1.0 else
                       self.scheduler.add_noise(image_latents, noise, steps[:1].repeat(batch)))
        else:
            noise = latents.to(device=device, dtype=dtype)
            latents = noise * self.scheduler.init_noise_sigma

        # The mask (1 = repaint) and the latents of the image with the repainted part blanked.
        mask = self.mask_processor.preprocess(mask_image, height=height, width=width)
        if masked_image_latents is None:
            masked_image_latents = self.encode_images(pixels * (mask < 0.5).to(device), batch,
                                                      generator)
        masked_image_latents = masked_image_latents.to(device=device, dtype=dtype)
        mask = mask_to_latent_size(mask, height, width, self.vae_scale_factor)
        mask = _batch_of(mask.to(device=device, dtype=dtype), batch)
        masked_image_latents = _batch_of(masked_image_latents, batch)

        conditioning = None
        if not legacy:
            conditioning = torch.cat([mask, masked_image_latents], dim=1)
            conditioning = torch.cat([conditioning] * 2) if cfg else conditioning

        def blend_known_region(i: int, latents: torch.Tensor) -> torch.Tensor:
            known = image_latents
            if i < len(steps) - 1:  # the known region, noised to the level of the next step
                known = self.scheduler.add_noise(image_latents, noise, steps[i + 1:i + 2])
            return (1 - mask) * known + mask * latents

        latents = self.denoise(latents, steps, prompt_embeds, negative_prompt_embeds,
                               guidance_scale, self.step_kwargs(generator, eta),
                               callback_on_step_end, callback_on_step_end_tensor_inputs,
                               cross_attention_kwargs=cross_attention_kwargs,
                               conditioning=conditioning,
                               after_step=blend_known_region if legacy else None,
                               callback_values={"mask": mask,
                                                "masked_image_latents": masked_image_latents})
        return self.finish(latents, output_type, return_dict)


def _batch_of(tensor: torch.Tensor, batch_size: int) -> torch.Tensor:
    if tensor.shape[0] == batch_size:
        return tensor
    if batch_size % tensor.shape[0]:
        raise PipelineError(f"got {tensor.shape[0]} masks or masked images for {batch_size} "
                            f"images; pass one, one per prompt, or one per image")
    return tensor.repeat_interleave(batch_size // tensor.shape[0], dim=0)


def _spatial_size(image: Any) -> tuple[int, int]:
    """(height, width) of a PIL image, a numpy image (H, W[, C]) / (N, H, W[, C]) or a tensor
    (..., H, W)."""
    if isinstance(image, list | tuple):
        image = image[0]
    if isinstance(image, PIL.Image.Image):
        return image.height, image.width
    if isinstance(image, np.ndarray):
        if image.ndim == 2 or (image.ndim == 3 and image.shape[-1] in (1, 3, 4)):
            return tuple(image.shape[:2])
        return tuple(image.shape[1:3])
    if isinstance(image, torch.Tensor):
        return tuple(image.shape[-2:])
    raise PipelineError(f"image and mask_image must be PIL images, numpy arrays or tensors, got "
                        f"{type(image).__name__}")


def _check_same_size(image: Any, mask_image: Any) -> None:
    if isinstance(image, torch.Tensor) and image.ndim == 4 and image.shape[1] == 4:
        return  # latents given as the image: the mask is in pixels
    image_size, mask_size = _spatial_size(image), _spatial_size(mask_image)
    if image_size != mask_size:
        raise PipelineError(f"mask_image is {mask_size[0]}x{mask_size[1]} but image is "
                            f"{image_size[0]}x{image_size[1]} (height x width); pass a mask of "
                            f"the image's size")
