"""Score-SDE, variance exploding (Song et al. 2021, "Score-Based Generative Modeling through
Stochastic Differential Equations"): predictor-corrector sampling (Algorithm 2) of the VE SDE with
a score network (NCSN++, the ``UNet2DModel`` with Fourier time and skip blocks) and the
``ScoreSdeVeScheduler``.

From x ~ N(0, sigma_max^2 I), for each noise level sigma_i from sigma_max down:
``correct_steps`` Langevin corrector steps (Algorithm 5, ``step_correct``), then one
reverse-diffusion predictor step (Algorithm 3 / eq. 46, ``step_pred``); the model is called with
sigma_i itself. The output is the last predictor step's noise-free mean, clipped to [0, 1] (the
data range of the NCSN++ checkpoints).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from diffusion_kernel.errors import PipelineError
from diffusion_kernel.pipelines import DiffusionPipeline, ImagePipelineOutput
from diffusion_kernel.sampling_loop import sampling

from ..processing.image_processor import VaeImageProcessor, check_output_type
from .common import Generators, check_generators, randn, sample_of


class ScoreSdeVePipeline(DiffusionPipeline):
    """``ScoreSdeVePipeline(unet, scheduler)``; ``pipe(num_inference_steps=2000).images``."""

    model_cpu_offload_seq = "unet"

    def __init__(self, unet, scheduler):
        self.register_modules(unet=unet, scheduler=scheduler)

    @torch.no_grad()
    def __call__(
        self,
        batch_size: int = 1,
        num_inference_steps: int = 2000,
        generator: Generators = None,
        output_type: str = "pil",
        return_dict: bool = True,
        callback_on_step_end: Callable | None = None,
        callback_on_step_end_tensor_inputs: tuple[str, ...] = ("latents",),
    ) -> ImagePipelineOutput | tuple:
        """Sample ``batch_size`` images (``generator``: one, or one per image) with
        ``num_inference_steps`` predictor steps, each after ``scheduler.config.correct_steps``
        corrector steps. ``output_type``: ``"pil"``, ``"np"`` ((N, H, W, C) in [0, 1]) or
        ``"pt"`` ((N, C, H, W) in [0, 1]); ``callback_on_step_end(pipe, i, t, {"latents": x})``
        after each predictor step may return a replacement. Returns
        ``ImagePipelineOutput(images)``."""
        check_output_type(output_type)
        if output_type == "latent":
            raise PipelineError("ScoreSdeVePipeline works in pixel space: use output_type 'pil', "
                                "'np' or 'pt'")
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise PipelineError(f"batch_size must be a positive int, got {batch_size!r}")
        check_generators(generator, batch_size)
        self.check_callback_inputs(callback_on_step_end_tensor_inputs)
        size = self.unet.config.sample_size
        size = (size, size) if isinstance(size, int) else tuple(size)
        # The format samples 3 channels whatever the U-Net's config says.
        shape = (batch_size, 3, *size)
        device = self._execution_device
        sample = randn(shape, generator, "cpu", None) * self.scheduler.init_noise_sigma
        sample = sample.to(device)
        self.scheduler.set_timesteps(num_inference_steps)
        self.scheduler.set_sigmas(num_inference_steps)
        mean = sample
        with sampling():  # inference mode; what leaves it is clamped outside: ordinary
            for i, t in enumerate(self.progress_bar(self.scheduler.timesteps)):
                sigma = self.scheduler.sigmas[i] * torch.ones(batch_size, device=device)
                for _ in range(self.scheduler.config.correct_steps):  # Langevin corrector
                    score = sample_of(self.unet(sample, sigma))
                    sample = self.scheduler.step_correct(score, sample, generator=generator)[0]
                score = sample_of(self.unet(sample, sigma))  # reverse-diffusion predictor
                sample, mean = self.scheduler.step_pred(score, t, sample, generator=generator,
                                                        return_dict=False)
                replaced = self.step_end(callback_on_step_end, i, t,
                                         callback_on_step_end_tensor_inputs, {"latents": sample})
                sample = replaced.get("latents", sample)
        self.maybe_free_model_hooks()
        images = VaeImageProcessor(do_resize=False, do_normalize=False).postprocess(
            mean.clamp(0, 1), output_type)
        return ImagePipelineOutput(images=images) if return_dict else (images,)
