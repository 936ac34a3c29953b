"""Pseudo numerical methods for diffusion models: unconditional sampling with a UNet and the
PNDM / PLMS scheduler (Liu et al. 2022, Algorithm 2)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from diffusion_kernel.pipelines import ImagePipelineOutput

from .common import Generators
from .unconditional import UnconditionalImagePipeline


class PNDMPipeline(UnconditionalImagePipeline):
    """``PNDMPipeline(unet, scheduler)``; ``pipe(num_inference_steps=50).images``."""

    def __init__(self, unet: Any, scheduler: Any):
        self.register_modules(unet=unet, scheduler=scheduler)

    def __call__(
        self,
        batch_size: int = 1,
        num_inference_steps: int | None = None,
        generator: Generators = None,
        output_type: str = "pil",
        return_dict: bool = True,
        callback_on_step_end: Callable | None = None,
        callback_on_step_end_tensor_inputs: tuple[str, ...] = ("latents",),
    ) -> ImagePipelineOutput | tuple:
        """Sample ``batch_size`` images in ``num_inference_steps`` steps (default: the folder's
        ``default_num_inference_steps``, else 50; ``generator``: one or one per image;
        ``output_type``: ``"pil"``, ``"np"`` or ``"pt"``); returns
        ``ImagePipelineOutput(images=...)``."""
        steps = self.inference_steps(num_inference_steps, 50)
        return self._generate(batch_size, generator, steps, output_type,
                              return_dict, None, callback_on_step_end,
                              callback_on_step_end_tensor_inputs)
