"""Improved PNDM (iPNDM): the fourth-order pseudo linear multistep sampler of Liu et al. 2022
("Pseudo Numerical Methods for Diffusion Models on Manifolds", eq. 12) with lower-order
Adams-Bashforth warm-up steps instead of Runge-Kutta ones (Zhang & Chen 2022, "Fast Sampling of
Diffusion Models with Exponential Integrator", sec. 4, "iPNDM"), as Crowson's v-diffusion and
Harmonai's Dance Diffusion sample with it (``iplms_sample``).

Continuous time t in [0, 1] with alpha_t = cos(pi t / 2), sigma_t = sin(pi t / 2) (the
variance-preserving "v-diffusion" process, x_t = alpha_t x_0 + sigma_t eps), and a model that
predicts the velocity v = alpha_t eps - sigma_t x_0 (Salimans & Ho 2022, sec. 4). A run of n
steps visits the "crash" schedule sigma = sin(pi s / 2)^2 for s = 1, (n-1)/n, ..., 1/n, then 0.
Each step:

    eps_i  = sigma_i x + alpha_i v                      (the noise the velocity implies)
    e      = Adams-Bashforth of eps_i, ..., eps_{i-3}   (orders 1-4: 1; (3, -1)/2;
                                                          (23, -16, 5)/12; (55, -59, 37, -9)/24)
    x_0    = (x - sigma_i e) / alpha_i,  x' = alpha_{i+1} x_0 + sigma_{i+1} e   (a DDIM step)

The config keeps the diffusers names: ``betas`` holds the sigmas of the run, ``alphas`` the
alphas. The multistep history makes the step order matter: step through ``timesteps`` in order.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
from diffusion_kernel.errors import SchedulerError
from diffusion_kernel.scheduling import SchedulerMixin, SchedulerOutput

from .alpha_schedule import check_num_inference_steps
from .pndm import ADAMS_BASHFORTH
from .schedules import RunIndexMixin, accumulate, broadcast_to, lincomb

# below this alpha a step forms x_0 explicitly (see ``step``)
ALPHA_SPLIT = 1e-3


class IPNDMScheduler(RunIndexMixin, SchedulerMixin):
    """Fourth-order improved pseudo linear multistep sampling of a v-prediction model."""

    order = 1
    init_noise_sigma = 1.0  # the run starts at sigma = 1, alpha = 0: pure noise
    pndm_order = 4

    def __init__(self, num_train_timesteps: int = 1000,
                 trained_betas: Sequence[float] | np.ndarray | None = None):
        self.timesteps = None
        self.num_inference_steps = None
        self.betas = self.alphas = None
        self._clear_run()

    def _clear_run(self) -> None:
        self.ets: list[torch.Tensor] = []  # eps of the finished steps, oldest first
        self._step_index: int | None = None
        self._begin_index: int | None = None

    def set_timesteps(self, num_inference_steps: int,
                      device: str | torch.device | None = None) -> None:
        """Prepare a run of ``num_inference_steps`` steps; ``timesteps`` are the continuous
        times t in (0, 1] the model is called at. Starts a fresh history."""
        n = check_num_inference_steps(num_inference_steps, self.config.num_train_timesteps,
                                      type(self).__name__)
        steps = torch.cat([torch.linspace(1, 0, n + 1)[:-1], torch.tensor([0.0])])
        if self.config.trained_betas is not None:
            sigmas = torch.tensor(np.asarray(self.config.trained_betas), dtype=torch.float32)
            if sigmas.shape != (n + 1,):
                raise SchedulerError(
                    f"IPNDMScheduler: trained_betas holds the {n + 1} noise levels of a "
                    f"{n}-step run (the last one 0), got {tuple(sigmas.shape)}; set "
                    f"num_inference_steps={sigmas.numel() - 1} or drop trained_betas")
        else:
            sigmas = torch.sin(steps * math.pi / 2) ** 2  # the crash schedule
        self.betas = sigmas
        self.alphas = (1.0 - sigmas**2) ** 0.5
        self.timesteps = (torch.atan2(sigmas, self.alphas) / math.pi * 2)[:-1].to(device)
        self.num_inference_steps = n
        self._sigma = sigmas.tolist()  # per-step coefficients as numbers (float32 values)
        self._alpha = self.alphas.tolist()
        self._clear_run()

    def index_for_timestep(self, timestep, schedule_timesteps: torch.Tensor | None = None) -> int:
        schedule = self.timesteps if schedule_timesteps is None else schedule_timesteps
        indices = (schedule == torch.as_tensor(timestep).to(schedule.device)).nonzero()
        if len(indices) == 0:
            raise SchedulerError(f"IPNDMScheduler: timestep {float(timestep):g} is not in this "
                                 f"run's timesteps; pass the values of scheduler.timesteps")
        return int(indices[1 if len(indices) > 1 else 0].item())

    # -- the run --------------------------------------------------------------------------------
    def step(self, model_output: torch.Tensor, timestep: float | torch.Tensor,
             sample: torch.Tensor, return_dict: bool = True) -> SchedulerOutput | tuple:
        """Feed the model's velocity prediction at ``timestep`` (the next entry of
        ``timesteps``); returns the sample at the next timestep (after the last: t = 0)."""
        self._require_timesteps()
        self._check_model_output(model_output, sample)
        if self._step_index is None:
            self._step_index = (self._begin_index if self._begin_index is not None
                                else self.index_for_timestep(timestep))
        i = self._step_index
        if i >= len(self.timesteps):
            raise SchedulerError("IPNDMScheduler: this run is finished; call set_timesteps() "
                                 "to start a new one")
        sigma, alpha = self._sigma[i], self._alpha[i]
        sigma_next, alpha_next = self._sigma[i + 1], self._alpha[i + 1]
        eps = lincomb(sigma, sample, alpha, model_output)
        self.ets = self.ets[-(self.pndm_order - 1):] + [eps]
        weights = ADAMS_BASHFORTH[len(self.ets)]
        e = eps
        if len(self.ets) > 1:
            e = accumulate(torch.mul(eps, weights[0]), 1.0,
                           *zip(weights[1:], reversed(self.ets[:-1])))
        if alpha < ALPHA_SPLIT:
            # x_0 first, then the DDIM step: exact where the run starts (alpha = 0, sigma = 1,
            # e = x), where the one-pass form below would cancel two huge terms
            pred_original = (sample - sigma * e) / max(alpha, 1e-8)
            prev_sample = lincomb(alpha_next, pred_original, sigma_next, e)
        else:  # the same step in one pass: x' = (a'/a) x + (s' - a' s / a) e
            prev_sample = lincomb(alpha_next / alpha, sample,
                                  sigma_next - alpha_next * sigma / alpha, e)
        self._step_index = i + 1
        if not return_dict:
            return (prev_sample,)
        return SchedulerOutput(prev_sample=prev_sample)

    # -- training -------------------------------------------------------------------------------
    @staticmethod
    def _alpha_sigma(timesteps: torch.Tensor, like: torch.Tensor):
        angle = torch.as_tensor(timesteps, dtype=torch.float32, device=like.device) * math.pi / 2
        angle = broadcast_to(angle.reshape(-1), like)
        return torch.cos(angle).to(like.dtype), torch.sin(angle).to(like.dtype)

    def add_noise(self, original_samples: torch.Tensor, noise: torch.Tensor,
                  timesteps: torch.Tensor) -> torch.Tensor:
        """x_t = cos(pi t / 2) x_0 + sin(pi t / 2) noise for continuous times ``t`` in [0, 1]
        (one per sample, or one for all): the process the model is trained on."""
        alpha, sigma = self._alpha_sigma(timesteps, original_samples)
        return alpha * original_samples + sigma * noise

    def get_velocity(self, sample: torch.Tensor, noise: torch.Tensor,
                     timesteps: torch.Tensor) -> torch.Tensor:
        """The training target v = cos(pi t / 2) noise - sin(pi t / 2) x_0 for clean ``sample``."""
        alpha, sigma = self._alpha_sigma(timesteps, sample)
        return alpha * noise - sigma * sample
