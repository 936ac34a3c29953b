"""What the Stable Diffusion pipelines share (Rombach et al. 2022, latent diffusion with a CLIP text
encoder): prompt encoding, classifier-free guidance, initial latents, the denoising loop, VAE
encoding and decoding, output conversion and argument checks.

Classifier-free guidance (Ho & Salimans 2022, Eq. 6): the UNet sees the unconditional and the
conditional batch in ONE call and the prediction is ``eps_u + w (eps_c - eps_u)``.

There is no safety checker: a ``safety_checker`` / ``feature_extractor`` named in a
``model_index.json`` is accepted and not loaded; ``nsfw_content_detected`` is always ``None``.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from diffusion_kernel.errors import PipelineError
from diffusion_kernel.nn.lora import lora_call_scale
from diffusion_kernel.pipelines import DiffusionPipeline, ImagePipelineOutput
from diffusion_kernel.prompts import check_prompts, negative_texts

from ..loaders.lora_pipeline import StableDiffusionLoraLoaderMixin
from ..loaders.single_file import FromSingleFileMixin
from ..loaders.textual_inversion import TextualInversionLoaderMixin
from ..processing.image_processor import VaeImageProcessor, check_output_type
from .common import Generators, check_generators, randn, sample_of, step_kwargs

TensorInputs = Sequence[str]


@dataclass
class StableDiffusionPipelineOutput(ImagePipelineOutput):
    """``images`` and ``nsfw_content_detected`` (always ``None``: no safety checker runs)."""

    nsfw_content_detected: Any = None


class StableDiffusionBase(StableDiffusionLoraLoaderMixin, TextualInversionLoaderMixin,
                          FromSingleFileMixin, DiffusionPipeline):
    """Components: ``vae`` (AutoencoderKL), ``text_encoder`` (transformers CLIPTextModel),
    ``tokenizer`` (CLIPTokenizer), ``unet`` (UNet2DConditionModel), ``scheduler`` (any compatible
    scheduler). ``safety_checker``, ``feature_extractor`` and ``image_encoder`` are accepted for
    compatibility with diffusers folders and are neither loaded nor run. LoRA, textual
    inversion and single-file checkpoints: see ``loaders/``."""

    model_cpu_offload_seq = "text_encoder->unet->vae"
    _optional_components = ("safety_checker", "feature_extractor", "image_encoder")
    _components_not_loaded = ("safety_checker", "feature_extractor", "image_encoder")
    _callback_tensor_inputs = ("latents", "prompt_embeds", "negative_prompt_embeds")

    def __init__(self, vae: Any, text_encoder: Any, tokenizer: Any, unet: Any, scheduler: Any,
                 safety_checker: Any = None, feature_extractor: Any = None,
                 image_encoder: Any = None, requires_safety_checker: bool = False):
        self.register_modules(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet,
                              scheduler=scheduler, safety_checker=safety_checker,
                              feature_extractor=feature_extractor, image_encoder=image_encoder)
        self.vae_scale_factor = 2 ** (len(vae.config.block_out_channels) - 1) if vae else 8
        self.image_processor = VaeImageProcessor(vae_scale_factor=self.vae_scale_factor)

    # Memory options ----------------------------------------------------------------------------
    def enable_attention_slicing(self, slice_size: str | int | None = "auto") -> None:
        """Compute attention in slices to save memory (``"auto"``: half the heads at a time,
        ``"max"``: one at a time, an int: that many heads); same images, a little slower."""
        if not hasattr(self.unet, "set_attention_slice"):
            raise PipelineError(f"{type(self.unet).__name__} has no set_attention_slice, so "
                                f"attention slicing is not available for this UNet")
        self.unet.set_attention_slice(slice_size)

    def disable_attention_slicing(self) -> None:
        """Compute attention in one go again."""
        self.enable_attention_slicing(None)

    def enable_vae_slicing(self) -> None:
        """Decode a batch one image at a time (``pipe.vae.enable_slicing()``)."""
        self.vae.enable_slicing()

    def disable_vae_slicing(self) -> None:
        self.vae.disable_slicing()

    def enable_vae_tiling(self) -> None:
        """Encode and decode large images in overlapping tiles (``pipe.vae.enable_tiling()``)."""
        self.vae.enable_tiling()

    def disable_vae_tiling(self) -> None:
        self.vae.disable_tiling()

    def enable_freeu(self, s1: float, s2: float, b1: float, b2: float) -> None:
        """FreeU (Si et al. 2023): see ``UNet2DConditionModel.enable_freeu``; it changes the
        images, not the weights, until ``disable_freeu()``."""
        if not hasattr(self.unet, "enable_freeu"):
            raise PipelineError(f"{type(self.unet).__name__} has no enable_freeu, so FreeU is "
                                f"not available for this UNet")
        self.unet.enable_freeu(s1=s1, s2=s2, b1=b1, b2=b2)

    def disable_freeu(self) -> None:
        if hasattr(self.unet, "disable_freeu"):
            self.unet.disable_freeu()

    def enable_xformers_memory_efficient_attention(self, attention_op: Any = None) -> None:
        """Nothing to switch on: attention always runs through torch's
        ``scaled_dot_product_attention``, which picks a memory-efficient or flash kernel where
        one applies; xformers is not used. Warns so that scripts written for diffusers keep
        running and their authors learn it."""
        warnings.warn("enable_xformers_memory_efficient_attention() changes nothing here: "
                      "attention already runs through torch's scaled_dot_product_attention "
                      "(memory-efficient and flash kernels included); xformers is not used. "
                      "Remove the call, or use enable_attention_slicing() to save more memory.",
                      stacklevel=2)

    def disable_xformers_memory_efficient_attention(self) -> None:
        """Nothing to switch off (see ``enable_xformers_memory_efficient_attention``)."""

    # Argument checks -------------------------------------------------------------------------
    def _check_common(self, prompt: Any, negative_prompt: Any, prompt_embeds: Any,
                      negative_prompt_embeds: Any, num_images_per_prompt: int, generator: Any,
                      output_type: str, tensor_inputs: TensorInputs) -> int:
        """Checks every SD pipeline makes; returns the number of images (prompts x images per
        prompt)."""
        batch = check_prompts(prompt, prompt_embeds, negative_prompt, negative_prompt_embeds,
                              negative_of_same_kind=True)
        if not isinstance(num_images_per_prompt, int) or num_images_per_prompt < 1:
            raise PipelineError(f"num_images_per_prompt must be a positive int, got "
                                f"{num_images_per_prompt!r}")
        check_generators(generator, batch * num_images_per_prompt)
        check_output_type(output_type)
        self.check_callback_inputs(tensor_inputs)
        return batch * num_images_per_prompt

    @staticmethod
    def _check_size(height: int, width: int) -> None:
        if height % 8 or width % 8:
            raise PipelineError(f"height and width must be multiples of 8, got {height} x "
                                f"{width}; use e.g. {height - height % 8} x {width - width % 8}")

    @staticmethod
    def _check_strength(strength: float) -> None:
        if not 0.0 <= strength <= 1.0:
            raise PipelineError(f"strength must lie in [0, 1] (0 keeps the image, 1 replaces "
                                f"it), got {strength}")

    # Prompts -----------------------------------------------------------------------------------
    def _do_cfg(self, guidance_scale: float) -> bool:
        return guidance_scale > 1.0

    def _text_embeddings(self, texts: list[str], device: torch.device, length: int,
                         clip_skip: int | None = None) -> torch.Tensor:
        texts = self.maybe_convert_prompt(texts, self.tokenizer)  # multi-vector embeddings
        tokens = self.tokenizer(texts, padding="max_length", max_length=length, truncation=True,
                                return_tensors="pt")
        mask = None
        if getattr(self.text_encoder.config, "use_attention_mask", False):
            mask = tokens.attention_mask.to(device)
        ids = tokens.input_ids.to(device)
        if clip_skip is None:
            return self.text_encoder(ids, attention_mask=mask)[0]
        # clip_skip=k: the hidden state k layers before the last, through the final layer norm.
        hidden = self.text_encoder(ids, attention_mask=mask, output_hidden_states=True)
        hidden = hidden.hidden_states[-(clip_skip + 1)]
        # transformers < 5 nests the layers in .text_model; 5.x holds them directly
        text_model = getattr(self.text_encoder, "text_model", self.text_encoder)
        return text_model.final_layer_norm(hidden)

    @contextlib.contextmanager
    def _prompt_encoding(self, lora_scale: float | None) -> Iterator[None]:
        """What prompts are encoded in: no gradients, and the text encoder's LoRA adapters times
        ``lora_scale`` (``None``: as they are)."""
        scale = 1.0 if lora_scale is None or self.text_encoder is None else lora_scale
        with torch.no_grad(), lora_call_scale(self.text_encoder, scale):
            yield

    def encode_prompt(self, prompt: str | list[str] | None, device: torch.device,
                      num_images_per_prompt: int, do_classifier_free_guidance: bool,
                      negative_prompt: str | list[str] | None = None,
                      prompt_embeds: torch.Tensor | None = None,
                      negative_prompt_embeds: torch.Tensor | None = None,
                      clip_skip: int | None = None, lora_scale: float | None = None
                      ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Text -> CLIP embeddings, each repeated ``num_images_per_prompt`` times; the negative
        embeddings (the empty prompt unless given) only with classifier-free guidance.
        ``lora_scale`` multiplies the text encoder's LoRA adapters for this call."""
        with self._prompt_encoding(lora_scale):
            if prompt_embeds is None:
                texts = [prompt] if isinstance(prompt, str) else list(prompt)
                prompt_embeds = self._text_embeddings(texts, device,
                                                      self.tokenizer.model_max_length, clip_skip)
            dtype = self.text_encoder.dtype if self.text_encoder is not None else self.unet.dtype
            prompt_embeds = prompt_embeds.to(dtype=dtype, device=device)
            batch = prompt_embeds.shape[0]
            if do_classifier_free_guidance and negative_prompt_embeds is None:
                negative_prompt_embeds = self._text_embeddings(
                    negative_texts(negative_prompt, batch), device, prompt_embeds.shape[1])
        prompt_embeds = prompt_embeds.repeat_interleave(num_images_per_prompt, dim=0)
        if do_classifier_free_guidance:
            negative_prompt_embeds = negative_prompt_embeds.to(dtype=dtype, device=device)
            negative_prompt_embeds = negative_prompt_embeds.repeat_interleave(
                num_images_per_prompt, dim=0)
        return prompt_embeds, negative_prompt_embeds

    def _call_embeddings(self, prompt: Any, negative_prompt: Any, prompt_embeds: Any,
                         negative_prompt_embeds: Any, num_images_per_prompt: int,
                         guidance_scale: float, clip_skip: int | None,
                         cross_attention_kwargs: dict[str, Any] | None
                         ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``encode_prompt`` as a pipeline call runs it: on the execution device, with the
        negative embeddings when ``guidance_scale`` > 1, the text encoder's LoRA adapters times
        ``cross_attention_kwargs["scale"]``."""
        return self.encode_prompt(
            prompt, self._execution_device, num_images_per_prompt, self._do_cfg(guidance_scale),
            negative_prompt, prompt_embeds, negative_prompt_embeds, clip_skip,
            lora_scale=(cross_attention_kwargs or {}).get("scale"))

    def _default_size(self, axis: int) -> int:
        """The default height (axis 0) or width (1): the UNet's sample size times the VAE
        factor."""
        size = self.unet.config.sample_size
        size = size if isinstance(size, int) else size[axis]
        return size * self.vae_scale_factor

    # Latents -----------------------------------------------------------------------------------
    def prepare_latents(self, batch_size: int, num_channels: int, height: int, width: int,
                        dtype: torch.dtype, device: torch.device, generator: Generators,
                        latents: torch.Tensor | None = None) -> torch.Tensor:
        """Initial latents: Gaussian noise (one draw per image with per-image generators) or the
        ``latents`` given, scaled by the scheduler's ``init_noise_sigma``."""
        shape = (batch_size, num_channels, height // self.vae_scale_factor,
                 width // self.vae_scale_factor)
        if latents is None:
            latents = randn(shape, generator, device, dtype)
        elif tuple(latents.shape) != shape:
            raise PipelineError(f"latents have shape {tuple(latents.shape)} but this call needs "
                                f"{shape} (images x channels x height/{self.vae_scale_factor} x "
                                f"width/{self.vae_scale_factor})")
        return latents.to(device=device, dtype=dtype) * self.scheduler.init_noise_sigma

    def _set_timesteps(self, num_inference_steps: int, device: torch.device,
                       timesteps: list[int] | None = None,
                       sigmas: list[float] | None = None) -> tuple[torch.Tensor, int]:
        """Prepare the scheduler; returns its timesteps and the number of steps (custom
        ``timesteps`` or ``sigmas`` replace ``num_inference_steps``)."""
        if timesteps is not None or sigmas is not None:
            extra = {"timesteps": timesteps} if timesteps is not None else {"sigmas": sigmas}
            self.scheduler.set_timesteps(device=device, **extra)
            return self.scheduler.timesteps, len(self.scheduler.timesteps)
        self.scheduler.set_timesteps(num_inference_steps, device=device)
        return self.scheduler.timesteps, num_inference_steps

    def _strength_timesteps(self, steps: int, strength: float) -> torch.Tensor:
        """img2img / inpainting (SDEdit, Meng et al. 2022): skip the first ``1 - strength`` of
        the ``steps``; the scheduler is told where it begins (``set_begin_index``)."""
        skipped = steps - min(int(steps * strength), steps)
        begin = skipped * self.scheduler.order
        timesteps = self.scheduler.timesteps[begin:]
        if len(timesteps) == 0:
            raise PipelineError(f"strength={strength} with {steps} inference steps leaves no "
                                f"denoising step; raise strength or num_inference_steps")
        if hasattr(self.scheduler, "set_begin_index"):
            self.scheduler.set_begin_index(begin)
        return timesteps

    def encode_images(self, image: torch.Tensor, batch_size: int,
                      generator: Generators) -> torch.Tensor:
        """Pixels in [-1, 1] -> scaled VAE latents for ``batch_size`` images (a single image is
        repeated). With per-image generators image i is sampled from generator i; ``image``
        already holding latents (VAE latent channels) is used as is."""
        if image.shape[1] == self.vae.config.latent_channels:
            return _repeat_to(image, batch_size, "image")
        if isinstance(generator, list | tuple) and len(generator) > 1:
            image = _repeat_to(image, batch_size, "image")
            latents = torch.cat([self._vae_sample(image[i:i + 1], g)
                                 for i, g in enumerate(generator)])
        else:
            one = generator[0] if isinstance(generator, list | tuple) else generator
            latents = _repeat_to(self._vae_sample(image, one), batch_size, "image")
        return latents * self.vae.config.scaling_factor

    def _vae_sample(self, image: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        """A sample of the VAE's posterior q(z | x) (or the latents of a deterministic encoder)."""
        with torch.no_grad():
            encoded = self.vae.encode(image)
        if hasattr(encoded, "latent_dist"):
            return encoded.latent_dist.sample(generator)
        if hasattr(encoded, "latents"):
            return encoded.latents
        return encoded[0]

    # The denoising loop ------------------------------------------------------------------------
    def denoise(self, latents: torch.Tensor, timesteps: torch.Tensor, prompt_embeds: torch.Tensor,
                negative_prompt_embeds: torch.Tensor | None, guidance_scale: float,
                extra_step: dict[str, Any], callback: Callable | None, tensor_inputs: TensorInputs,
                conditioning: torch.Tensor | None = None,
                after_step: Callable[[int, torch.Tensor], torch.Tensor] | None = None,
                callback_values: dict[str, Any] | None = None,
                guidance_rescale: float = 0.0,
                cross_attention_kwargs: dict[str, Any] | None = None) -> torch.Tensor:
        """Run the scheduler over ``timesteps``. ``conditioning`` is concatenated to the UNet
        input along channels (inpainting UNets); ``after_step(i, latents)`` may change the
        latents after each step (legacy inpainting's blend); ``guidance_rescale`` see
        ``rescale_guidance``; ``cross_attention_kwargs`` go to the U-Net (``"scale"``: LoRA)."""
        cfg = negative_prompt_embeds is not None
        embeds = torch.cat([negative_prompt_embeds, prompt_embeds]) if cfg else prompt_embeds
        for i, t in enumerate(self.progress_bar(timesteps)):
            model_input = torch.cat([latents] * 2) if cfg else latents
            model_input = self.scheduler.scale_model_input(model_input, t)
            if conditioning is not None:
                model_input = torch.cat([model_input, conditioning], dim=1)
            with torch.no_grad():
                noise_pred = sample_of(self.unet(model_input, t, encoder_hidden_states=embeds,
                                                 cross_attention_kwargs=cross_attention_kwargs))
            if cfg:
                uncond, cond = noise_pred.chunk(2)
                noise_pred = uncond + guidance_scale * (cond - uncond)
                if guidance_rescale > 0.0:
                    noise_pred = rescale_guidance(noise_pred, cond, guidance_rescale)
            latents = self.scheduler.step(noise_pred, t, latents, **extra_step).prev_sample
            if after_step is not None:
                latents = after_step(i, latents)
            values = {"latents": latents, "prompt_embeds": embeds,
                      "negative_prompt_embeds": negative_prompt_embeds, **(callback_values or {})}
            replaced = self.step_end(callback, i, t, tensor_inputs, values)
            latents = replaced.get("latents", latents)
            embeds = replaced.get("prompt_embeds", embeds)
        return latents

    def step_kwargs(self, generator: Generators, eta: float) -> dict[str, Any]:
        return step_kwargs(self.scheduler, generator, eta)

    # Output ----------------------------------------------------------------------------------
    def finish(self, latents: torch.Tensor, output_type: str,
               return_dict: bool) -> StableDiffusionPipelineOutput | tuple:
        """Decode latents with the VAE (unless ``output_type="latent"``) and convert them."""
        if output_type == "latent":
            images = latents
        else:
            with torch.no_grad():
                decoded = self.vae.decode(latents / self.vae.config.scaling_factor)
            images = self.image_processor.postprocess(sample_of(decoded), output_type)
        self.maybe_free_model_hooks()
        if not return_dict:
            return images, None
        return StableDiffusionPipelineOutput(images=images, nsfw_content_detected=None)


def rescale_guidance(guided: torch.Tensor, cond: torch.Tensor, phi: float) -> torch.Tensor:
    """Lin et al. 2023 ("Common diffusion noise schedules and sample steps are flawed"), Sec. 3.4:
    a high guidance scale inflates the prediction's standard deviation and over-exposes images.
    Rescale the guided prediction, per sample, to the conditional prediction's standard
    deviation and blend: ``phi * guided * std(cond) / std(guided) + (1 - phi) * guided``."""
    dims = list(range(1, guided.ndim))
    ratio = cond.std(dim=dims, keepdim=True) / guided.std(dim=dims, keepdim=True)
    return guided * (phi * ratio + (1.0 - phi))


def _repeat_to(tensor: torch.Tensor, batch_size: int, what: str) -> torch.Tensor:
    """Repeat a batch of n to ``batch_size`` (n must divide it): prompt-major order."""
    n = tensor.shape[0]
    if n == batch_size:
        return tensor
    if batch_size % n:
        raise PipelineError(f"got {n} {what}s for {batch_size} images; pass one {what}, one per "
                            f"prompt, or one per image")
    return tensor.repeat_interleave(batch_size // n, dim=0) if n > 1 else \
        tensor.expand(batch_size, *tensor.shape[1:])


def mask_to_latent_size(mask: torch.Tensor, height: int, width: int, factor: int) -> torch.Tensor:
    """A (N, 1, H, W) mask resized (nearest) to the latent grid."""
    return F.interpolate(mask, size=(height // factor, width // factor))
