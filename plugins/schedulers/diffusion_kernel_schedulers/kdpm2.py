"""DPM-Solver-2 in sigma space, as in k-diffusion's ``sample_dpm_2`` (Karras et al. 2022, sec. 3
and Appendix: the second-order DPM-Solver step of Lu et al. 2022, Algorithm 1 with r = 1/2, written
for dx/dsigma = (x - D) / sigma): a midpoint method whose midpoint is the geometric mean of the
two sigmas.

For a step sigma_i -> sigma_{i+1}, with sigma_mid = exp((ln sigma_i + ln sigma_{i+1}) / 2):
  1. d_i = (x_i - D(x_i; sigma_i)) / sigma_i;  x' = x_i + (sigma_mid - sigma_i) d_i
  2. d'  = (x' - D(x'; sigma_mid)) / sigma_mid;  x_{i+1} = x_i + (sigma_{i+1} - sigma_i) d'
The last step (to sigma = 0) is an Euler step (sigma_mid = 0). ``timesteps`` lists the model
calls: t(sigma_0), then t(sigma_mid) and t(sigma_{i+1}) for each further step.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from diffusion_kernel.scheduling import SchedulerOutput

from .heun import repeat_inner, slope
from .schedules import sigma_to_t
from .sigma_schedule import (
    SigmaSchedulerMixin,
    run_sigmas,
    run_timesteps,
    sigma_kind,
    x0_coefficients,
)


def geometric_midpoints(sigmas: torch.Tensor) -> torch.Tensor:
    """m_j = sqrt(sigma_{j-1} sigma_j) (log-space midpoint) for j >= 1; m_0 pairs sigma_0 with the
    last entry (0 for a run ending at zero), as the diffusers format's tables do."""
    return sigmas.log().lerp(sigmas.roll(1).log(), 0.5).exp()


class KDPM2DiscreteScheduler(SigmaSchedulerMixin):
    """DPM-Solver-2 (k-diffusion's DPM2) for VP-trained models; ``order = 2``.

    Config (diffusers format): the training schedule (``num_train_timesteps``, ``beta_start``,
    ``beta_end``, ``beta_schedule``, ``trained_betas``), the sigma discretisation
    (``use_karras_sigmas`` / ``use_exponential_sigmas``), ``prediction_type`` ("epsilon",
    "v_prediction", "sample") and ``timestep_spacing`` with ``steps_offset``.
    """

    order = 2

    def __init__(
        self,
        num_train_timesteps: int = 1000,
        beta_start: float = 0.00085,
        beta_end: float = 0.012,
        beta_schedule: str = "linear",
        trained_betas: np.ndarray | Sequence[float] | None = None,
        use_karras_sigmas: bool | None = False,
        use_exponential_sigmas: bool | None = False,
        use_beta_sigmas: bool | None = False,
        prediction_type: str = "epsilon",
        timestep_spacing: str = "linspace",
        steps_offset: int = 0,
    ):
        owner = type(self).__name__
        self._check_common_options(prediction_type, timestep_spacing)
        self._sigma_kind = sigma_kind(use_karras_sigmas, use_exponential_sigmas,
                                      use_beta_sigmas, owner)
        self._init_training_schedule(beta_schedule, num_train_timesteps, beta_start, beta_end,
                                     trained_betas)
        self._pending_sample: torch.Tensor | None = None
        self.set_timesteps(num_train_timesteps)  # the diffusers format's starting run

    # -- the run --------------------------------------------------------------------------------
    def _step_sigmas(self, num_inference_steps: int, num_train_timesteps: int | None
                     ) -> tuple[torch.Tensor, np.ndarray]:
        """(sigma_0..sigma_{n-1}, 0) and the timesteps t(sigma_i) of a run of n steps."""
        cfg, owner = self.config, type(self).__name__
        n = self._check_num_steps(num_inference_steps, owner)
        timesteps = run_timesteps(cfg.timestep_spacing, n,
                                  num_train_timesteps or cfg.num_train_timesteps,
                                  cfg.steps_offset, owner)
        # Karras sigmas get integer timesteps here (the diffusers format rounds them for DPM2)
        sigmas, timesteps = run_sigmas(self.train_sigmas, timesteps, self._sigma_kind, n,
                                       round_timesteps=self._sigma_kind == "karras")
        return torch.from_numpy(np.concatenate([sigmas, [0.0]]).astype(np.float32)), timesteps

    def set_timesteps(self, num_inference_steps: int, device: str | torch.device | None = None,
                      num_train_timesteps: int | None = None) -> None:
        """Prepare a run of ``num_inference_steps`` steps (2n - 1 model calls). Starts clean."""
        sigmas, timesteps = self._step_sigmas(num_inference_steps, num_train_timesteps)
        midpoints = geometric_midpoints(sigmas)
        mid_timesteps = torch.from_numpy(sigma_to_t(midpoints.numpy(), self.log_sigmas))
        timesteps = torch.from_numpy(np.asarray(timesteps, dtype=np.float32))
        # model calls: t_0, then (t_mid, t_{i+1}) for each step after the first
        calls = torch.stack([mid_timesteps[1:-1].float(), timesteps[1:]], dim=-1).flatten()
        stage_sigmas = torch.cat([repeat_inner(sigmas), sigmas[-1:]])
        self._set_run(stage_sigmas.numpy(), torch.cat([timesteps[:1], calls]), len(timesteps),
                      device)
        self.sigmas_interpol = torch.cat([repeat_inner(midpoints), midpoints[-1:]])
        self._mid_list = self.sigmas_interpol.double().tolist()
        self._pending_sample = None

    @property
    def state_in_first_order(self) -> bool:
        """True when the next ``step`` is the first (Euler-to-midpoint) stage of a step."""
        return self._pending_sample is None

    def _model_sigma(self, i: int) -> float:
        # stage 1 evaluates at sigma_i, stage 2 at the midpoint
        return self._sigma_list[i] if self._pending_sample is None else self._mid_list[i]

    def scale_model_input(self, sample: torch.Tensor, timestep=None) -> torch.Tensor:
        """The model's input x / sqrt(sigma^2 + 1) at this stage's sigma."""
        self._require_timesteps()
        sigma = self._model_sigma(self._current_index(timestep))
        return sample * (1.0 / (sigma * sigma + 1) ** 0.5)

    def step(
        self,
        model_output: torch.Tensor,
        timestep: float | torch.Tensor,
        sample: torch.Tensor,
        return_dict: bool = True,
    ) -> SchedulerOutput | tuple:
        """One stage: the Euler half-step to the midpoint, or the midpoint-slope full step."""
        i = self._begin_step(model_output, timestep, sample)
        first = self._pending_sample is None
        if first:  # stage 1: at sigma_i, towards sigma_mid
            sigma, sigma_mid = self._sigma_list[i], self._mid_list[i + 1]
            sigma_eval, target = sigma, sigma_mid
        else:  # stage 2: slope at sigma_mid, full step sigma_i -> sigma_{i+1}
            sigma, sigma_mid = self._sigma_list[i - 1], self._mid_list[i]
            sigma_eval, target = sigma_mid, self._sigma_list[i]
        a, b = x0_coefficients(self.config.prediction_type, sigma_eval)
        derivative, denoised = slope(sample, model_output, sigma_eval, a, b)
        if first:
            self._pending_sample = sample
            prev_sample = torch.add(sample, derivative, alpha=target - sigma)
        else:
            start, self._pending_sample = self._pending_sample, None
            prev_sample = torch.add(start, derivative, alpha=target - sigma)
        return self._step_output(i, prev_sample, denoised, return_dict)
