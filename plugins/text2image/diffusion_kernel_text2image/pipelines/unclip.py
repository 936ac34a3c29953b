"""unCLIP (Ramesh et al. 2022, "Hierarchical Text-Conditional Image Generation with CLIP Latents",
the DALL-E 2 / Karlo models): a three-stage cascade driven by CLIP.

1. Prior (sec. 2.1, the diffusion prior): from the caption's CLIP text embedding z_t and token
   states, ``prior`` (a causal transformer) samples the CLIP image embedding z_i, predicting
   the clean z_i at every step (``prior_scheduler`` with ``prediction_type="sample"``), under
   classifier-free guidance; ``prior.post_process_latents`` undoes the embedding normalisation.
2. Decoder (sec. 2.1, GLIDE modified): ``text_proj`` adds projections of z_i and z_t to the
   time embedding and prepends 4 tokens made from z_i to the projected text tokens; the
   ``decoder`` (a GLIDE-style U-Net with learned variances) samples a 64 x 64 image under
   guidance; the result is clipped to [-1, 1].
3. Super-resolution (sec. 2.1, "two diffusion upsampler models"): the image is upscaled
   (bicubic, antialiased) and concatenated to the input of ``super_res_first``, which runs every
   step but the last; ``super_res_last`` runs the last one. No guidance here.

Each stage draws its initial noise and step noise from the same ``generator``, in this order, as
the format does, so images equal the reference's for the same seed.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from diffusion_kernel.errors import PipelineError
from diffusion_kernel.pipelines import DiffusionPipeline, ImagePipelineOutput
from diffusion_kernel.sampling_loop import sampling

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


class UnCLIPPipeline(DiffusionPipeline):
    """Components: ``prior`` (PriorTransformer), ``decoder`` (UNet2DConditionModel),
    ``text_proj`` (UnCLIPTextProjModel), ``text_encoder`` (transformers
    CLIPTextModelWithProjection), ``tokenizer`` (CLIPTokenizer), ``super_res_first`` and
    ``super_res_last`` (UNet2DModel), ``prior_scheduler``, ``decoder_scheduler``,
    ``super_res_scheduler`` (UnCLIPScheduler, or any scheduler whose ``step`` fits).
    ``pipe("a cat").images``."""

    model_cpu_offload_seq = "text_encoder->text_proj->decoder->super_res_first->super_res_last"

    def __init__(self, prior: Any, decoder: Any, text_encoder: Any, tokenizer: Any,
                 text_proj: Any, super_res_first: Any, super_res_last: Any,
                 prior_scheduler: Any, decoder_scheduler: Any, super_res_scheduler: Any):
        self.register_modules(prior=prior, decoder=decoder, text_encoder=text_encoder,
                              tokenizer=tokenizer, text_proj=text_proj,
                              super_res_first=super_res_first, super_res_last=super_res_last,
                              prior_scheduler=prior_scheduler,
                              decoder_scheduler=decoder_scheduler,
                              super_res_scheduler=super_res_scheduler)
        missing = [name for name, c in self.components.items() if c is None]
        if missing:
            raise PipelineError(f"UnCLIPPipeline needs every component; missing: {missing}")

    # Text ----------------------------------------------------------------------------------------
    @torch.no_grad()
    def _encode_prompt(self, prompt: str | list[str] | None, device: torch.device,
                       num_images_per_prompt: int, do_classifier_free_guidance: bool,
                       text_model_output: Any = None,
                       text_attention_mask: torch.Tensor | None = None):
        """(text embeddings (B', D), token states (B', L, D), token mask (B', L) bool), each
        repeated per image; under guidance B' = 2B with the empty prompt's values first."""
        if text_model_output is None:
            texts = [prompt] if isinstance(prompt, str) else list(prompt)
            embeds, states, mask = self._clip(texts, device)
        else:
            embeds, states = text_model_output[0], text_model_output[1]
            mask = text_attention_mask
        batch = embeds.shape[0]
        embeds, states, mask = (x.repeat_interleave(num_images_per_prompt, dim=0)
                                for x in (embeds, states, mask))
        if do_classifier_free_guidance:
            negatives = (x.repeat_interleave(num_images_per_prompt, dim=0)
                         for x in self._clip([""] * batch, device))
            embeds, states, mask = (torch.cat([u, c]) for u, c in zip(negatives,
                                                                        (embeds, states, mask)))
        return embeds, states, mask

    def _clip(self, texts: list[str], device: torch.device):
        tokens = self.tokenizer(texts, padding="max_length", truncation=True,
                                max_length=self.tokenizer.model_max_length, return_tensors="pt")
        output = self.text_encoder(tokens.input_ids.to(device))
        return output.text_embeds, output.last_hidden_state, tokens.attention_mask.bool().to(device)

    def prepare_latents(self, shape: tuple[int, ...], dtype: torch.dtype, device: torch.device,
                        generator: Any, latents: torch.Tensor | None, scheduler: Any):
        """Initial noise for a stage (or the ``latents`` given), scaled by the scheduler's
        ``init_noise_sigma``."""
        if latents is None:
            latents = randn(shape, generator, device, dtype)
        elif tuple(latents.shape) != tuple(shape):
            raise PipelineError(f"latents have shape {tuple(latents.shape)} but this stage needs "
                                f"{tuple(shape)}")
        return latents.to(device) * scheduler.init_noise_sigma

    def generate_arguments(self, num_samples: int, input: Any = None,
                           num_inference_steps: int | None = None,
                           generator: list | None = None) -> dict[str, Any]:
        """``diffusion-kernel generate PROMPT``: ``num_samples`` images of the prompt; ``--steps``
        sets the prior's and the decoder's step counts (the super-resolution stage keeps its
        default of 7, as unCLIP samples it with few steps)."""
        if input is None:
            raise PipelineError('UnCLIPPipeline needs a prompt: diffusion-kernel generate "a '
                                'cat" (or --prompt "...")')
        kwargs: dict[str, Any] = dict(prompt=input, num_images_per_prompt=num_samples,
                                      generator=generator)
        if num_inference_steps is not None:
            kwargs.update(prior_num_inference_steps=num_inference_steps,
                          decoder_num_inference_steps=num_inference_steps)
        return kwargs

    # The cascade ---------------------------------------------------------------------------------
    @torch.no_grad()
    def __call__(
        self,
        prompt: str | list[str] | None = None,
        num_images_per_prompt: int = 1,
        prior_num_inference_steps: int = 25,
        decoder_num_inference_steps: int = 25,
        super_res_num_inference_steps: int = 7,
        generator: torch.Generator | list[torch.Generator] | None = None,
        prior_latents: torch.Tensor | None = None,
        decoder_latents: torch.Tensor | None = None,
        super_res_latents: torch.Tensor | None = None,
        text_model_output: Any = None,
        text_attention_mask: torch.Tensor | None = None,
        prior_guidance_scale: float = 4.0,
        decoder_guidance_scale: float = 8.0,
        output_type: str = "pil",
        return_dict: bool = True,
    ) -> ImagePipelineOutput | tuple:
        """Generate images for ``prompt`` (or a ready ``text_model_output`` = (text embeddings,
        token states) with ``text_attention_mask``).

        Guidance is on for both prior and decoder when either scale is above 1 (the format's
        rule). ``*_latents``: initial noise per stage; ``generator``: one, or one per image;
        ``output_type``: ``"pil"``, ``"np"`` or ``"pt"`` (images in [0, 1]). Returns
        ``ImagePipelineOutput(images)``."""
        batch = self._check(prompt, text_model_output, text_attention_mask,
                            num_images_per_prompt, generator, output_type,
                            prior_num_inference_steps, decoder_num_inference_steps,
                            super_res_num_inference_steps)
        device = self._execution_device
        cfg = prior_guidance_scale > 1.0 or decoder_guidance_scale > 1.0
        embeds, states, mask = self._encode_prompt(prompt, device, num_images_per_prompt, cfg,
                                                   text_model_output, text_attention_mask)
        with sampling(self.prior):
            image_embeddings = self._run_prior(embeds, states, mask, batch, prior_guidance_scale,
                                               cfg, prior_num_inference_steps, generator,
                                               prior_latents)
        with sampling(self.decoder):
            small = self._run_decoder(image_embeddings, embeds, states, mask, batch,
                                      decoder_guidance_scale, cfg, decoder_num_inference_steps,
                                      generator, decoder_latents)
        with sampling():
            image = self._run_super_res(small, super_res_num_inference_steps, generator,
                                        super_res_latents)
        self.maybe_free_model_hooks()
        # made outside inference mode: an ordinary tensor, whatever the output type
        images = to_output((image * 0.5 + 0.5).clamp(0, 1), output_type)
        return ImagePipelineOutput(images=images) if return_dict else (images,)

    def _check(self, prompt, text_model_output, text_attention_mask, num_images_per_prompt,
               generator, output_type, *steps) -> int:
        if (prompt is None) == (text_model_output is None):
            raise PipelineError("pass exactly one of prompt and text_model_output")
        if prompt is not None and not is_prompt(prompt):
            raise PipelineError(f"prompt must be a str or a list of str, got "
                                f"{type(prompt).__name__}")
        if text_model_output is not None and text_attention_mask is None:
            raise PipelineError("text_model_output needs text_attention_mask (the tokenizer's "
                                "attention mask for the same prompts)")
        check_steps("num_images_per_prompt", num_images_per_prompt)
        for name, value in zip(("prior_num_inference_steps", "decoder_num_inference_steps",
                                "super_res_num_inference_steps"), steps):
            check_steps(name, value)
        batch = (1 if isinstance(prompt, str) else len(prompt)) if prompt is not None \
            else text_model_output[0].shape[0]
        check_generators(generator, batch * num_images_per_prompt)
        check_output_type(output_type)
        return batch * num_images_per_prompt

    def _steps(self, scheduler: Any, n: int, device: torch.device) -> list[tuple[Any, Any]]:
        """Each step's timestep and the one it lands on (``None`` after the last)."""
        scheduler.set_timesteps(n, device=device)
        timesteps = scheduler.timesteps
        return [(t, timesteps[i + 1] if i + 1 < len(timesteps) else None)
                for i, t in enumerate(timesteps)]

    @staticmethod
    def _step(scheduler: Any, prediction, t, prev, sample, generator) -> torch.Tensor:
        extra = step_kwargs(scheduler, generator, prev_timestep=prev)
        return scheduler.step(prediction, t, sample, **extra).prev_sample

    def _run_prior(self, embeds, states, mask, batch, guidance_scale, cfg, steps, generator,
                   latents) -> torch.Tensor:
        """Stage 1: the CLIP image embedding z_i."""
        scheduler = self.prior_scheduler
        schedule = self._steps(scheduler, steps, embeds.device)
        latents = self.prepare_latents((batch, self.prior.config.embedding_dim), embeds.dtype,
                                       embeds.device, generator, latents, scheduler)
        for t, prev in self.progress_bar(schedule):
            model_input = torch.cat([latents] * 2) if cfg else latents
            prediction = self.prior(model_input, timestep=t, proj_embedding=embeds,
                                    encoder_hidden_states=states,
                                    attention_mask=mask).predicted_image_embedding
            if cfg:
                prediction = guided(prediction, guidance_scale)
            latents = self._step(scheduler, prediction, t, prev, latents, generator)
        return self.prior.post_process_latents(latents)

    def _run_decoder(self, image_embeddings, embeds, states, mask, batch, guidance_scale, cfg,
                     steps, generator, latents) -> torch.Tensor:
        """Stage 2: the 64 x 64 image from z_i and the text."""
        context, time_embeddings = self.text_proj(
            image_embeddings=image_embeddings, prompt_embeds=embeds,
            text_encoder_hidden_states=states, do_classifier_free_guidance=cfg)
        # the extra context tokens are always attended to
        context_mask = F.pad(mask, (self.text_proj.clip_extra_context_tokens, 0), value=True)
        scheduler = self.decoder_scheduler
        schedule = self._steps(scheduler, steps, context.device)
        size = self.decoder.config.sample_size
        latents = self.prepare_latents((batch, self.decoder.config.in_channels, size, size),
                                       context.dtype, context.device, generator, latents,
                                       scheduler)
        for t, prev in self.progress_bar(schedule):
            model_input = torch.cat([latents] * 2) if cfg else latents
            prediction = sample_of(self.decoder(model_input, t, encoder_hidden_states=context,
                                                class_labels=time_embeddings,
                                                attention_mask=context_mask))
            if cfg:  # guide the noise; the learned variance comes from the conditional half
                prediction = guided(prediction, guidance_scale, latents.shape[1])
            latents = self._step(scheduler, prediction, t, prev, latents, generator)
        return latents.clamp(-1, 1)

    def _run_super_res(self, small, steps, generator, latents) -> torch.Tensor:
        """Stage 3: upsample, ``super_res_first`` for every step but the last."""
        scheduler = self.super_res_scheduler
        schedule = self._steps(scheduler, steps, small.device)
        size = self.super_res_first.config.sample_size
        channels = self.super_res_first.config.in_channels // 2
        latents = self.prepare_latents((small.shape[0], channels, size, size), small.dtype,
                                       small.device, generator, latents, scheduler)
        upscaled = F.interpolate(small, size=[size, size], mode="bicubic", align_corners=False,
                                 antialias=True)
        for i, (t, prev) in enumerate(self.progress_bar(schedule)):
            unet = self.super_res_last if i == len(schedule) - 1 else self.super_res_first
            prediction = sample_of(unet(torch.cat([latents, upscaled], dim=1), t))
            latents = self._step(scheduler, prediction, t, prev, latents, generator)
        return latents
