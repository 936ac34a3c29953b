"""DDIM: Song, Meng & Ermon 2021, "Denoising Diffusion Implicit Models" (arXiv:2010.02502).

A sampling run visits a decreasing subsequence tau_1 > ... > tau_S of the training timesteps and
moves from tau_i to tau_{i+1} with the generalised reverse step (eq. 12)

    x_prev = sqrt(abar_prev) x0_hat + sqrt(1 - abar_prev - sigma^2) eps_hat + sigma z,
    sigma  = eta sqrt((1 - abar_prev) / (1 - abar_t)) sqrt(1 - abar_t / abar_prev)   (eq. 16)

where "prev" is the NEXT VISITED timestep tau_{i+1} (sec. 4.2, "accelerated generation"), and
after the last one the clean end of the chain (abar = 1, or alpha_bar_0 with
``set_alpha_to_one=False``). eta = 0 is the deterministic DDIM sampler, eta = 1 is DDPM.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from diffusion_kernel.errors import SchedulerError
from diffusion_kernel.scheduling import SchedulerOutput

from .alpha_schedule import (
    AlphaSchedulerMixin,
    limit_x0,
    x0_and_eps,
)
from .schedules import gaussian_noise, lincomb
from .sigma_schedule import KARRAS_DIFFUSION_SCHEDULERS


class DDIMScheduler(AlphaSchedulerMixin):
    """Denoising diffusion implicit models (deterministic for ``eta=0``; ``eta`` is a step
    argument, as in the diffusers format)."""

    _compatibles = KARRAS_DIFFUSION_SCHEDULERS
    order = 1
    init_noise_sigma = 1.0

    def __init__(
        self,
        num_train_timesteps: int = 1000,
        beta_start: float = 0.0001,
        beta_end: float = 0.02,
        beta_schedule: str = "linear",
        trained_betas: Sequence[float] | None = None,
        clip_sample: bool = True,
        set_alpha_to_one: bool = True,
        steps_offset: int = 0,
        prediction_type: str = "epsilon",
        thresholding: bool = False,
        dynamic_thresholding_ratio: float = 0.995,
        clip_sample_range: float = 1.0,
        sample_max_value: float = 1.0,
        timestep_spacing: str = "leading",
        rescale_betas_zero_snr: bool = False,
    ):
        self._init_training_schedule(self.config)
        # alpha_bar past the last step: the clean data (1) or, as some checkpoints were trained,
        # the first training step's alpha_bar
        self.final_alpha_cumprod = np.float32(1.0) if set_alpha_to_one else self._abar[0]
        self.timesteps = torch.arange(num_train_timesteps - 1, -1, -1)

    def set_timesteps(self, num_inference_steps: int | None = None,
                      device: str | torch.device | None = None,
                      timesteps: Sequence[int] | None = None) -> None:
        """Prepare a run of ``num_inference_steps`` steps spaced by ``config.timestep_spacing``, or
        over explicit descending ``timesteps``. Calling it again starts a fresh run."""
        run = self._run_timesteps(num_inference_steps, timesteps)
        self._set_run(run, device)
        # Per step i (tau_i -> tau_{i+1}): sqrt(abar_t), sqrt(1 - abar_t), sqrt(abar_prev), the
        # eta = 1 variance of eq. 16, and abar_prev.
        self._coefficients = []
        for i, t in enumerate(run.tolist()):
            a_t = self._abar[t]
            a_prev = self._abar[run[i + 1]] if i + 1 < len(run) else self.final_alpha_cumprod
            variance = (1 - a_prev) / (1 - a_t) * (1 - a_t / a_prev) if a_t < 1 else 0.0
            self._coefficients.append(self._floats(
                (a_t**0.5, (1 - a_t) ** 0.5, a_prev**0.5, variance, a_prev)))

    def step(
        self,
        model_output: torch.Tensor,
        timestep: int | torch.Tensor,
        sample: torch.Tensor,
        eta: float = 0.0,
        use_clipped_model_output: bool = False,
        generator: torch.Generator | list[torch.Generator] | None = None,
        variance_noise: torch.Tensor | None = None,
        return_dict: bool = True,
    ) -> SchedulerOutput | tuple:
        """One DDIM step from ``timestep`` to the next timestep of the run.

        ``eta`` scales the noise (eq. 16); ``use_clipped_model_output`` recomputes eps from the
        clipped x0; ``variance_noise`` (or ``generator``, one or one per sample) gives z.
        Returns ``SchedulerOutput(prev_sample, pred_original_sample)``.
        """
        i = self._step_index(timestep)
        self._check_model_output(model_output, sample)
        if variance_noise is not None and generator is not None:
            raise SchedulerError("pass either generator or variance_noise to DDIM step, not both")
        # Paper symbols: sqrt(alpha_t), sqrt(1 - alpha_t), sqrt(alpha_{t-1}), with alpha = abar;
        # "t-1" is the next visited timestep tau_{i+1}.
        sqrt_a_t, sqrt_1m_a_t, sqrt_a_prev, variance, a_prev = self._coefficients[i]

        # 1. "predicted x0" and eps_theta(x_t) (eq. 12, first and second terms)
        x0, eps = x0_and_eps(model_output, sample, sqrt_a_t, sqrt_1m_a_t,
                             self.config.prediction_type)
        x0 = limit_x0(x0, self, owned=x0 is not model_output)
        if use_clipped_model_output:  # eps consistent with the clipped x0
            eps = (sample - sqrt_a_t * x0) / sqrt_1m_a_t

        # 2. sigma_t(eta) (eq. 16) and the "direction pointing to x_t" (eq. 12, second term)
        sigma = eta * variance**0.5
        direction = max(1 - a_prev - sigma**2, 0.0) ** 0.5
        prev_sample = lincomb(sqrt_a_prev, x0, direction, eps)

        # 3. random noise sigma_t z (eq. 12, third term)
        if eta > 0:
            if variance_noise is None:
                variance_noise = gaussian_noise(model_output, generator)
            prev_sample.add_(variance_noise, alpha=sigma)
        if not return_dict:
            return prev_sample, x0
        return SchedulerOutput(prev_sample=prev_sample, pred_original_sample=x0)
