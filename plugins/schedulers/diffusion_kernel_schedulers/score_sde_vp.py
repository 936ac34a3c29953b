"""Score SDE, variance preserving: Song, Sohl-Dickstein, Kingma, Kumar, Ermon & Poole 2021,
"Score-Based Generative Modeling through Stochastic Differential Equations" (arXiv:2011.13456).

The VP SDE dx = -1/2 beta(t) x dt + sqrt(beta(t)) dw (eq. 11), beta(t) = beta_min +
t (beta_max - beta_min), t in [0, 1], is the continuous limit of DDPM. Its perturbation kernel is
N(x; m(t) x_0, s(t)^2 I) with log m(t) = -1/4 t^2 (beta_max - beta_min) - 1/2 t beta_min and
s(t)^2 = 1 - m(t)^2 (eq. 29 / 33). Sampling integrates the reverse-time SDE (eq. 6)
dx = [f(x, t) - g(t)^2 grad log p_t(x)] dt + g(t) dw_bar with Euler-Maruyama steps of
dt = -1/N from t = 1 to ``sampling_eps``.

The model predicts the noise eps (as a DDPM model does); its score is -eps / s(t).
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
from diffusion_kernel.errors import SchedulerError
from diffusion_kernel.scheduling import SchedulerMixin

from .alpha_schedule import check_num_inference_steps
from .schedules import (
    BeginIndexMixin,
    accumulate,
    broadcast_to,
    gaussian_noise,
    lincomb,
    uniform_time,
)


class SdeVpOutput(NamedTuple):
    """``prev_sample`` (with noise) and ``prev_sample_mean`` (noise-free; the usual final
    output). A named tuple: the diffusers format's ``step_pred`` returns the plain tuple
    ``(x, x_mean)``, which code unpacks."""

    prev_sample: torch.Tensor
    prev_sample_mean: torch.Tensor


class ScoreSdeVpScheduler(BeginIndexMixin, SchedulerMixin):
    """Euler-Maruyama sampling of the reverse VP SDE (``step_pred``)."""

    order = 1
    init_noise_sigma = 1.0  # the prior at t = 1 is N(0, I)

    def __init__(self, num_train_timesteps: int = 2000, beta_min: float = 0.1,
                 beta_max: float = 20, sampling_eps: float = 1e-3):
        self.timesteps = None
        self.num_inference_steps = None

    def set_timesteps(self, num_inference_steps: int,
                      device: str | torch.device | None = None) -> None:
        """Prepare a run: continuous times from 1 down to ``sampling_eps``."""
        n = check_num_inference_steps(num_inference_steps, self.config.num_train_timesteps,
                                      type(self).__name__)
        self.timesteps = torch.linspace(1, self.config.sampling_eps, n, device=device)
        self.num_inference_steps = n
        # the step's coefficients at each of the run's times (float32, as a step computes them)
        times = self.timesteps.cpu()
        self._coefficients = dict(zip(times.tolist(), zip(
            *(c.tolist() for c in self._step_coefficients(times)), strict=True), strict=True))
        self._begin_index = None

    def _step_coefficients(self, t: torch.Tensor):
        """(c_x, c_eps, c_noise) with x_mean = c_x x + c_eps eps and x = x_mean + c_noise z.

        One reverse Euler-Maruyama step of dt = -1/n on the VP SDE (Song et al. 2021, eq. 6 and
        11): drift f - g^2 grad log p_t with f = -beta x / 2, g = sqrt(beta) and
        grad log p_t = -eps / s(t), so c_x = 1 - beta dt / 2, c_eps = beta dt / s(t) and
        c_noise = sqrt(beta) sqrt(-dt)."""
        std = torch.sqrt(1.0 - torch.exp(2.0 * self._log_mean_coeff(t)))  # s(t)
        dt = -1.0 / len(self.timesteps)
        beta_t = self.config.beta_min + t * (self.config.beta_max - self.config.beta_min)
        return 1.0 - 0.5 * beta_t * dt, beta_t * dt / std, torch.sqrt(beta_t) * math.sqrt(-dt)

    def _log_mean_coeff(self, t: torch.Tensor) -> torch.Tensor:
        c = self.config
        return -0.25 * t**2 * (c.beta_max - c.beta_min) - 0.5 * t * c.beta_min

    def _per_sample_t(self, t, like: torch.Tensor) -> torch.Tensor:
        t = torch.as_tensor(t, device=like.device, dtype=like.dtype).reshape(-1)
        if t.numel() not in (1, like.shape[0]) or t.min() < 0 or t.max() > 1:
            raise SchedulerError(f"ScoreSdeVpScheduler: t must be one time in [0, 1] or one per "
                                 f"sample, got {t.tolist()}")
        return broadcast_to(t.expand(like.shape[0]), like)

    def step_pred(self, score: torch.Tensor, x: torch.Tensor, t: float | torch.Tensor,
                  generator: torch.Generator | list | None = None) -> SdeVpOutput:
        """One reverse Euler-Maruyama step at time ``t`` for the model's noise prediction
        ``score`` (named as in the diffusers format); returns ``(x, x_mean)``."""
        self._require_timesteps()
        self._check_model_output(score, x)
        time = uniform_time(t, x.shape[0]) if x.dtype == torch.float32 else None
        if time in self._coefficients:  # one of the run's times for the whole batch
            c_x, c_eps, c_noise = self._coefficients[time]
            x_mean = lincomb(c_x, x, c_eps, score)
        else:
            c_x, c_eps, c_noise = self._step_coefficients(self._per_sample_t(t, x))
            x_mean = torch.mul(x, c_x).addcmul_(c_eps, score)
        x = accumulate(gaussian_noise(x, generator), c_noise, (1.0, x_mean))
        return SdeVpOutput(prev_sample=x, prev_sample_mean=x_mean)

    def add_noise(self, original_samples: torch.Tensor, noise: torch.Tensor,
                  timesteps: torch.Tensor) -> torch.Tensor:
        """x_t = m(t) x_0 + s(t) noise at continuous times ``timesteps`` in [0, 1] (eq. 33)."""
        t = self._per_sample_t(timesteps, original_samples)
        log_mean = self._log_mean_coeff(t)
        std = torch.sqrt(1.0 - torch.exp(2.0 * log_mean))
        return torch.exp(log_mean) * original_samples + std * noise

    def __len__(self) -> int:
        return self.config.num_train_timesteps
