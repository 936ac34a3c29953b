"""Audio Diffusion (Robert Dargavel Smith, "audio-diffusion"): an image diffusion model over
mel-spectrogram images, turned back into sound by the ``Mel`` processor (Griffin-Lim).

The U-Net (``UNet2DModel``, or ``UNet2DConditionModel`` with an ``encoding``) and the optional
autoencoder of the latent variant (``AutoencoderKL``, key ``vqvae``) come from whichever plugin
registers them; the scheduler is DDIM (default 50 steps) or DDPM (1000) or any other that steps
the same training chain. Variations start from a noised input slice (``start_step``), in- and
out-painting keep the noised input's first and last seconds (``mask_start_secs`` /
``mask_end_secs``), as in the diffusers format's pipeline; ``encode`` inverts DDIM and
``slerp`` interpolates noises.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
from diffusion_kernel import registry
from diffusion_kernel.errors import NotRegisteredError, PipelineError
from diffusion_kernel.noise import Generators
from diffusion_kernel.noise import randn as draw_noise
from diffusion_kernel.pipelines import DiffusionPipeline
from diffusion_kernel.sampling_loop import step_kwargs

from .outputs import AudioDiffusionPipelineOutput


def _is(component: Any, class_name: str) -> bool:
    """Whether ``component`` is an instance of the registered class ``class_name``."""
    try:
        return isinstance(component, registry.find(class_name).load())
    except NotRegisteredError:
        return False


class AudioDiffusionPipeline(DiffusionPipeline):
    """``AudioDiffusionPipeline(vqvae, unet, mel, scheduler)``; ``pipe(batch_size=4).audios``."""

    _optional_components = ("vqvae",)
    model_cpu_offload_seq = "vqvae->unet->vqvae"

    def __init__(self, vqvae: Any, unet: Any, mel: Any, scheduler: Any):
        self.register_modules(unet=unet, scheduler=scheduler, mel=mel, vqvae=vqvae)

    def generate_arguments(self, num_samples: int, input: Any = None,
                           num_inference_steps: int | None = None,
                           generator: list | None = None) -> dict[str, Any]:
        """``diffusion-kernel generate``: the step count goes to ``steps``, as the format names
        it here."""
        kwargs = super().generate_arguments(num_samples, input, None, generator)
        if num_inference_steps is not None:
            kwargs["steps"] = num_inference_steps
        return kwargs

    def get_default_steps(self) -> int:
        """50 for DDIM, 1000 otherwise (the number of training steps of DDPM)."""
        return 50 if _is(self.scheduler, "DDIMScheduler") else 1000

    # -- shapes -----------------------------------------------------------------------------------
    def _sample_size(self) -> tuple[int, int]:
        size = self.unet.config.sample_size
        return (size, size) if isinstance(size, int) else tuple(size)

    def _image_scale(self) -> int:
        """Pixels per U-Net sample along each axis: 2^(levels - 1) through the autoencoder."""
        if self.vqvae is None:
            return 1
        return 2 ** (len(self.vqvae.config.block_out_channels) - 1)

    def check_mel_fits_unet(self) -> None:
        """The mel image (y_res mel bins x x_res frames) must be what the U-Net samples."""
        height, width = (s * self._image_scale() for s in self._sample_size())
        if (self.mel.y_res, self.mel.x_res) != (height, width):
            raise PipelineError(
                f"the mel config makes {self.mel.y_res} x {self.mel.x_res} images (y_res x "
                f"x_res) but the U-Net{' and autoencoder' if self.vqvae is not None else ''} "
                f"sample {height} x {width}; set the mel config to y_res={height}, "
                f"x_res={width} (mel.set_resolution(x_res={width}, y_res={height}))")

    # -- the run ----------------------------------------------------------------------------------
    @torch.no_grad()
    def __call__(
        self,
        batch_size: int = 1,
        audio_file: str | None = None,
        raw_audio: np.ndarray | None = None,
        slice: int = 0,
        start_step: int = 0,
        steps: int | None = None,
        generator: Generators = None,
        mask_start_secs: float = 0,
        mask_end_secs: float = 0,
        step_generator: Generators = None,
        eta: float = 0,
        noise: torch.Tensor | None = None,
        encoding: torch.Tensor | None = None,
        return_dict: bool = True,
    ) -> AudioDiffusionPipelineOutput | tuple:
        """Sample ``batch_size`` mel images in ``steps`` steps (default: the folder's
        recommended count, else 50 for DDIM, 1000 otherwise) and turn them into audio.

        With ``audio_file`` (16-bit WAV at the mel's sample rate) or ``raw_audio``: slice
        ``slice`` of it, noised to step ``start_step``, is the starting point (a variation);
        ``mask_*_secs`` keep its start/end. ``generator`` draws the initial ``noise`` (one per
        sample allowed), ``step_generator`` the steps' noise (default: ``generator``); ``eta``
        for DDIM. Returns ``AudioDiffusionPipelineOutput(audios, images)``; with
        ``return_dict=False`` the diffusers tuple ``(images, (sample_rate, audios))``."""
        self.check_mel_fits_unet()
        steps = self.inference_steps(steps, self.get_default_steps())
        if not 0 <= start_step < steps:
            raise PipelineError(f"start_step must be in [0, {steps}) (steps={steps}), got "
                                f"{start_step}")
        self.scheduler.set_timesteps(steps)
        step_generator = step_generator or generator
        device = self._execution_device
        shape = (batch_size, self.unet.config.in_channels, *self._sample_size())
        if noise is None:
            if isinstance(generator, list | tuple) and len(generator) != batch_size:
                raise PipelineError(f"got {len(generator)} generators for batch_size="
                                    f"{batch_size}; pass one per sample, or a single one")
            noise = draw_noise(shape, generator, device)
        elif tuple(noise.shape) != shape:
            raise PipelineError(f"noise must have shape {shape}, got {tuple(noise.shape)}")
        images, mask, mask_start, mask_end = noise, None, 0, 0
        if audio_file is not None or raw_audio is not None:
            start, mask = self._encode_input(audio_file, raw_audio, slice, noise, start_step,
                                             generator)
            if start_step > 0:
                images = start
            pixels_per_second = (self._sample_size()[1] * self.mel.get_sample_rate()
                                 / self.mel.x_res / self.mel.hop_length)
            mask_start = int(mask_start_secs * pixels_per_second)
            mask_end = int(mask_end_secs * pixels_per_second)

        extra = step_kwargs(self.scheduler, step_generator, eta)
        for step, t in enumerate(self.progress_bar(self.scheduler.timesteps[start_step:])):
            if encoding is not None:
                model_output = self.unet(images, t, encoding).sample
            else:
                model_output = self.unet(images, t).sample
            images = self.scheduler.step(model_output, t, images, **extra).prev_sample
            if mask is not None:  # the kept seconds: the input noised to this step's level
                if mask_start > 0:
                    images[:, :, :, :mask_start] = mask[:, step, :, :mask_start]
                if mask_end > 0:
                    images[:, :, :, -mask_end:] = mask[:, step, :, -mask_end:]
        pixels = self._to_bytes(images)
        self.maybe_free_model_hooks()
        return self._outputs(pixels, return_dict)

    def _encode_input(self, audio_file, raw_audio, slice: int, noise: torch.Tensor,
                      start_step: int, generator: Generators):
        """(start sample at ``start_step``, the input noised to every later step)."""
        self.mel.load_audio(audio_file, raw_audio)
        pixels = np.asarray(self.mel.audio_slice_to_image(slice), dtype=np.uint8)
        image = torch.tensor(pixels / 255 * 2 - 1, dtype=torch.float)[None].to(noise.device)
        if self.vqvae is not None:
            image = self.vqvae.encode(image[None]).latent_dist.sample(generator=generator)[0]
            image = self.vqvae.config.scaling_factor * image
        timesteps = self.scheduler.timesteps
        start = None
        if start_step > 0:
            start = self.scheduler.add_noise(image, noise, timesteps[start_step - 1])
        # (batch, steps, H, W): the input noised to the level of each remaining step
        levels = torch.as_tensor(timesteps[start_step:])
        mask = self.scheduler.add_noise(image, noise, levels)
        return start, mask

    def _to_bytes(self, images: torch.Tensor) -> np.ndarray:
        if self.vqvae is not None:
            images = self.vqvae.decode(images / self.vqvae.config.scaling_factor).sample
        images = (images / 2 + 0.5).clamp(0, 1).cpu().permute(0, 2, 3, 1).numpy()
        images = (images * 255).round().astype(np.uint8)
        if images.shape[3] != 1:  # an RGB decoder: the luminance (ITU-R 601-2, as PIL's "L")
            images = np.asarray([np.asarray(_pil(i).convert("L")) for i in images])[..., None]
        return images[..., 0]

    def _outputs(self, pixels: np.ndarray, return_dict: bool):
        images = [_pil(p) for p in pixels]
        audios = np.stack([self.mel.image_to_audio(p) for p in pixels])[:, None, :]
        if not return_dict:
            return images, (self.mel.get_sample_rate(), audios)
        return AudioDiffusionPipelineOutput(audios=audios, images=images,
                                            sample_rate=self.mel.get_sample_rate())

    # -- DDIM inversion and interpolation ---------------------------------------------------------
    @torch.no_grad()
    def encode(self, images: list[Any], steps: int = 50) -> torch.Tensor:
        """The noise that DDIM (eta = 0) turns into ``images`` (mel images, PIL or uint8):
        the deterministic DDIM update run from t = 0 up (Song et al. 2021, eq. 13)."""
        if not _is(self.scheduler, "DDIMScheduler"):
            raise PipelineError(f"encode inverts DDIM, this pipeline's scheduler is "
                                f"{type(self.scheduler).__name__}; swap it in first: "
                                f"pipe.scheduler = DDIMScheduler.from_config("
                                f"pipe.scheduler.config)")
        self.scheduler.set_timesteps(steps)
        pixels = np.stack([np.asarray(i, dtype=np.uint8)[None] for i in images])
        sample = torch.tensor(pixels / 255 * 2 - 1, dtype=torch.float).to(self._execution_device)
        alphas = self.scheduler.alphas_cumprod
        stride = self.scheduler.config.num_train_timesteps // self.scheduler.num_inference_steps
        for t in self.progress_bar(torch.flip(self.scheduler.timesteps, (0,))):
            prev = int(t) - stride
            alpha = alphas[int(t)]
            alpha_prev = alphas[prev] if prev >= 0 else self.scheduler.final_alpha_cumprod
            eps = self.unet(sample, t).sample
            clean = (sample - (1 - alpha_prev) ** 0.5 * eps) * alpha_prev ** -0.5
            sample = clean * alpha ** 0.5 + (1 - alpha) ** 0.5 * eps
        return sample

    @staticmethod
    def slerp(x0: torch.Tensor, x1: torch.Tensor, alpha: float) -> torch.Tensor:
        """Spherical linear interpolation (Shoemake 1985) from ``x0`` (alpha = 0) to ``x1``
        (alpha = 1) along the great circle: Gaussian noises stay at their typical norm."""
        cosine = torch.dot(torch.flatten(x0), torch.flatten(x1)) / torch.norm(x0) / torch.norm(x1)
        theta = math.acos(float(cosine))
        return (math.sin((1 - alpha) * theta) * x0 + math.sin(alpha * theta) * x1) / math.sin(
            theta)


def _pil(pixels: np.ndarray):
    from PIL import Image

    return Image.fromarray(pixels)
