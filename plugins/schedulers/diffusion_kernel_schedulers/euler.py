"""Euler's method on the probability-flow ODE in sigma space, with optional "churn": Karras et al.
2022, "Elucidating the design space of diffusion-based generative models", Algorithm 2 without its
second-order correction (k-diffusion's ``sample_euler``).

Paper symbols: x_i = ``sample`` at sigma_i = ``sigmas[i]``; D(x; sigma) the denoised estimate
(``pred_original_sample``); d_i = (x - D) / sigma the ODE's slope dx/dsigma (eq. 3 with
sigma(t) = t); gamma_i = min(S_churn / N, sqrt(2) - 1) for sigma_i in [S_tmin, S_tmax], else 0.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from diffusion_kernel.errors import SchedulerError
from diffusion_kernel.scheduling import SchedulerOutput, check_option

from .schedules import as_dtype, gaussian_noise, sigma_to_t
from .sigma_schedule import (
    FINAL_SIGMAS_TYPES,
    INTERPOLATION_TYPES,
    TIMESTEP_TYPES,
    SigmaSchedulerMixin,
    euler_step,
    final_sigma,
    run_sigmas,
    run_timesteps,
    sigma_kind,
    x0_coefficients,
)


def churn_gamma(s_churn: float, num_sigmas: int, sigma: float, s_tmin: float,
                s_tmax: float) -> float:
    """gamma_i of Algorithm 2: how far to raise the noise level before the step."""
    if s_churn > 0 and s_tmin <= sigma <= s_tmax:
        return min(s_churn / num_sigmas, 2**0.5 - 1)
    return 0.0


def churn(x: torch.Tensor, sigma: float, num_sigmas: int, s_churn: float, s_tmin: float,
          s_tmax: float, s_noise: float, like: torch.Tensor,
          generator) -> tuple[torch.Tensor, float]:
    """Algorithm 2, lines 4-6: raise the noise level to sigma_hat = (1 + gamma_i) sigma by adding
    fresh noise, x_hat = x + sqrt(sigma_hat^2 - sigma^2) eps with eps ~ N(0, S_noise^2 I) drawn
    like ``like``; returns (x_hat, sigma_hat), x unchanged when gamma_i = 0."""
    gamma = churn_gamma(s_churn, num_sigmas, sigma, s_tmin, s_tmax)
    sigma_hat = sigma * (1 + gamma)
    if gamma > 0:
        noise = gaussian_noise(like, generator)
        x = x + noise * (s_noise * (sigma_hat**2 - sigma**2) ** 0.5)
    return x, sigma_hat


class EulerDiscreteScheduler(SigmaSchedulerMixin):
    """Euler sampler (Karras et al. 2022, Algorithm 2, first order) for VP-trained models.

    Config (diffusers format): the training schedule (``num_train_timesteps``, ``beta_start``,
    ``beta_end``, ``beta_schedule``, ``trained_betas``, ``rescale_betas_zero_snr``),
    ``prediction_type`` ("epsilon", "v_prediction", "sample"), ``timestep_spacing``
    ("linspace", "leading", "trailing") with ``steps_offset``, ``interpolation_type``
    ("linear" in t, or "log_linear": even in log-sigma), the sigma discretisation
    (``use_karras_sigmas`` / ``use_exponential_sigmas`` over [``sigma_min``, ``sigma_max``]),
    ``timestep_type`` ("continuous" with v-prediction feeds the model 0.25 log sigma) and
    ``final_sigmas_type`` ("zero" or "sigma_min").
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
        interpolation_type: str = "linear",
        use_karras_sigmas: bool | None = False,
        use_exponential_sigmas: bool | None = False,
        use_beta_sigmas: bool | None = False,
        sigma_min: float | None = None,
        sigma_max: float | None = None,
        timestep_spacing: str = "linspace",
        timestep_type: str = "discrete",
        steps_offset: int = 0,
        rescale_betas_zero_snr: bool = False,
        final_sigmas_type: str = "zero",
    ):
        owner = type(self).__name__
        self._check_common_options(prediction_type, timestep_spacing)
        check_option("interpolation_type", interpolation_type, INTERPOLATION_TYPES, owner)
        check_option("timestep_type", timestep_type, TIMESTEP_TYPES, owner)
        check_option("final_sigmas_type", final_sigmas_type, FINAL_SIGMAS_TYPES, owner)
        self._sigma_kind = sigma_kind(use_karras_sigmas, use_exponential_sigmas,
                                      use_beta_sigmas, owner)
        self._init_training_schedule(beta_schedule, num_train_timesteps, beta_start, beta_end,
                                     trained_betas, rescale_betas_zero_snr)
        train_sigmas = torch.from_numpy(self.train_sigmas[::-1].copy())
        self._set_training_run(0.25 * train_sigmas.log() if self._continuous_timesteps else None)

    @property
    def _continuous_timesteps(self) -> bool:
        return (self.config.timestep_type == "continuous"
                and self.config.prediction_type == "v_prediction")

    def set_timesteps(
        self,
        num_inference_steps: int | None = None,
        device: str | torch.device | None = None,
        timesteps: Sequence[float] | None = None,
        sigmas: Sequence[float] | None = None,
    ) -> None:
        """Prepare a run of ``num_inference_steps``, or of custom descending ``timesteps``, or of
        custom ``sigmas`` (the final sigma included, so n steps take n + 1 sigmas). Starts clean."""
        cfg, owner = self.config, type(self).__name__
        if sum(v is not None for v in (num_inference_steps, timesteps, sigmas)) != 1:
            raise SchedulerError(f"{owner}.set_timesteps: pass exactly one of "
                                 f"num_inference_steps, timesteps or sigmas")
        if timesteps is not None and (self._sigma_kind != "default" or self._continuous_timesteps):
            raise SchedulerError(
                f"{owner}.set_timesteps: custom timesteps cannot be combined with "
                f"use_karras_sigmas/use_exponential_sigmas or continuous timesteps; pass sigmas"
            )
        if sigmas is not None:
            sigmas = np.asarray(sigmas, dtype=np.float32)
            if sigmas.ndim != 1 or len(sigmas) < 2:
                raise SchedulerError(f"{owner}.set_timesteps: sigmas must be a 1-D sequence with "
                                     f"at least 2 values (n steps need n + 1 sigmas)")
            n = len(sigmas) - 1
            run_ts = sigma_to_t(sigmas[:-1], self.log_sigmas)
        else:
            if timesteps is not None:
                run_ts = np.asarray(timesteps, dtype=np.float32)
                n = len(run_ts)
            else:
                n = self._check_num_steps(num_inference_steps, owner)
                run_ts = run_timesteps(cfg.timestep_spacing, n, cfg.num_train_timesteps,
                                       cfg.steps_offset, owner)
            run, run_ts = run_sigmas(self.train_sigmas, run_ts, self._sigma_kind, n,
                                     cfg.interpolation_type, cfg.sigma_min, cfg.sigma_max)
            last = final_sigma(cfg.final_sigmas_type, self.train_sigmas)
            sigmas = np.concatenate([run, [last]]).astype(np.float32)
        if self._continuous_timesteps:  # c_noise(sigma) = ln(sigma) / 4 (Karras et al., Table 1)
            run_ts = 0.25 * torch.from_numpy(sigmas[:-1]).log()
        self._set_run(sigmas, run_ts, n, device)

    def step(
        self,
        model_output: torch.Tensor,
        timestep: float | torch.Tensor,
        sample: torch.Tensor,
        s_churn: float = 0.0,
        s_tmin: float = 0.0,
        s_tmax: float = float("inf"),
        s_noise: float = 1.0,
        generator: torch.Generator | list[torch.Generator] | None = None,
        return_dict: bool = True,
    ) -> SchedulerOutput | tuple:
        """One Euler step from ``timestep`` to the next; ``s_churn`` > 0 first adds noise to raise
        sigma to sigma_hat = (1 + gamma) sigma (``generator``: one, or one per sample)."""
        i = self._begin_step(model_output, timestep, sample)
        sigma, sigma_next = self._sigma_list[i], self._sigma_list[i + 1]
        x = as_dtype(sample, torch.float32)
        x, sigma_hat = churn(x, sigma, len(self._sigma_list) - 1, s_churn, s_tmin, s_tmax,
                             s_noise, model_output, generator)
        prediction = self.config.prediction_type
        # epsilon is denoised at sigma_hat; v's rescaling refers to the model's input sigma
        a, b = x0_coefficients(prediction, sigma_hat if prediction == "epsilon" else sigma)
        prev_sample, denoised = euler_step(x, model_output, sigma_hat, sigma_next, a, b)
        prev_sample = as_dtype(prev_sample, model_output.dtype)
        return self._step_output(i, prev_sample, denoised, return_dict)

