"""Ancestral Euler sampling (k-diffusion's ``sample_euler_ancestral``; Karras et al. 2022, sec. 4
discuss it as the stochastic baseline): each step takes an Euler step of the probability-flow ODE
down to sigma_down and adds fresh noise of std sigma_up, where sigma_down^2 + sigma_up^2 =
sigma_{i+1}^2 and sigma_up^2 = sigma_{i+1}^2 (sigma_i^2 - sigma_{i+1}^2) / sigma_i^2 is the
variance of the DDPM posterior q(x_{i+1} | x_i, x_0) written in sigma space (Ho et al. 2020, eq. 7).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from diffusion_kernel.scheduling import SchedulerOutput

from .schedules import added_noise, as_dtype
from .sigma_schedule import (
    SigmaSchedulerMixin,
    euler_step,
    run_sigmas,
    run_timesteps,
    x0_coefficients,
)


def ancestral_split(sigma_from: float, sigma_to: float) -> tuple[float, float]:
    """(sigma_down, sigma_up): the deterministic target and the noise std of an ancestral step."""
    sigma_up = (sigma_to**2 * (sigma_from**2 - sigma_to**2) / sigma_from**2) ** 0.5
    sigma_down = (sigma_to**2 - sigma_up**2) ** 0.5
    return sigma_down, sigma_up


class EulerAncestralDiscreteScheduler(SigmaSchedulerMixin):
    """Euler ancestral sampler for VP-trained models.

    Config (diffusers format): the training schedule (``num_train_timesteps``, ``beta_start``,
    ``beta_end``, ``beta_schedule``, ``trained_betas``, ``rescale_betas_zero_snr``),
    ``prediction_type`` ("epsilon", "v_prediction", "sample") and ``timestep_spacing``
    ("linspace", "leading", "trailing") with ``steps_offset``.
    """

    order = 1
    _refuses_integer_timesteps = True

    def __init__(
        self,
        num_train_timesteps: int = 1000,
        beta_start: float = 0.0001,
        beta_end: float = 0.02,
        beta_schedule: str = "linear",
        trained_betas: np.ndarray | Sequence[float] | None = None,
        prediction_type: str = "epsilon",
        timestep_spacing: str = "linspace",
        steps_offset: int = 0,
        rescale_betas_zero_snr: bool = False,
    ):
        self._check_common_options(prediction_type, timestep_spacing)
        self._init_training_schedule(beta_schedule, num_train_timesteps, beta_start, beta_end,
                                     trained_betas, rescale_betas_zero_snr)
        self._set_training_run()
        self._split_steps()

    def set_timesteps(self, num_inference_steps: int,
                      device: str | torch.device | None = None) -> None:
        """Prepare a run of ``num_inference_steps`` (starts clean)."""
        cfg = self.config
        n = self._check_num_steps(num_inference_steps, type(self).__name__)
        timesteps = run_timesteps(cfg.timestep_spacing, n, cfg.num_train_timesteps,
                                  cfg.steps_offset, type(self).__name__)
        sigmas, timesteps = run_sigmas(self.train_sigmas, timesteps)
        self._set_run(np.concatenate([sigmas, [0.0]]), timesteps, n, device)
        self._split_steps()

    def _split_steps(self) -> None:
        """Per step of the run: the Euler target sigma_down and the fresh-noise std sigma_up."""
        pairs = zip(self._sigma_list[:-1], self._sigma_list[1:])
        self._down_up = [ancestral_split(s, s_next) for s, s_next in pairs]

    def step(
        self,
        model_output: torch.Tensor,
        timestep: float | torch.Tensor,
        sample: torch.Tensor,
        generator: torch.Generator | list[torch.Generator] | None = None,
        return_dict: bool = True,
    ) -> SchedulerOutput | tuple:
        """x_{i+1} = x + (sigma_down - sigma_i) d + sigma_up z, d = (x - D) / sigma_i, z ~ N(0, I)
        (``generator``: one, or one per sample)."""
        i = self._begin_step(model_output, timestep, sample)
        sigma = self._sigma_list[i]
        sigma_down, sigma_up = self._down_up[i]
        x = as_dtype(sample, torch.float32)
        a, b = x0_coefficients(self.config.prediction_type, sigma)
        prev_sample, denoised = euler_step(x, model_output, sigma, sigma_down, a, b)
        noise = added_noise(self, model_output, generator)
        prev_sample = as_dtype(prev_sample.add_(noise, alpha=sigma_up), model_output.dtype)
        return self._step_output(i, prev_sample, denoised, return_dict)
