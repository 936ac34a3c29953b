"""Ancestral DPM-Solver-2, as in k-diffusion's ``sample_dpm_2_ancestral``: the DPM2 midpoint step
(see ``kdpm2``) taken down to sigma_down, then fresh noise of std sigma_up, with
sigma_up^2 = sigma_{i+1}^2 (sigma_i^2 - sigma_{i+1}^2) / sigma_i^2 and sigma_down^2 =
sigma_{i+1}^2 - sigma_up^2 (the ancestral split of ``euler_ancestral``).

For a step sigma_i -> sigma_{i+1}, with sigma_mid = sqrt(sigma_i sigma_down):
  1. d_i = (x_i - D(x_i; sigma_i)) / sigma_i;  x' = x_i + (sigma_mid - sigma_i) d_i
  2. d'  = (x' - D(x'; sigma_mid)) / sigma_mid;
     x_{i+1} = x_i + (sigma_down - sigma_i) d' + sigma_up z,  z ~ N(0, I)
The last step (to sigma = 0) is a plain Euler step without noise.
"""

from __future__ import annotations

import torch
from diffusion_kernel.scheduling import SchedulerOutput

from .euler_ancestral import ancestral_split
from .heun import repeat_inner, slope
from .kdpm2 import KDPM2DiscreteScheduler
from .schedules import added_noise, sigma_to_t
from .sigma_schedule import x0_coefficients


class KDPM2AncestralDiscreteScheduler(KDPM2DiscreteScheduler):
    """Ancestral DPM2 (k-diffusion's DPM2 a) for VP-trained models; ``order = 2``. Same config as
    ``KDPM2DiscreteScheduler``; ``step`` takes a ``generator`` (one, or one per sample)."""

    order = 2

    def set_timesteps(self, num_inference_steps: int, device: str | torch.device | None = None,
                      num_train_timesteps: int | None = None) -> None:
        """Prepare a run of ``num_inference_steps`` steps (2n - 1 model calls). Starts clean."""
        sigmas, timesteps = self._step_sigmas(num_inference_steps, num_train_timesteps)
        values = sigmas.double().tolist()
        split = [ancestral_split(s, s_next) for s, s_next in zip(values[:-1], values[1:])]
        sigmas_down = torch.tensor([d for d, _ in split] + [0.0], dtype=torch.float32)
        sigmas_up = torch.tensor([u for _, u in split] + [0.0], dtype=torch.float32)
        # stage 2 evaluates at the log-space midpoint of sigma_i and sigma_down; the last step
        # has none (it ends at zero)
        midpoints = sigmas.log().lerp(sigmas_down.log(), 0.5).exp()
        midpoints[-2:] = 0.0
        mid_timesteps = torch.from_numpy(sigma_to_t(midpoints.numpy(), self.log_sigmas))
        timesteps = torch.tensor(timesteps, dtype=torch.float32)
        # model calls: t_0, then (t_mid of step i, t_{i+1}) for each step after the first
        calls = torch.stack([mid_timesteps[:-2].float(), timesteps[1:]], dim=-1).flatten()
        stage_sigmas = torch.cat([repeat_inner(sigmas), sigmas[-1:]])
        self._set_run(stage_sigmas.numpy(), torch.cat([timesteps[:1], calls]), len(timesteps),
                      device)

        def staged(values: torch.Tensor) -> torch.Tensor:
            return torch.cat([repeat_inner(values), values[-1:]])

        self.sigmas_interpol, self.sigmas_up, self.sigmas_down = (
            staged(midpoints), staged(sigmas_up), staged(sigmas_down))
        self._mid_list = self.sigmas_interpol.double().tolist()
        self._up_list = self.sigmas_up.double().tolist()
        self._down_list = self.sigmas_down.double().tolist()
        self._pending_sample = None

    def _model_sigma(self, i: int) -> float:
        # stage 1 evaluates at sigma_i, stage 2 at the midpoint of the step begun at i - 1
        return self._sigma_list[i] if self._pending_sample is None else self._mid_list[i - 1]

    def step(
        self,
        model_output: torch.Tensor,
        timestep: float | torch.Tensor,
        sample: torch.Tensor,
        generator: torch.Generator | list[torch.Generator] | None = None,
        return_dict: bool = True,
    ) -> SchedulerOutput | tuple:
        """One stage: the Euler half-step to the midpoint, or the midpoint-slope step to
        sigma_down plus noise of std sigma_up."""
        i = self._begin_step(model_output, timestep, sample)
        first = self._pending_sample is None
        j = i if first else i - 1  # the stage index where this step began
        sigma, sigma_mid = self._sigma_list[j], self._mid_list[j]
        sigma_eval = sigma if first else sigma_mid
        a, b = x0_coefficients(self.config.prediction_type, sigma_eval)
        derivative, denoised = slope(sample, model_output, sigma_eval, a, b)
        if first:
            self._pending_sample = sample
            prev_sample = torch.add(sample, derivative, alpha=sigma_mid - sigma)
        else:
            start, self._pending_sample = self._pending_sample, None
            prev_sample = torch.add(start, derivative, alpha=self._down_list[j] - sigma)
            noise = added_noise(self, model_output, generator)
            prev_sample.add_(noise, alpha=self._up_list[j])
        return self._step_output(i, prev_sample, denoised, return_dict)
