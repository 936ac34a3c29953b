"""Composable prompts for Stable Diffusion: Liu et al. 2022, "Compositional Visual Generation with
Composable Diffusion Models" (conjunction, the AND operator).

``"a red house | a snowy forest"`` is two concepts; the sample should show both. Each concept
c_i is a separate conditional prediction, and their guidance directions are added
(Liu et al., Eq. 10, with classifier-free guidance's unconditional eps as the reference):

    eps = eps(x_t) + sum_i w_i (eps(x_t | c_i) - eps(x_t))

with w_i = guidance_scale * weight_i. Weights are written after a concept (``"a red house:1.5 |
a snowy forest:0.5"``) or passed as ``weights=[1.5, 0.5]``; a negative weight pushes the sample
away from a concept (negation). One concept of weight 1 is plain classifier-free guidance.

    pipe = DiffusionPipeline.from_pretrained(model, custom_pipeline="composable_stable_diffusion",
                                             trust_remote_code=True)
    pipe("a red house:1.2 | a snowy forest").images[0]
"""

from __future__ import annotations

import re

import torch
from diffusion_kernel import PipelineError, StableDiffusionPipeline

_WEIGHTED = re.compile(r"^(.*?):\s*([+-]?\d*\.?\d+)\s*$", re.S)


def split_prompt(prompt: str) -> tuple[list[str], list[float]]:
    """``"a:1.5 | b"`` -> ``(["a", "b"], [1.5, 1.0])``."""
    concepts, weights = [], []
    for part in prompt.split("|"):
        match = _WEIGHTED.match(part.strip())
        concepts.append(match.group(1).strip() if match else part.strip())
        weights.append(float(match.group(2)) if match else 1.0)
    return concepts, weights


class ComposableStableDiffusionPipeline(StableDiffusionPipeline):
    """Stable Diffusion for one composed prompt ``"c_1[:w_1] | c_2[:w_2] | ..."``."""

    @torch.no_grad()
    def __call__(self, prompt: str, height: int | None = None, width: int | None = None,
                 num_inference_steps: int = 50, guidance_scale: float = 7.5,
                 weights: list[float] | None = None, negative_prompt: str | None = None,
                 num_images_per_prompt: int = 1, eta: float = 0.0, generator=None,
                 latents: torch.Tensor | None = None, output_type: str = "pil",
                 return_dict: bool = True):
        """Generate ``num_images_per_prompt`` images showing every concept of ``prompt``;
        ``weights`` (one per concept) replace the ones written in the prompt. The
        unconditional prediction (``negative_prompt``, default empty) is always computed, as
        the composition needs it. Returns ``StableDiffusionPipelineOutput``."""
        if not isinstance(prompt, str):
            raise PipelineError("ComposableStableDiffusionPipeline takes one prompt string, "
                                "its concepts separated by '|'")
        concepts, written = split_prompt(prompt)
        weights = list(written if weights is None else weights)
        if len(weights) != len(concepts):
            raise PipelineError(f"got {len(weights)} weights for {len(concepts)} concepts "
                                f"{concepts}")
        height = height or self._default_size(0)
        width = width or self._default_size(1)
        self._check_size(height, width)
        batch = self._check_common(concepts[0], negative_prompt, None, None,
                                   num_images_per_prompt, generator, output_type, ("latents",))
        device = self._execution_device
        conds, uncond = self.encode_prompt(concepts, device, num_images_per_prompt, True,
                                           [negative_prompt or ""] * len(concepts))
        uncond = uncond[:num_images_per_prompt]  # the same for every concept
        steps, _ = self._set_timesteps(num_inference_steps, device)
        latents = self.prepare_latents(batch, self.unet.config.in_channels, height, width,
                                       conds.dtype, device, generator, latents)
        extra = self.step_kwargs(generator, eta)
        # eps(x_t) and eps(x_t | c_i) for every concept in one UNet call: [uncond, c_1, ..., c_n]
        embeds = torch.cat([uncond, conds])
        scales = [guidance_scale * w for w in weights]
        for t in self.progress_bar(steps):
            model_input = self.scheduler.scale_model_input(latents, t)
            model_input = torch.cat([model_input] * (1 + len(concepts)))
            eps = self.unet(model_input, t, encoder_hidden_states=embeds).sample
            eps_uncond, *eps_concepts = eps.chunk(1 + len(concepts))
            guided = eps_uncond  # Liu et al. Eq. 10
            for scale, eps_i in zip(scales, eps_concepts):
                guided = guided + scale * (eps_i - eps_uncond)
            latents = self.scheduler.step(guided, t, latents, **extra).prev_sample
        return self.finish(latents, output_type, return_dict)
