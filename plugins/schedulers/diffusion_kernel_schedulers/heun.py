"""Heun's second-order method on the probability-flow ODE: Karras et al. 2022, "Elucidating the
design space of diffusion-based generative models", Algorithm 1 (k-diffusion's ``sample_heun``).

Each step sigma_i -> sigma_{i+1} costs two model calls, so the run's ``timesteps`` list every
timestep but the first twice and ``step`` alternates between two stages:
  1. d_i = (x_i - D(x_i; sigma_i)) / sigma_i;  x' = x_i + (sigma_{i+1} - sigma_i) d_i  (Euler)
  2. d'  = (x' - D(x'; sigma_{i+1})) / sigma_{i+1};  x_{i+1} = x_i + (sigma_{i+1} - sigma_i)
     (d_i + d') / 2  (trapezoidal correction)
The last step (to sigma = 0) is Euler only (Algorithm 1, line 7: no correction when sigma = 0).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from diffusion_kernel.errors import SchedulerError
from diffusion_kernel.scheduling import SchedulerOutput

from .schedules import lincomb
from .sigma_schedule import (
    SigmaSchedulerMixin,
    run_sigmas,
    run_timesteps,
    sigma_kind,
    x0_coefficients,
)


def repeat_inner(values: torch.Tensor) -> torch.Tensor:
    """[v0, v1, v1, v2, v2, ...]: every entry but the first twice (one per stage of a 2-stage
    solver step)."""
    return torch.cat([values[:1], values[1:].repeat_interleave(2)])


def slope(x: torch.Tensor, model_output: torch.Tensor, sigma: float, a: float, b: float
          ) -> tuple[torch.Tensor, torch.Tensor]:
    """(d, D): the ODE slope d = (x - D) / sigma (Karras et al. 2022, eq. 3) and the denoised
    D = a x + b F, in the fewest ops (for epsilon, d is F itself)."""
    denoised = lincomb(a, x, b, model_output)
    p, q = (1.0 - a) / sigma, -b / sigma
    if p == 0.0 and q == 1.0:
        return model_output, denoised
    return lincomb(p, x, q, model_output), denoised


@dataclass
class PendingStep:
    """What the first stage of a two-stage step leaves for the second: x_i, d_i and the step."""

    sample: torch.Tensor
    derivative: torch.Tensor
    dt: float


class HeunDiscreteScheduler(SigmaSchedulerMixin):
    """Heun sampler (Karras et al. 2022, Algorithm 1) for VP-trained models; ``order = 2``.

    Config (diffusers format): the training schedule (``num_train_timesteps``, ``beta_start``,
    ``beta_end``, ``beta_schedule`` incl. "exp", ``trained_betas``), ``prediction_type``
    ("epsilon", "v_prediction", "sample"), the sigma discretisation (``use_karras_sigmas`` /
    ``use_exponential_sigmas``), ``clip_sample`` / ``clip_sample_range`` (clamp the denoised
    estimate) and ``timestep_spacing`` with ``steps_offset``.
    """

    order = 2

    def __init__(
        self,
        num_train_timesteps: int = 1000,
        beta_start: float = 0.00085,
        beta_end: float = 0.012,
        beta_schedule: str = "linear",
        trained_betas: np.ndarray | Sequence[float] | None = None,
        prediction_type: str = "epsilon",
        use_karras_sigmas: bool | None = False,
        use_exponential_sigmas: bool | None = False,
        use_beta_sigmas: bool | None = False,
        clip_sample: bool | None = False,
        clip_sample_range: float = 1.0,
        timestep_spacing: str = "linspace",
        steps_offset: int = 0,
    ):
        owner = type(self).__name__
        self._check_common_options(prediction_type, timestep_spacing)
        self._sigma_kind = sigma_kind(use_karras_sigmas, use_exponential_sigmas,
                                      use_beta_sigmas, owner)
        self._init_training_schedule(beta_schedule, num_train_timesteps, beta_start, beta_end,
                                     trained_betas, extra_beta_schedules=("exp",))
        self._pending: PendingStep | None = None
        self.set_timesteps(num_train_timesteps)  # the diffusers format's starting run

    def set_timesteps(
        self,
        num_inference_steps: int | None = None,
        device: str | torch.device | None = None,
        num_train_timesteps: int | None = None,
        timesteps: Sequence[float] | None = None,
    ) -> None:
        """Prepare a run of ``num_inference_steps`` steps (2n - 1 model calls), or of custom
        descending ``timesteps``. ``num_train_timesteps`` overrides the config's for the spacing.
        Starts clean."""
        cfg, owner = self.config, type(self).__name__
        if (num_inference_steps is None) == (timesteps is None):
            raise SchedulerError(f"{owner}.set_timesteps: pass exactly one of "
                                 f"num_inference_steps or timesteps")
        if timesteps is not None and self._sigma_kind != "default":
            raise SchedulerError(f"{owner}.set_timesteps: custom timesteps cannot be combined "
                                 f"with use_karras_sigmas/use_exponential_sigmas")
        if timesteps is not None:
            run_ts = np.asarray(timesteps, dtype=np.float32)
            n = len(run_ts)
        else:
            n = self._check_num_steps(num_inference_steps, owner)
            run_ts = run_timesteps(cfg.timestep_spacing, n,
                                   num_train_timesteps or cfg.num_train_timesteps,
                                   cfg.steps_offset, owner)
        sigmas, run_ts = run_sigmas(self.train_sigmas, run_ts, self._sigma_kind, n)
        sigmas = torch.from_numpy(np.concatenate([sigmas, [0.0]]).astype(np.float32))
        # stage j calls the model at sigmas[j]: [s0, s1, s1, s2, s2, ..., s_{n-1}, s_{n-1}, 0]
        stage_sigmas = torch.cat([repeat_inner(sigmas[:-1]), sigmas[-1:]])
        stage_timesteps = repeat_inner(torch.from_numpy(np.asarray(run_ts, dtype=np.float32)))
        self._set_run(stage_sigmas.numpy(), stage_timesteps, n, device)
        self._pending = None

    @property
    def state_in_first_order(self) -> bool:
        """True when the next ``step`` is the first (Euler) stage of a step."""
        return self._pending is None

    def step(
        self,
        model_output: torch.Tensor,
        timestep: float | torch.Tensor,
        sample: torch.Tensor,
        return_dict: bool = True,
    ) -> SchedulerOutput | tuple:
        """One stage: the Euler predictor, or (on the call after it) Heun's correction."""
        i = self._begin_step(model_output, timestep, sample)
        cfg = self.config
        if self._pending is None:  # stage 1 at sigma_i, towards sigma_{i+1}
            sigma, sigma_next = self._sigma_list[i], self._sigma_list[i + 1]
            sigma_eval = sigma
        else:  # stage 2: evaluated at sigma_{i+1}
            sigma, sigma_next = self._sigma_list[i - 1], self._sigma_list[i]
            sigma_eval = sigma_next
        a, b = x0_coefficients(cfg.prediction_type, sigma_eval)
        if cfg.clip_sample:
            denoised = lincomb(a, sample, b, model_output).clamp(
                -cfg.clip_sample_range, cfg.clip_sample_range)
            derivative = (sample - denoised) / sigma_eval
        else:
            derivative, denoised = slope(sample, model_output, sigma_eval, a, b)
        if self._pending is None:
            dt = sigma_next - sigma
            self._pending = PendingStep(sample, derivative, dt)
            prev_sample = torch.add(sample, derivative, alpha=dt)
        else:
            first, self._pending = self._pending, None
            # x_{i+1} = x_i + dt (d_i + d') / 2
            prev_sample = torch.add(first.sample, first.derivative + derivative,
                                    alpha=first.dt / 2)
        return self._step_output(i, prev_sample, denoised, return_dict)
