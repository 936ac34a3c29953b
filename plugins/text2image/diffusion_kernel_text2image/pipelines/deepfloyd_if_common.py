"""What the DeepFloyd IF stages share (the Imagen cascade, Saharia et al. 2022): a frozen T5
encoder's token states condition pixel-space U-Nets (sec. 2.1); sampling uses classifier-free
guidance (sec. 2.2) with dynamic thresholding (sec. 2.3: each step's x0 estimate is clipped to
the per-image ``dynamic_thresholding_ratio`` quantile s of |x0| and divided by s, which the
scheduler config turns on with ``thresholding=True``) and the learned variances of Nichol &
Dhariwal 2021 (``variance_type="learned_range"``: the U-Net outputs 2x the image channels).

The format's quirks kept here: prompts are lower-cased and stripped before tokenizing, T5 sees at
most 77 tokens, ``output_type="pt"`` returns the raw samples in [-1, 1] (what stage II takes as
``image``), ``"np"`` and ``"pil"`` images in [0, 1]. ``clean_caption=True`` (the default, as in
the format) would run IF's caption cleaner (BeautifulSoup + ftfy + regular expressions over
scraped captions); it is not included: the plain normalisation runs instead, with a warning, as
the format itself does when those packages are missing.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from diffusion_kernel.configuration import config_parameters
from diffusion_kernel.errors import PipelineError
from diffusion_kernel.pipelines import DiffusionPipeline, ImagePipelineOutput
from diffusion_kernel.prompts import negative_texts
from diffusion_kernel.sampling_loop import ordinary, sampling

from .common import (
    check_callbacks,
    check_generators,
    check_output_type,
    check_prompts,
    check_steps,
    guided,
    sample_of,
    to_output,
)

MAX_TOKENS = 77  # the format's fixed T5 length for IF


@dataclass
class IFPipelineOutput(ImagePipelineOutput):
    """``images``; ``nsfw_detected`` and ``watermark_detected`` are always ``None`` (no safety
    checker runs)."""

    nsfw_detected: Any = None
    watermark_detected: Any = None


class IFPipelineBase(DiffusionPipeline):
    """Components: ``tokenizer`` (T5Tokenizer), ``text_encoder`` (T5EncoderModel), ``unet``
    (UNet2DConditionModel with the GLIDE-style blocks), ``scheduler`` (DDPMScheduler, or any
    compatible one), ``watermarker`` (IFWatermarker, optional). ``safety_checker`` and
    ``feature_extractor`` are accepted for compatibility with diffusers folders and are neither
    loaded nor run. ``tokenizer`` and ``text_encoder`` may be ``None`` when calls pass
    ``prompt_embeds``."""

    model_cpu_offload_seq = "text_encoder->unet"
    _optional_components = ("tokenizer", "text_encoder", "safety_checker", "feature_extractor",
                            "watermarker")
    _components_not_loaded = ("safety_checker", "feature_extractor")
    _callback_tensor_inputs = ("intermediate_images", "prompt_embeds", "negative_prompt_embeds")

    # Arguments ---------------------------------------------------------------------------------
    def _check_call(self, prompt: Any, prompt_embeds: Any, negative_prompt: Any,
                    negative_prompt_embeds: Any, num_images_per_prompt: int,
                    num_inference_steps: int, timesteps: Sequence[int] | None, generator: Any,
                    output_type: str, callback: Callable | None, callback_steps: int,
                    tensor_inputs: Sequence[str]) -> int:
        """The checks both stages make before any work; returns the number of prompts."""
        batch = check_prompts(prompt, prompt_embeds, negative_prompt, negative_prompt_embeds)
        check_steps("num_images_per_prompt", num_images_per_prompt)
        if timesteps is None:
            check_steps("num_inference_steps", num_inference_steps)
        check_generators(generator, batch * num_images_per_prompt)
        check_output_type(output_type)
        check_callbacks(self, callback, callback_steps, tensor_inputs)
        return batch

    # Prompts -----------------------------------------------------------------------------------
    @torch.no_grad()
    def encode_prompt(self, prompt: str | list[str] | None,
                      do_classifier_free_guidance: bool = True, num_images_per_prompt: int = 1,
                      device: torch.device | None = None,
                      negative_prompt: str | list[str] | None = None,
                      prompt_embeds: torch.Tensor | None = None,
                      negative_prompt_embeds: torch.Tensor | None = None,
                      clean_caption: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Text -> T5 token states (B * num_images_per_prompt, 77, width); the negative ones
        (the empty prompt unless given) only with classifier-free guidance, else ``None``."""
        device = device or self._execution_device
        if prompt_embeds is None:
            prompt_embeds = self._t5_states(self._normalised(prompt, clean_caption), device)
        dtype = self.text_encoder.dtype if self.text_encoder is not None else self.unet.dtype
        prompt_embeds = prompt_embeds.to(dtype=dtype, device=device)
        batch = prompt_embeds.shape[0]
        if do_classifier_free_guidance and negative_prompt_embeds is None:
            negatives = negative_texts(negative_prompt, batch)
            negative_prompt_embeds = self._t5_states(self._normalised(negatives, clean_caption),
                                                     device, prompt_embeds.shape[1])
        prompt_embeds = prompt_embeds.repeat_interleave(num_images_per_prompt, dim=0)
        if not do_classifier_free_guidance:
            return prompt_embeds, None
        negative_prompt_embeds = negative_prompt_embeds.to(dtype=dtype, device=device)
        return prompt_embeds, negative_prompt_embeds.repeat_interleave(num_images_per_prompt,
                                                                       dim=0)

    def _normalised(self, prompt: str | list[str], clean_caption: bool) -> list[str]:
        if clean_caption:
            warnings.warn("clean_caption=True: IF's caption cleaner is not part of "
                          "diffusion-kernel; prompts are only lower-cased and stripped (what the "
                          "reference does when beautifulsoup4 or ftfy is missing). Pass "
                          "clean_caption=False to silence this.", stacklevel=4)
        texts = [prompt] if isinstance(prompt, str) else list(prompt)
        return [text.lower().strip() for text in texts]

    def _t5_states(self, texts: list[str], device: torch.device,
                   length: int = MAX_TOKENS) -> torch.Tensor:
        if self.tokenizer is None or self.text_encoder is None:
            raise PipelineError(f"{type(self).__name__} has no tokenizer/text_encoder (they were "
                                f"left out): pass prompt_embeds (and negative_prompt_embeds), "
                                f"e.g. from another IF stage's encode_prompt")
        tokens = self.tokenizer(texts, padding="max_length", max_length=length, truncation=True,
                                add_special_tokens=True, return_tensors="pt")
        return self.text_encoder(tokens.input_ids.to(device),
                                 attention_mask=tokens.attention_mask.to(device))[0]

    # Denoising ---------------------------------------------------------------------------------
    def _timesteps(self, num_inference_steps: int, timesteps: Sequence[int] | None,
                   device: torch.device) -> torch.Tensor:
        if timesteps is not None:
            self.scheduler.set_timesteps(timesteps=timesteps, device=device)
        else:
            self.scheduler.set_timesteps(num_inference_steps, device=device)
        if hasattr(self.scheduler, "set_begin_index"):
            self.scheduler.set_begin_index(0)
        return self.scheduler.timesteps

    def _denoise(self, images: torch.Tensor, timesteps: torch.Tensor, prompt_embeds: torch.Tensor,
                 negative_prompt_embeds: torch.Tensor | None, guidance_scale: float,
                 extra_step: dict[str, Any], callback: Callable | None, callback_steps: int,
                 callback_on_step_end: Callable | None, tensor_inputs: Sequence[str],
                 condition: torch.Tensor | None = None,
                 class_labels: torch.Tensor | None = None) -> torch.Tensor:
        """The reverse process: per step, one U-Net call on [unconditional; conditional] (with
        guidance), guidance on the noise channels, then the scheduler step. ``condition`` (the
        noised low-resolution image of stage II) is concatenated to the U-Net input."""
        cfg = negative_prompt_embeds is not None
        learned_variance = _uses_learned_variance(self.scheduler)
        channels = images.shape[1]
        # The text states and class labels are the same objects at every step: the U-Net
        # processes them once (sampling_loop.sampling).
        with sampling(self.unet):
            embeds = torch.cat([negative_prompt_embeds, prompt_embeds]) if cfg else prompt_embeds
            for i, t in enumerate(self.progress_bar(timesteps)):
                model_input = images if condition is None else torch.cat([images, condition], 1)
                model_input = torch.cat([model_input] * 2) if cfg else model_input
                model_input = self.scheduler.scale_model_input(model_input, t)
                prediction = sample_of(self.unet(model_input, t, encoder_hidden_states=embeds,
                                                 class_labels=class_labels))
                if cfg:
                    prediction = guided(prediction, guidance_scale, channels)
                if not learned_variance:
                    prediction = prediction[:, :channels]
                images = self.scheduler.step(prediction, t, images, **extra_step).prev_sample
                if callback is not None and i % callback_steps == 0:
                    callback(i, t, images)
                values = {"intermediate_images": images, "prompt_embeds": prompt_embeds,
                          "negative_prompt_embeds": negative_prompt_embeds}
                replaced = self.step_end(callback_on_step_end, i, t, tensor_inputs, values)
                images = replaced.get("intermediate_images", images)
        return ordinary(images)

    # Output ------------------------------------------------------------------------------------
    def _finish(self, images: torch.Tensor, output_type: str,
                return_dict: bool) -> IFPipelineOutput | tuple:
        if output_type != "pt":  # "pt" stays raw, in [-1, 1]: stage II's input
            images = to_output((images / 2 + 0.5).clamp(0, 1), output_type)
            if output_type == "pil" and self.watermarker is not None:
                self.watermarker.apply_watermark(images, self.unet.config.sample_size)
        self.maybe_free_model_hooks()
        if not return_dict:
            return images, None, None
        return IFPipelineOutput(images=images)


def _uses_learned_variance(scheduler: Any) -> bool:
    """Whether the scheduler's step takes the U-Net's variance channels: its class has a
    ``variance_type`` option set to a learned one. (A config swapped in from DDPM keeps
    ``variance_type`` for classes that have no such option, e.g. DDIM: those get the noise
    channels only; the reference passes them all and fails there.)"""
    return "variance_type" in config_parameters(type(scheduler)) and \
        scheduler.config.get("variance_type") in ("learned", "learned_range")
