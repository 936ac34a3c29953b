"""Score SDE, variance exploding: Song, Sohl-Dickstein, Kingma, Kumar, Ermon & Poole 2021,
"Score-Based Generative Modeling through Stochastic Differential Equations" (arXiv:2011.13456).

The VE SDE dx = sqrt(d[sigma^2]/dt) dw (eq. 9 in the limit, eq. 30) perturbs data with noise
levels sigma(t) = sigma_min (sigma_max / sigma_min)^t. Sampling is predictor-corrector
(Algorithm 2, with the VE instances of Algorithms 3 and 5 in appendix G):

- predictor, reverse diffusion (eq. 46): with levels sigma_i > sigma_{i-1} of a geometric
  discretisation, x_mean = x + (sigma_i^2 - sigma_{i-1}^2) s(x, sigma_i),
  x = x_mean + sqrt(sigma_i^2 - sigma_{i-1}^2) z  (``step_pred``);
- corrector, annealed Langevin dynamics: eps = 2 (r ||z|| / ||s||)^2 with the target
  signal-to-noise ratio r = ``snr``, x_mean = x + eps s, x = x_mean + sqrt(2 eps) z
  (``step_correct``). As in the paper's reference code, ||z|| and ||s|| are per-sample norms
  averaged over the batch, so the step size is shared by the batch.

The model output is the score s(x, sigma) ~ grad log p_sigma(x); the model is called with the
noise level ``scheduler.sigmas[i]`` (the continuous sigma(t) at ``timesteps[i]``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from diffusion_kernel.base_output import BaseOutput
from diffusion_kernel.errors import ConfigError, SchedulerError
from diffusion_kernel.scheduling import SchedulerMixin, SchedulerOutput

from .alpha_schedule import check_num_inference_steps
from .schedules import (
    BeginIndexMixin,
    accumulate,
    broadcast_to,
    gaussian_noise,
    uniform_time,
)


@dataclass
class SdeVeOutput(BaseOutput):
    """``prev_sample`` (with noise) and ``prev_sample_mean`` (its noise-free mean; the usual
    final output of a run); ``out.to_tuple()`` gives both."""

    prev_sample: torch.Tensor
    prev_sample_mean: torch.Tensor


class ScoreSdeVeScheduler(BeginIndexMixin, SchedulerMixin):
    """Predictor-corrector sampling of the VE SDE (``step_pred`` / ``step_correct``)."""

    order = 1

    def __init__(
        self,
        num_train_timesteps: int = 2000,
        snr: float = 0.15,
        sigma_min: float = 0.01,
        sigma_max: float = 1348.0,
        sampling_eps: float = 1e-5,
        correct_steps: int = 1,
    ):
        if not 0 < sigma_min < sigma_max:
            raise ConfigError(f"ScoreSdeVeScheduler needs 0 < sigma_min < sigma_max, got "
                                 f"sigma_min={sigma_min}, sigma_max={sigma_max}")
        self.init_noise_sigma = sigma_max
        # As in the diffusers format, a new scheduler holds a run over num_train_timesteps
        # levels (step_pred works on it; add_noise noises to the training levels).
        self._sigma_min, self._sigma_max = sigma_min, sigma_max
        self._set_run(num_train_timesteps, None, None, None, None)

    @staticmethod
    def _geometric_levels(n: int, sigma_min: float, sigma_max: float) -> torch.Tensor:
        """n noise levels evenly spaced in log sigma, ascending (the SMLD discretisation)."""
        return torch.exp(torch.linspace(math.log(sigma_min), math.log(sigma_max), n))

    def set_timesteps(self, num_inference_steps: int, sampling_eps: float | None = None,
                      device: str | torch.device | None = None) -> None:
        """Prepare a run: continuous times t from 1 down to ``sampling_eps``, their noise
        levels ``sigmas`` (what the model is called with) and the run's discrete levels. The
        sigma bounds are those of the last ``set_sigmas`` (the config's until then)."""
        self._set_run(num_inference_steps, self._sigma_min, self._sigma_max, sampling_eps,
                      device)

    def set_sigmas(self, num_inference_steps: int, sigma_min: float | None = None,
                   sigma_max: float | None = None, sampling_eps: float | None = None) -> None:
        """Like ``set_timesteps``, with other sigma_min / sigma_max than the config's when given
        (they stay for later ``set_timesteps`` calls). The diffusers-format pipeline calls both;
        either one prepares the whole run, so ``sigmas[i]`` is always sigma(``timesteps[i]``)."""
        device = self.timesteps.device if self.timesteps is not None else None
        self._set_run(num_inference_steps,
                      sigma_min if sigma_min is not None else self.config.sigma_min,
                      sigma_max if sigma_max is not None else self.config.sigma_max,
                      sampling_eps, device)

    def _set_run(self, num_inference_steps, sigma_min, sigma_max, sampling_eps, device) -> None:
        owner = type(self).__name__
        n = check_num_inference_steps(num_inference_steps, self.config.num_train_timesteps,
                                      owner)
        self._sigma_min = sigma_min if sigma_min is not None else self.config.sigma_min
        self._sigma_max = sigma_max if sigma_max is not None else self.config.sigma_max
        self._eps = sampling_eps if sampling_eps is not None else self.config.sampling_eps
        self.timesteps = torch.linspace(1, self._eps, n, device=device)
        # sigma(t) = sigma_min (sigma_max / sigma_min)^t (sec. 3.4 / appendix C)
        self.sigmas = self._sigma_min * (self._sigma_max / self._sigma_min) ** self.timesteps.cpu()
        self.discrete_sigmas = self._geometric_levels(n, self._sigma_min, self._sigma_max)
        # g_i = sqrt(sigma_i^2 - sigma_{i-1}^2) per level (sigma_{-1} = 0); also as (g^2, g) floats
        below = torch.cat([torch.zeros(1), self.discrete_sigmas[:-1]])
        self._g = (self.discrete_sigmas**2 - below**2) ** 0.5
        self._diffusion = list(zip((self._g**2).tolist(), self._g.tolist(), strict=True))
        self.num_inference_steps = n
        self._begin_index = None

    def _level(self, t: float) -> int:
        """``_levels`` for one time, in Python arithmetic (the same float64 rounding)."""
        n = self.num_inference_steps
        step = round((1 - t) / (1 - self._eps) * (n - 1))
        if not 0 <= step <= n - 1:
            raise SchedulerError(f"ScoreSdeVeScheduler: timestep {t} is not a time of this run "
                                 f"(from 1 to {self._eps}, one or one per sample)")
        return n - 1 - step

    def _levels(self, timestep, batch: int) -> torch.Tensor:
        """The discrete level index of each sample's timestep: step i of n uses level n-1-i."""
        n = self.num_inference_steps
        t = torch.as_tensor(timestep, dtype=torch.float64).cpu().reshape(-1)
        step = torch.round((1 - t) / (1 - self._eps) * (n - 1)).long()
        if t.numel() not in (1, batch) or step.min() < 0 or step.max() > n - 1:
            raise SchedulerError(f"ScoreSdeVeScheduler: timestep {timestep} is not a time of "
                                 f"this run (from 1 to {self._eps}, one or one per sample)")
        return (n - 1 - step).expand(batch)

    def step_pred(self, model_output: torch.Tensor, timestep: float | torch.Tensor,
                  sample: torch.Tensor, generator: torch.Generator | list | None = None,
                  return_dict: bool = True) -> SdeVeOutput | tuple:
        """Reverse-diffusion predictor (eq. 46) at ``timestep`` with the score ``model_output``."""
        self._require_timesteps()
        self._check_model_output(model_output, sample)
        t = uniform_time(timestep, sample.shape[0])
        if t is not None:  # the usual case: one time for the whole batch, coefficients known
            g_squared, g = self._diffusion[self._level(t)]
            prev_sample_mean = torch.add(sample, model_output, alpha=g_squared)
        else:
            level = self._levels(timestep, sample.shape[0])
            g = broadcast_to(self._g[level], sample).to(sample.device)
            prev_sample_mean = torch.addcmul(sample, g**2, model_output)
        # x_mean = x - f dt + g^2 s, with f = 0 for the VE SDE; x = x_mean + g z
        prev_sample = accumulate(gaussian_noise(sample, generator), g, (1.0, prev_sample_mean))
        if not return_dict:
            return prev_sample, prev_sample_mean
        return SdeVeOutput(prev_sample=prev_sample, prev_sample_mean=prev_sample_mean)

    def step_correct(self, model_output: torch.Tensor, sample: torch.Tensor,
                     generator: torch.Generator | list | None = None,
                     return_dict: bool = True) -> SchedulerOutput | tuple:
        """One Langevin corrector step (Algorithm 5) with the score ``model_output``."""
        self._require_timesteps()
        self._check_model_output(model_output, sample)
        noise = gaussian_noise(sample, generator)
        batch = sample.shape[0]
        grad_norm = torch.linalg.vector_norm(model_output.reshape(batch, -1), dim=-1).mean()
        noise_norm = torch.linalg.vector_norm(noise.reshape(batch, -1), dim=-1).mean()
        step_size = 2 * (self.config.snr * noise_norm / grad_norm) ** 2
        prev_sample_mean = sample + step_size * model_output
        prev_sample = prev_sample_mean + (2 * step_size) ** 0.5 * noise
        if not return_dict:
            return (prev_sample,)
        return SchedulerOutput(prev_sample=prev_sample)

    def add_noise(self, original_samples: torch.Tensor, noise: torch.Tensor,
                  timesteps: torch.Tensor) -> torch.Tensor:
        """x = x_0 + sigma noise at the discrete levels ``timesteps`` (indices into
        ``discrete_sigmas``: the training levels, or this run's once it is prepared)."""
        index = torch.as_tensor(timesteps).long().reshape(-1).cpu()
        if index.numel() and (index.min() < 0 or index.max() >= len(self.discrete_sigmas)):
            raise SchedulerError(f"timesteps must index the {len(self.discrete_sigmas)} noise "
                                 f"levels, got {index.tolist()}")
        sigma = broadcast_to(self.discrete_sigmas[index].to(original_samples), original_samples)
        return original_samples + sigma * noise

    def __len__(self) -> int:
        return self.config.num_train_timesteps
