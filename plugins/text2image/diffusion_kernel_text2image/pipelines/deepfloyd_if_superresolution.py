"""DeepFloyd IF stage II: a text-conditioned super-resolution diffusion model of the Imagen cascade
(Saharia et al. 2022, sec. 2.4 and 2.5). The low-resolution image is upsampled (bilinear) to the
output size and corrupted with noise at level ``noise_level`` ("noise conditioning
augmentation": the forward process q(z_t | x) of the ``image_noising_scheduler`` at timestep
``noise_level``), concatenated to the U-Net input channels, and the level itself is given to the
U-Net as ``class_labels`` (its ``class_embed_type="timestep"``); the U-Net then denoises fresh
Gaussian noise as stage I does, with the same guidance and dynamic thresholding.

Chained as in the format: stage I's ``prompt_embeds`` / ``negative_prompt_embeds`` are reused
here, and its ``output_type="pt"`` images are this stage's ``image``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import PIL.Image
import torch
import torch.nn.functional as F
from diffusion_kernel.errors import PipelineError

from .common import randn, step_kwargs
from .deepfloyd_if_common import IFPipelineBase, IFPipelineOutput

ImageInput = PIL.Image.Image | np.ndarray | torch.Tensor | list


class IFSuperResolutionPipeline(IFPipelineBase):
    """``IFSuperResolutionPipeline.from_pretrained(folder)``;
    ``pipe(image=stage_1_images, prompt_embeds=..., negative_prompt_embeds=...).images``."""

    def __init__(self, tokenizer: Any, text_encoder: Any, unet: Any, scheduler: Any,
                 image_noising_scheduler: Any, safety_checker: Any = None,
                 feature_extractor: Any = None, watermarker: Any = None,
                 requires_safety_checker: bool = True):
        if unet is None or scheduler is None or image_noising_scheduler is None:
            raise PipelineError("IFSuperResolutionPipeline needs a unet, a scheduler and an "
                                "image_noising_scheduler")
        if unet.config.in_channels % 2:
            raise PipelineError(f"IFSuperResolutionPipeline needs a super-resolution U-Net, whose "
                                f"input is [noisy image, upscaled image] (an even number of "
                                f"channels, 6 for RGB); this one takes "
                                f"{unet.config.in_channels}: is it a stage I U-Net?")
        self.register_modules(tokenizer=tokenizer, text_encoder=text_encoder, unet=unet,
                              scheduler=scheduler, image_noising_scheduler=image_noising_scheduler,
                              safety_checker=safety_checker, feature_extractor=feature_extractor,
                              watermarker=watermarker)
        self.requires_safety_checker = requires_safety_checker

    @torch.no_grad()
    def __call__(
        self,
        prompt: str | list[str] | None = None,
        height: int | None = None,
        width: int | None = None,
        image: ImageInput = None,
        num_inference_steps: int = 50,
        timesteps: Sequence[int] | None = None,
        guidance_scale: float = 4.0,
        negative_prompt: str | list[str] | None = None,
        num_images_per_prompt: int = 1,
        eta: float = 0.0,
        generator: torch.Generator | list[torch.Generator] | None = None,
        prompt_embeds: torch.Tensor | None = None,
        negative_prompt_embeds: torch.Tensor | None = None,
        output_type: str = "pil",
        return_dict: bool = True,
        callback: Callable[[int, Any, torch.Tensor], None] | None = None,
        callback_steps: int = 1,
        cross_attention_kwargs: dict[str, Any] | None = None,
        noise_level: int = 250,
        clean_caption: bool = True,
        callback_on_step_end: Callable | None = None,
        callback_on_step_end_tensor_inputs: Sequence[str] = ("intermediate_images",),
    ) -> IFPipelineOutput | tuple:
        """Upsample ``image`` (one per prompt: stage I's ``"pt"`` output, a tensor in [-1, 1],
        PIL images, or numpy (N, H, W, C) arrays in [-1, 1]) to ``height`` x ``width`` (default:
        the U-Net's sample size) guided by ``prompt`` / ``prompt_embeds``.

        ``noise_level``: the augmentation noise timestep of ``image_noising_scheduler`` (0 <=
        level < its num_train_timesteps); the other arguments are ``IFPipeline``'s. Returns
        ``IFPipelineOutput(images, nsfw_detected=None, watermark_detected=None)``."""
        batch = self._check_call(prompt, prompt_embeds, negative_prompt, negative_prompt_embeds,
                                 num_images_per_prompt, num_inference_steps, timesteps,
                                 generator, output_type, callback, callback_steps,
                                 callback_on_step_end_tensor_inputs)
        levels = self.image_noising_scheduler.config.num_train_timesteps
        if isinstance(noise_level, bool) or not isinstance(noise_level, int) or \
                not 0 <= noise_level < levels:
            raise PipelineError(f"noise_level must be an int in [0, {levels}) (a timestep of "
                                f"image_noising_scheduler), got {noise_level!r}")
        height = height or self.unet.config.sample_size
        width = width or self.unet.config.sample_size
        device = self._execution_device
        image = self._image_tensor(image, batch, height, width)

        cfg = guidance_scale > 1.0
        prompt_embeds, negative_prompt_embeds = self.encode_prompt(
            prompt, cfg, num_images_per_prompt, device, negative_prompt, prompt_embeds,
            negative_prompt_embeds, clean_caption)
        steps = self._timesteps(num_inference_steps, timesteps, device)
        channels = self.unet.config.in_channels // 2
        images = randn((batch * num_images_per_prompt, channels, height, width), generator,
                       device, prompt_embeds.dtype)
        images = images * self.scheduler.init_noise_sigma

        # Noise conditioning augmentation: upsample, then noise to level noise_level.
        image = image.to(device=device, dtype=self.unet.dtype)
        image = image.repeat_interleave(num_images_per_prompt, dim=0)
        upscaled = F.interpolate(image, (height, width), mode="bilinear", align_corners=True)
        level = torch.full((upscaled.shape[0],), noise_level, device=device)
        noise = randn(upscaled.shape, generator, device, upscaled.dtype)
        upscaled = self.image_noising_scheduler.add_noise(upscaled, noise, timesteps=level)
        class_labels = torch.cat([level] * 2) if cfg else level

        images = self._denoise(images, steps, prompt_embeds, negative_prompt_embeds,
                               guidance_scale, step_kwargs(self.scheduler, generator, eta),
                               callback, callback_steps, callback_on_step_end,
                               callback_on_step_end_tensor_inputs, condition=upscaled,
                               class_labels=class_labels)
        return self._finish(images, output_type, return_dict)

    def generate_arguments(self, num_samples: int, input: Any = None,
                           num_inference_steps: int | None = None,
                           generator: list | None = None) -> dict[str, Any]:
        """Stage II enlarges stage I's images: the command line cannot run it alone."""
        raise PipelineError("IFSuperResolutionPipeline enlarges the images of an IF stage I; it "
                            "cannot sample from a prompt alone. Run stage I with diffusion-kernel "
                            "generate (--model the IF-I folder), or chain the two stages in "
                            "Python (docs/deepfloyd-if.md)")

    def _image_tensor(self, image: ImageInput, batch: int, height: int,
                      width: int) -> torch.Tensor:
        """The low-resolution images as one (N, C, h, w) tensor, checked against the prompts and
        the U-Net before any work is done."""
        images = image if isinstance(image, list) else [image]
        if image is None or not images:
            raise PipelineError("IFSuperResolutionPipeline needs image=: the stage I images to "
                                "upsample, one per prompt")
        kinds = {type(im) for im in images}
        if len(kinds) > 1 or not issubclass(kinds.pop(), PIL.Image.Image | np.ndarray |
                                            torch.Tensor):
            raise PipelineError(f"image must be a torch tensor, PIL image or numpy array, or a "
                                f"list of one of those kinds; got "
                                f"{sorted({type(im).__name__ for im in images})}")
        if isinstance(images[0], PIL.Image.Image):
            array = np.stack([np.asarray(im.convert("RGB"), dtype=np.float32) / 127.5 - 1.0
                              for im in images])
            tensor = torch.from_numpy(array.transpose(0, 3, 1, 2))
        elif isinstance(images[0], np.ndarray):
            array = np.stack(images)
            array = array[0] if array.ndim == 5 else array  # a list holding one (N, H, W, C)
            if array.ndim == 3:
                array = array[None]
            tensor = torch.from_numpy(array.transpose(0, 3, 1, 2))
        else:
            tensor = torch.cat([im if im.ndim == 4 else im[None] for im in images])
        channels = self.unet.config.in_channels // 2
        if tensor.ndim != 4 or tensor.shape[1] != channels:
            raise PipelineError(f"image must hold {channels}-channel images (tensors (N, C, H, W), "
                                f"arrays (N, H, W, C)); got shape {tuple(tensor.shape)}")
        if tensor.shape[0] != batch:
            raise PipelineError(f"got {tensor.shape[0]} images for {batch} prompts; stage II takes "
                                f"one low-resolution image per prompt (num_images_per_prompt "
                                f"makes the variations)")
        h, w = tensor.shape[-2:]
        if h > height or w > width or h * width != w * height:
            raise PipelineError(
                f"image is {h} x {w} but this stage makes {height} x {width} images: a "
                f"super-resolution stage enlarges the previous stage's output, so pass that "
                f"output (smaller, same aspect ratio) or set height/width")
        return tensor
