"""LCM: Luo, Tan, Huang, Li & Zhao 2023, "Latent Consistency Models" (arXiv:2310.04378).

A consistency model f(x_t, t) maps any point of a trajectory straight to its clean end. It is the
model's x_0 estimate mixed with the input by the boundary-condition scalings (eq. 4 of Song et al.
2023, "Consistency Models", with the LCM timestep scaling s = ``timestep_scaling``):

    f(x_t, t) = c_skip(t) x_t + c_out(t) x0_hat,
    c_skip(t) = sigma_data^2 / ((s t)^2 + sigma_data^2),
    c_out(t) = s t / sqrt((s t)^2 + sigma_data^2)

Multistep sampling (LCM Algorithm 3; Consistency Models Algorithm 1): at each visited timestep
compute x_0 = f(x_t, t), then re-noise it to the next visited timestep,
x_next = sqrt(abar_next) x_0 + sqrt(1 - abar_next) z; the last step returns x_0.
The visited timesteps are a subset of the ``original_inference_steps`` skipping-step schedule
the model was distilled on (LCM sec. 4.2): t = k (i + 1) - 1, k = T // original_inference_steps.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from diffusion_kernel.base_output import BaseOutput
from diffusion_kernel.errors import SchedulerError

from .alpha_schedule import (
    AlphaSchedulerMixin,
    check_custom_timesteps,
    check_num_inference_steps,
    limit_x0,
    previous_timestep,
    x0_and_eps,
    x0_linear_coefficients,
)
from .schedules import accumulate, gaussian_noise, lincomb

SIGMA_DATA = 0.5  # sigma_data of the boundary-condition scalings (Consistency Models, sec. 3)


@dataclass
class LCMSchedulerOutput(BaseOutput):
    """``prev_sample`` (re-noised for the next step, or the result after the last) and
    ``denoised`` = f(x_t, t), the consistency model's clean estimate (the diffusers format's
    keys, in its order); ``pred_original_sample`` is ``denoised`` again, under the name every
    other scheduler's output uses."""

    prev_sample: torch.Tensor
    denoised: torch.Tensor | None = None
    pred_original_sample: torch.Tensor | None = None


class LCMScheduler(AlphaSchedulerMixin):
    """Multistep consistency sampling for latent consistency models (1-8 steps)."""

    order = 1
    init_noise_sigma = 1.0

    def __init__(
        self,
        num_train_timesteps: int = 1000,
        beta_start: float = 0.00085,
        beta_end: float = 0.012,
        beta_schedule: str = "scaled_linear",
        trained_betas: Sequence[float] | None = None,
        original_inference_steps: int = 50,
        clip_sample: bool = False,
        clip_sample_range: float = 1.0,
        set_alpha_to_one: bool = True,
        steps_offset: int = 0,
        prediction_type: str = "epsilon",
        thresholding: bool = False,
        dynamic_thresholding_ratio: float = 0.995,
        sample_max_value: float = 1.0,
        timestep_spacing: str = "leading",
        timestep_scaling: float = 10.0,
        rescale_betas_zero_snr: bool = False,
    ):
        self._init_training_schedule(self.config)
        self.final_alpha_cumprod = np.float32(1.0) if set_alpha_to_one else self._abar[0]
        self.custom_timesteps = False
        self.timesteps = torch.arange(num_train_timesteps - 1, -1, -1)

    def previous_timestep(self, timestep: int | torch.Tensor) -> int | torch.Tensor:
        """The timestep the step from ``timestep`` re-noises to (diffusers API; see
        ``alpha_schedule.previous_timestep``)."""
        return previous_timestep(self, timestep)

    def get_scalings_for_boundary_condition_discrete(self, timestep: int) -> tuple[float, float]:
        """(c_skip, c_out) at a training timestep (see the module docstring)."""
        scaled = timestep * self.config.timestep_scaling
        c_skip = SIGMA_DATA**2 / (scaled**2 + SIGMA_DATA**2)
        c_out = scaled / (scaled**2 + SIGMA_DATA**2) ** 0.5
        return c_skip, c_out

    def set_timesteps(self, num_inference_steps: int | None = None,
                      device: str | torch.device | None = None,
                      original_inference_steps: int | None = None,
                      timesteps: Sequence[int] | None = None, strength: float = 1.0) -> None:
        """Prepare a run of ``num_inference_steps`` steps (or over custom descending
        ``timesteps``), drawn from the ``original_inference_steps`` distillation schedule;
        ``strength`` < 1 keeps only its noisiest fraction (img2img)."""
        owner = type(self).__name__
        T = self.config.num_train_timesteps
        self._check_steps_or_timesteps(num_inference_steps, timesteps)
        original = original_inference_steps or self.config.original_inference_steps
        original = check_num_inference_steps(original, T, owner)
        k = T // original
        # the distillation schedule t = k (i + 1) - 1 (LCM sec. 4.2), ascending
        origin = np.arange(1, int(original * strength) + 1) * k - 1
        self.custom_timesteps = timesteps is not None
        if timesteps is not None:
            run = check_custom_timesteps(timesteps, T, owner)
            keep = min(int(len(run) * strength), len(run))
            run = run[len(run) - keep:]
        else:
            n = check_num_inference_steps(num_inference_steps, T, owner)
            if n > original:
                raise SchedulerError(
                    f"{owner}.set_timesteps: num_inference_steps={n} is more than "
                    f"original_inference_steps={original} the model was distilled with"
                )
            if len(origin) < n:
                raise SchedulerError(
                    f"{owner}.set_timesteps: strength={strength} leaves {len(origin)} "
                    f"timesteps, fewer than num_inference_steps={n}; raise strength or use "
                    f"fewer steps"
                )
            origin = origin[::-1]
            run = origin[np.floor(np.linspace(0, len(origin), n, endpoint=False)).astype(np.int64)]
        self._set_run(run, device)
        self._coefficients = []
        for i, t in enumerate(run.tolist()):
            a_t = self._abar[t]
            a_next = self._abar[run[i + 1]] if i + 1 < len(run) else self.final_alpha_cumprod
            c_skip, c_out = self.get_scalings_for_boundary_condition_discrete(t)
            self._coefficients.append(self._floats(
                (a_t**0.5, (1 - a_t) ** 0.5, a_next**0.5, (1 - a_next) ** 0.5, c_skip, c_out)))

    def step(self, model_output: torch.Tensor, timestep: int | torch.Tensor,
             sample: torch.Tensor, generator: torch.Generator | list[torch.Generator] | None = None,
             return_dict: bool = True) -> LCMSchedulerOutput | tuple:
        """One consistency step: ``denoised`` = f(x_t, t), ``prev_sample`` its re-noising to the
        next timestep (``generator``: one or one per sample), or ``denoised`` after the last."""
        i = self._step_index(timestep)
        self._check_model_output(model_output, sample)
        sqrt_a_t, sqrt_1m_a_t, sqrt_a_next, sqrt_1m_a_next, c_skip, c_out = self._coefficients[i]

        # 1. the model's x_0 estimate, clipped / thresholded if configured, and 2. the
        # consistency function f(x_t, t) = c_skip x_t + c_out x0_hat
        if self.config.thresholding or self.config.clip_sample:
            x0, _ = x0_and_eps(model_output, sample, sqrt_a_t, sqrt_1m_a_t,
                               self.config.prediction_type)
            x0 = limit_x0(x0, self, owned=x0 is not model_output)
            denoised = lincomb(c_out, x0, c_skip, sample)
        else:  # x0_hat = p x_t + q F is linear: f(x_t, t) in one combination
            p, q = x0_linear_coefficients(sqrt_a_t, sqrt_1m_a_t, self.config.prediction_type)
            denoised = lincomb(c_skip + c_out * p, sample, c_out * q, model_output)
        # 3. re-noise to the next timestep, except after the last (Algorithm 3)
        if i + 1 < len(self.timesteps):
            noise = gaussian_noise(model_output, generator)
            prev_sample = accumulate(noise, sqrt_1m_a_next, (sqrt_a_next, denoised))
        else:
            prev_sample = denoised
        if not return_dict:
            return prev_sample, denoised
        return LCMSchedulerOutput(prev_sample=prev_sample, pred_original_sample=denoised,
                                  denoised=denoised)
