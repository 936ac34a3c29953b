"""Denoising diffusion probabilistic models: unconditional sampling with a UNet and the DDPM
scheduler (Ho et al. 2020, Algorithm 2)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from diffusion_kernel.pipelines import ImagePipelineOutput

from .common import Generators
from .unconditional import UnconditionalImagePipeline


class DDPMPipeline(UnconditionalImagePipeline):
    """``DDPMPipeline(unet, scheduler)``; ``pipe(batch_size=4, generator=...).images``."""

    def __init__(self, unet: Any, scheduler: Any):
        self.register_modules(unet=unet, scheduler=scheduler)

    def __call__(
        self,
        batch_size: int = 1,
        generator: Generators = None,
        num_inference_steps: int | None = None,
        output_type: str = "pil",
        return_dict: bool = True,
        callback_on_step_end: Callable | None = None,
        callback_on_step_end_tensor_inputs: tuple[str, ...] = ("latents",),
    ) -> ImagePipelineOutput | tuple:
        """Sample ``batch_size`` images in ``num_inference_steps`` ancestral steps (default: the
        folder's recommended ``default_num_inference_steps``, else 1000, diffusers' default).

        ``generator``: one ``torch.Generator`` or one per image; ``output_type``: ``"pil"``,
        ``"np"`` or ``"pt"``. Returns ``ImagePipelineOutput(images=...)`` (a tuple if
        ``return_dict=False``)."""
        steps = self.inference_steps(num_inference_steps, 1000)
        return self._generate(batch_size, generator, steps, output_type,
                              return_dict, None, callback_on_step_end,
                              callback_on_step_end_tensor_inputs)
