"""Denoising diffusion implicit models: unconditional sampling with a UNet and the DDIM scheduler
(Song et al. 2021, Eq. 12; ``eta`` interpolates between DDIM (0) and DDPM-like sampling (1))."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from diffusion_kernel.pipelines import ImagePipelineOutput

from .common import Generators
from .unconditional import UnconditionalImagePipeline


class DDIMPipeline(UnconditionalImagePipeline):
    """``DDIMPipeline(unet, scheduler)``: any scheduler given is rebuilt as a ``DDIMScheduler``
    from its config (the training schedule carries over)."""

    def __init__(self, unet: Any, scheduler: Any):
        if type(scheduler).__name__ != "DDIMScheduler":
            from diffusion_kernel import registry

            scheduler = registry.schedulers.get("DDIMScheduler").from_config(scheduler.config)
        self.register_modules(unet=unet, scheduler=scheduler)

    def __call__(
        self,
        batch_size: int = 1,
        generator: Generators = None,
        eta: float = 0.0,
        num_inference_steps: int | None = None,
        use_clipped_model_output: bool | None = None,
        output_type: str = "pil",
        return_dict: bool = True,
        callback_on_step_end: Callable | None = None,
        callback_on_step_end_tensor_inputs: tuple[str, ...] = ("latents",),
    ) -> ImagePipelineOutput | tuple:
        """Sample ``batch_size`` images in ``num_inference_steps`` DDIM steps (default: the folder's
        ``default_num_inference_steps``, else 50) with noise level ``eta`` (``generator``: one or
        one per image; ``output_type``: ``"pil"``, ``"np"``, ``"pt"``); returns
        ``ImagePipelineOutput(images=...)``."""
        extra = {"eta": eta, "use_clipped_model_output": use_clipped_model_output}
        steps = self.inference_steps(num_inference_steps, 50)
        return self._generate(batch_size, generator, steps, output_type,
                              return_dict, extra, callback_on_step_end,
                              callback_on_step_end_tensor_inputs)
