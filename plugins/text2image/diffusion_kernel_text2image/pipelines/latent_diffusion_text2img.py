"""Latent diffusion text-to-image (Rombach et al. 2022, sec. 3.3 and 4.3.1; the LDM-KL-8-G model,
CompVis/ldm-text2im-large-256): LDMBert encodes the prompt (BERT tokenizer), a conditional U-Net
denoises latents while cross-attending to it (eq. 3), under classifier-free guidance, and the
first-stage autoencoder decodes them.

The format's behaviour, kept for equal images: latents are ``height // 8`` x ``width // 8``
whatever the autoencoder's factor (the released model's factor; with another one the image
comes out at ``8 / factor`` of the asked size), the initial noise is not scaled by
``init_noise_sigma`` and the scheduler's ``scale_model_input`` is not called (so sigma-space
schedulers such as Euler or LMS sample wrongly here), prompts are padded to 77 tokens, and
guidance runs only when ``guidance_scale != 1``. ``use_vae_scale_factor=True`` and
``scale_model_input=True`` switch the two departures from the paper's sampler off (see the
docs' "Where this differs" section).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from diffusion_kernel.errors import PipelineError
from diffusion_kernel.pipelines import DiffusionPipeline, ImagePipelineOutput
from diffusion_kernel.sampling_loop import ordinary, sampling

from .common import (
    check_generators,
    check_output_type,
    check_steps,
    guided,
    is_prompt,
    randn,
    sample_of,
    step_kwargs,
    to_output,
)

MAX_TOKENS = 77
FORMAT_LATENT_FACTOR = 8  # hard-coded by the format, whatever the autoencoder's factor


class LDMTextToImagePipeline(DiffusionPipeline):
    """Components: ``vqvae`` (AutoencoderKL or VQModel), ``bert`` (LDMBertModel, or any text
    encoder whose output's ``[0]`` is the token states), ``tokenizer`` (BertTokenizer), ``unet``
    (UNet2DConditionModel), ``scheduler`` (DDIM, PNDM, ...). ``pipe("a cat").images``."""

    model_cpu_offload_seq = "bert->unet->vqvae"

    def __init__(self, vqvae: Any, bert: Any, tokenizer: Any, unet: Any, scheduler: Any):
        self.register_modules(vqvae=vqvae, bert=bert, tokenizer=tokenizer, unet=unet,
                              scheduler=scheduler)
        missing = [name for name, c in self.components.items() if c is None]
        if missing:
            raise PipelineError(f"LDMTextToImagePipeline needs every component; missing: "
                                f"{missing}")
        self.vae_scale_factor = 2 ** (len(vqvae.config.block_out_channels) - 1)

    @torch.no_grad()
    def __call__(
        self,
        prompt: str | list[str],
        height: int | None = None,
        width: int | None = None,
        num_inference_steps: int = 50,
        guidance_scale: float = 1.0,
        eta: float = 0.0,
        generator: torch.Generator | list[torch.Generator] | None = None,
        latents: torch.Tensor | None = None,
        output_type: str = "pil",
        return_dict: bool = True,
        callback_on_step_end: Callable | None = None,
        callback_on_step_end_tensor_inputs: Sequence[str] = ("latents",),
        use_vae_scale_factor: bool = False,
        scale_model_input: bool = False,
    ) -> ImagePipelineOutput | tuple:
        """Generate images for ``prompt`` (a str or a list).

        ``height``/``width``: multiples of 8 (default: the U-Net's sample size times the
        autoencoder's factor); ``guidance_scale`` != 1 turns on classifier-free guidance with
        the empty prompt; ``eta``: DDIM's noise level; ``generator``: one, or one per image;
        ``latents``: the initial noise ((N, C, height // 8, width // 8)); ``output_type``:
        ``"pil"``, ``"np"``, ``"pt"`` (in [0, 1]) or ``"latent"``;
        ``callback_on_step_end(pipe, step, t, {"latents": ...})`` may return replacements.
        ``use_vae_scale_factor`` / ``scale_model_input`` (default off, the format's behaviour):
        size the latents by the autoencoder's real factor / call the scheduler's
        ``scale_model_input`` and scale the noise by ``init_noise_sigma``, which sigma-space
        schedulers need. Returns ``ImagePipelineOutput(images)``."""
        if not is_prompt(prompt):
            raise PipelineError(f"prompt must be a str or a non-empty list of str, got "
                                f"{type(prompt).__name__}")
        check_steps("num_inference_steps", num_inference_steps)
        check_output_type(output_type, ("pil", "np", "pt", "latent"))
        self.check_callback_inputs(callback_on_step_end_tensor_inputs)
        height = height or self.unet.config.sample_size * self.vae_scale_factor
        width = width or self.unet.config.sample_size * self.vae_scale_factor
        if height % 8 or width % 8:
            raise PipelineError(f"height and width must be multiples of 8, got {height} x "
                                f"{width}; use e.g. {height - height % 8} x {width - width % 8}")
        texts = [prompt] if isinstance(prompt, str) else list(prompt)
        batch = len(texts)
        check_generators(generator, batch)
        device = self._execution_device
        factor = self.vae_scale_factor if use_vae_scale_factor else FORMAT_LATENT_FACTOR

        cfg = guidance_scale != 1.0
        negative = self._bert_states([""] * batch, device) if cfg else None
        embeds = self._bert_states(texts, device)
        context = torch.cat([negative, embeds]) if cfg else embeds
        shape = (batch, self.unet.config.in_channels, height // factor, width // factor)
        if latents is None:
            latents = randn(shape, generator, device, embeds.dtype)
        elif tuple(latents.shape) != shape:
            raise PipelineError(f"latents have shape {tuple(latents.shape)} but this call needs "
                                f"{shape} (images x channels x height/{factor} x width/{factor})")
        latents = latents.to(device)
        self.scheduler.set_timesteps(num_inference_steps)
        if scale_model_input:
            latents = latents * self.scheduler.init_noise_sigma
        extra = step_kwargs(self.scheduler, generator, eta)

        with sampling(self.unet):
            for i, t in enumerate(self.progress_bar(self.scheduler.timesteps)):
                model_input = torch.cat([latents] * 2) if cfg else latents
                if scale_model_input:
                    model_input = self.scheduler.scale_model_input(model_input, t)
                prediction = sample_of(self.unet(model_input, t, encoder_hidden_states=context))
                if cfg:
                    prediction = guided(prediction, guidance_scale)
                latents = self.scheduler.step(prediction, t, latents, **extra).prev_sample
                latents = self.step_end(callback_on_step_end, i, t,
                                        callback_on_step_end_tensor_inputs,
                                        {"latents": latents}).get("latents", latents)
        latents = ordinary(latents)

        if output_type == "latent":
            images = latents
        else:
            decoded = sample_of(self.vqvae.decode(latents / self.vqvae.config.scaling_factor))
            images = to_output((decoded / 2 + 0.5).clamp(0, 1), output_type)
        self.maybe_free_model_hooks()
        return ImagePipelineOutput(images=images) if return_dict else (images,)

    def generate_arguments(self, num_samples: int, input: Any = None,
                           num_inference_steps: int | None = None,
                           generator: list | None = None) -> dict[str, Any]:
        """``diffusion-kernel generate PROMPT``: the prompt repeated ``num_samples`` times (the
        format's call has no images-per-prompt count), one generator per image."""
        kwargs = super().generate_arguments(1, input, num_inference_steps)
        return {**kwargs, "prompt": [input] * num_samples, "generator": generator}

    def _bert_states(self, texts: list[str], device: torch.device) -> torch.Tensor:
        tokens = self.tokenizer(texts, padding="max_length", max_length=MAX_TOKENS,
                                truncation=True, return_tensors="pt")
        return self.bert(tokens.input_ids.to(device))[0]
