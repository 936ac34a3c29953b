"""Dance Diffusion (Harmonai): unconditional audio waveforms from a ``UNet1DModel`` that predicts
the velocity of the v-diffusion process, sampled with IPNDM (``IPNDMScheduler``) by default.

The length is chosen in seconds; it is rounded up to a multiple of the U-Net's total
downsampling (2^number of up blocks) for sampling and cut back afterwards, as the diffusers
format's pipeline does.
"""

from __future__ import annotations

from typing import Any

import torch
from diffusion_kernel.errors import PipelineError
from diffusion_kernel.noise import Generators
from diffusion_kernel.noise import randn as draw_noise
from diffusion_kernel.pipelines import DiffusionPipeline

from .outputs import AudioPipelineOutput


class DanceDiffusionPipeline(DiffusionPipeline):
    """``DanceDiffusionPipeline(unet, scheduler)``; ``pipe(batch_size=2).audios`` is a float32
    array (batch, channels, samples) in [-1, 1] at ``pipe.unet.config.sample_rate``."""

    model_cpu_offload_seq = "unet"

    def __init__(self, unet: Any, scheduler: Any):
        self.register_modules(unet=unet, scheduler=scheduler)

    def _lengths(self, audio_length_in_s: float | None) -> tuple[int, int]:
        """(samples to generate, samples to keep)."""
        config = self.unet.config
        if config.sample_rate is None:
            raise PipelineError("the U-Net's config has no sample_rate, so a length in seconds "
                                "means nothing; set sample_rate in unet/config.json")
        if audio_length_in_s is None:
            audio_length_in_s = config.sample_size / config.sample_rate
        samples = audio_length_in_s * config.sample_rate
        factor = 2 ** len(self.unet.up_blocks)
        if samples < 3 * factor:
            raise PipelineError(
                f"audio_length_in_s={audio_length_in_s} is too short for this U-Net, which "
                f"halves the length {len(self.unet.up_blocks)} times: use at least "
                f"{3 * factor / config.sample_rate} s ({3 * factor} samples)")
        keep = int(samples)
        if samples % factor:
            samples = (samples // factor + 1) * factor
        return int(samples), keep

    @torch.no_grad()
    def __call__(
        self,
        batch_size: int = 1,
        num_inference_steps: int | None = None,
        generator: Generators = None,
        audio_length_in_s: float | None = None,
        return_dict: bool = True,
    ) -> AudioPipelineOutput | tuple:
        """Sample ``batch_size`` clips of ``audio_length_in_s`` seconds (default: the U-Net's
        ``sample_size``) in ``num_inference_steps`` steps (default: the folder's recommended
        count, else 100). ``generator``: one
        ``torch.Generator`` or one per clip (clip i then depends on generator i alone).
        Returns ``AudioPipelineOutput(audios)`` (a tuple with ``return_dict=False``)."""
        if isinstance(generator, list | tuple) and len(generator) != batch_size:
            raise PipelineError(f"got {len(generator)} generators for batch_size={batch_size}; "
                                f"pass one per clip, or a single one")
        samples, keep = self._lengths(audio_length_in_s)
        dtype = self.unet.dtype
        shape = (batch_size, self.unet.config.in_channels, samples)
        audio = draw_noise(shape, generator, self._execution_device, dtype)
        steps = self.inference_steps(num_inference_steps, 100)
        self.scheduler.set_timesteps(steps, device=audio.device)
        self.scheduler.timesteps = self.scheduler.timesteps.to(dtype)
        for t in self.progress_bar(self.scheduler.timesteps):
            velocity = self.unet(audio, t).sample
            audio = self.scheduler.step(velocity, t, audio).prev_sample
        self.maybe_free_model_hooks()
        audio = audio.clamp(-1, 1).float().cpu().numpy()[:, :, :keep]
        if not return_dict:
            return (audio,)
        return AudioPipelineOutput(audios=audio, sample_rate=self.unet.config.sample_rate)

