"""Sigma space: the view of a trained VP diffusion used by the k-diffusion samplers (Euler, Heun,
DPM2, LMS) and by Karras et al. 2022 ("Elucidating the design space of diffusion-based generative
models", EDM).

A VP model trained on x_t = sqrt(alpha_bar_t) x_0 + sqrt(1 - alpha_bar_t) eps is the same model
as a VE one on x_sigma = x_0 + sigma eps, with sigma_t = sqrt((1 - alpha_bar_t) / alpha_bar_t) and
x_sigma = x_t / sqrt(alpha_bar_t) = x_t sqrt(sigma^2 + 1). A sampler in sigma space therefore
feeds the model x_sigma / sqrt(sigma^2 + 1) (``scale_model_input``) and a continuous timestep
t(sigma) (``sigma_to_t``), and solves the probability-flow ODE dx/dsigma = (x - D(x; sigma)) / sigma
(Karras et al. 2022, eq. 1 and 3 with s(t) = 1, sigma(t) = t).

Here:
- ``run_timesteps`` / ``run_sigmas``: which timesteps and sigmas a run of n steps visits, with the
  Karras (eq. 5) or exponential discretisation and a final sigma of zero or sigma_min;
- ``x0_coefficients``: D(x; sigma) = a x + b F for each prediction type;
- ``SigmaSchedulerMixin``: the scheduler state every sigma-space scheduler shares (training
  schedule, run sigmas, step index and img2img begin index, ``scale_model_input``, ``add_noise``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from diffusion_kernel.errors import ConfigError, SchedulerError
from diffusion_kernel.scheduling import SchedulerMixin, SchedulerOutput, check_option

from .schedules import (
    BETA_SCHEDULES,
    PREDICTION_TYPES,
    TIMESTEP_SPACINGS,
    RunIndexMixin,
    alphas_cumprod_for,
    beta_sigmas,
    betas_for,
    broadcast_to,
    exp_betas,
    exponential_sigmas,
    karras_sigmas,
    lincomb,
    sigma_to_t,
    sigmas_from_alphas_cumprod,
    spaced_timesteps,
)

FINAL_SIGMAS_TYPES = ("zero", "sigma_min")
INTERPOLATION_TYPES = ("linear", "log_linear")
TIMESTEP_TYPES = ("discrete", "continuous")

# The schedulers of the diffusers format that share one config family (KarrasDiffusionSchedulers):
# any of them can be built from another's config.
KARRAS_DIFFUSION_SCHEDULERS = (
    "DDIMScheduler", "DDPMScheduler", "PNDMScheduler", "LMSDiscreteScheduler",
    "EulerDiscreteScheduler", "HeunDiscreteScheduler", "EulerAncestralDiscreteScheduler",
    "DPMSolverMultistepScheduler", "DPMSolverSinglestepScheduler", "KDPM2DiscreteScheduler",
    "KDPM2AncestralDiscreteScheduler", "DEISMultistepScheduler", "UniPCMultistepScheduler",
    "DPMSolverSDEScheduler", "EDMEulerScheduler",
)


# ------------------------------------------------------------------------------ schedule as data


def run_timesteps(timestep_spacing: str, num_inference_steps: int, num_train_timesteps: int,
                  steps_offset: int = 0, owner: str = "scheduler") -> np.ndarray:
    """Descending float32 timesteps for a run. Unlike the integer ``spaced_timesteps``, "linspace"
    is not rounded: sigma-space samplers interpolate sigma between training steps."""
    if timestep_spacing == "linspace":
        return np.linspace(0, num_train_timesteps - 1, num_inference_steps,
                           dtype=np.float32)[::-1].copy()
    return spaced_timesteps(timestep_spacing, num_inference_steps, num_train_timesteps,
                            steps_offset, owner).astype(np.float32)


def sigma_kind(use_karras_sigmas: bool = False, use_exponential_sigmas: bool = False,
               use_beta_sigmas: bool = False, owner: str = "scheduler") -> str:
    """Which discretisation the config's flags ask for: "karras", "exponential", "beta" or
    "default"."""
    if sum(map(bool, (use_karras_sigmas, use_exponential_sigmas, use_beta_sigmas))) > 1:
        raise ConfigError(
            f"{owner}: use_karras_sigmas, use_exponential_sigmas and use_beta_sigmas are "
            f"mutually exclusive; set at most one of them to True"
        )
    if use_beta_sigmas:
        return "beta"
    if use_karras_sigmas:
        return "karras"
    return "exponential" if use_exponential_sigmas else "default"


def discretise(sigmas: np.ndarray, kind: str, num_inference_steps: int,
               sigma_min: float | None = None, sigma_max: float | None = None) -> np.ndarray:
    """Replace a run's sigmas by ``num_inference_steps`` Karras (eq. 5, rho = 7), exponential or
    beta-distribution sigmas spanning the same range (or [sigma_min, sigma_max] when given);
    "default" keeps them."""
    if kind == "default":
        return sigmas
    lo = sigma_min if sigma_min is not None else float(sigmas[-1])
    hi = sigma_max if sigma_max is not None else float(sigmas[0])
    if kind == "karras":
        return karras_sigmas(lo, hi, num_inference_steps)
    if kind == "beta":
        return beta_sigmas(lo, hi, num_inference_steps)
    return exponential_sigmas(lo, hi, num_inference_steps)


def run_sigmas(train_sigmas: np.ndarray, timesteps: np.ndarray, kind: str = "default",
               num_inference_steps: int | None = None, interpolation_type: str = "linear",
               sigma_min: float | None = None, sigma_max: float | None = None,
               round_timesteps: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """(sigmas, timesteps) of a run, without the final sigma.

    ``train_sigmas`` are the float32 sigmas of the training steps 0..T-1 (ascending). "linear"
    interpolates sigma at the (fractional) run timesteps; "log_linear" spaces n+1 sigmas evenly in
    log-sigma over the whole training range. A Karras/exponential discretisation then replaces the
    sigmas and the timesteps become t(sigma) (rounded where the sampler wants integer timesteps).
    """
    n = num_inference_steps if num_inference_steps is not None else len(timesteps)
    if interpolation_type == "linear":
        sigmas = np.interp(timesteps, np.arange(len(train_sigmas)), train_sigmas)
    else:  # log_linear; float32 as in the diffusers format
        sigmas = torch.linspace(float(np.log(train_sigmas[-1])), float(np.log(train_sigmas[0])),
                                n + 1).exp().numpy()
    if kind != "default":
        sigmas = discretise(sigmas, kind, n, sigma_min, sigma_max)
        timesteps = sigma_to_t(sigmas, np.log(train_sigmas))
        if round_timesteps:
            timesteps = timesteps.round()
    return sigmas, timesteps


def final_sigma(final_sigmas_type: str, train_sigmas: np.ndarray) -> float:
    """The sigma a run ends at: 0 (a clean sample) or the smallest training sigma."""
    return float(train_sigmas[0]) if final_sigmas_type == "sigma_min" else 0.0


def x0_coefficients(prediction_type: str, sigma: float) -> tuple[float, float]:
    """(a, b) with D(x; sigma) = a x + b F(x) for a model output F in sigma space.

    epsilon: x0 = x - sigma eps. v (Salimans & Ho 2022, v = alpha eps - sigma_vp x0, rewritten with
    x = x_sigma / sqrt(sigma^2 + 1)): x0 = x / (sigma^2 + 1) - sigma / sqrt(sigma^2 + 1) v.
    sample: x0 = F.
    """
    if prediction_type == "epsilon":
        return 1.0, -sigma
    if prediction_type == "v_prediction":
        return 1.0 / (sigma**2 + 1), -sigma / (sigma**2 + 1) ** 0.5
    return 0.0, 1.0


def euler_step(x: torch.Tensor, model_output: torch.Tensor, sigma_hat: float, sigma_next: float,
               a: float, b: float) -> tuple[torch.Tensor, torch.Tensor]:
    """x_{i+1} = x + (sigma_{i+1} - sigma_hat) d with d = (x - D) / sigma_hat and
    D = a x + b F. Returns (x_{i+1}, D); folded into two fused ops."""
    denoised = lincomb(a, x, b, model_output)
    r = (sigma_next - sigma_hat) / sigma_hat
    # x + r (x - a x - b F) = (1 + r (1 - a)) x - r b F
    return lincomb(1.0 + r * (1.0 - a), x, -r * b, model_output), denoised


# ------------------------------------------------------------------------------ scheduler state


class SigmaSchedulerMixin(RunIndexMixin, SchedulerMixin):
    """State shared by the sigma-space schedulers.

    Subclasses call ``_init_training_schedule`` in ``__init__`` and ``_set_run`` at the end of
    ``set_timesteps``; ``step`` starts with ``i = self._begin_step(model_output, timestep, sample)``
    and ends with ``self._step_index = i + 1``. ``self.sigmas`` holds the run's sigmas (plus the
    final one), ``self.timesteps`` the timesteps the model is called at; both are rebuilt, and the
    step index and begin index cleared, by every ``set_timesteps``. As in the diffusers format,
    a new scheduler already holds a run (over the training timesteps, or ``set_timesteps`` with
    ``num_train_timesteps`` steps for the two-stage and multistep ones): code may read
    ``timesteps`` and ``sigmas`` before choosing a step count.
    """

    _compatibles = KARRAS_DIFFUSION_SCHEDULERS
    prediction_types: tuple[str, ...] = PREDICTION_TYPES
    # Euler-type steps refuse an int timestep (the usual mistake: the loop index from
    # enumerate); the multi-stage and multistep ones take it when it is one of ``timesteps``,
    # as in the diffusers format.
    _refuses_integer_timesteps = False

    # -- construction ---------------------------------------------------------------------------
    def _init_training_schedule(self, beta_schedule: str, num_train_timesteps: int,
                                beta_start: float, beta_end: float, trained_betas: Any,
                                rescale_betas_zero_snr: bool = False,
                                extra_beta_schedules: Sequence[str] = ()) -> None:
        owner = type(self).__name__
        if trained_betas is None and beta_schedule in extra_beta_schedules:  # only "exp" so far
            betas = exp_betas(num_train_timesteps)
        else:
            if trained_betas is None:
                valid = (*BETA_SCHEDULES, *extra_beta_schedules)
                check_option("beta_schedule", beta_schedule, valid, owner)
            betas = betas_for(beta_schedule, num_train_timesteps, beta_start, beta_end,
                              trained_betas, rescale_betas_zero_snr, owner=owner)
        self.betas = betas
        self.alphas_cumprod = alphas_cumprod_for(betas, rescale_betas_zero_snr)
        # sigma_t of the training steps 0..T-1 (ascending), float32 as in the diffusers format
        self.train_sigmas = sigmas_from_alphas_cumprod(self.alphas_cumprod)
        self.log_sigmas = np.log(self.train_sigmas)
        self._clear_run()

    def _check_common_options(self, prediction_type: str, timestep_spacing: str) -> None:
        owner = type(self).__name__
        check_option("prediction_type", prediction_type, self.prediction_types, owner)
        check_option("timestep_spacing", timestep_spacing, TIMESTEP_SPACINGS, owner)

    def _clear_run(self) -> None:
        self.num_inference_steps = None
        self.timesteps = None
        self.sigmas = None
        self._input_scale: list[float] = []
        self._step_index: int | None = None
        self._begin_index: int | None = None

    # -- a run ----------------------------------------------------------------------------------
    def _check_num_steps(self, num_inference_steps: Any, owner: str) -> int:
        """A step count between 1 and the number of training timesteps, or a SchedulerError."""
        most = self.config.num_train_timesteps
        if isinstance(num_inference_steps, bool) or not isinstance(
                num_inference_steps, (int, np.integer)) or num_inference_steps < 1:
            raise SchedulerError(
                f"{owner}.set_timesteps: num_inference_steps must be an integer >= 1, "
                f"got {num_inference_steps!r}"
            )
        if num_inference_steps > most:
            raise SchedulerError(
                f"{owner}.set_timesteps: num_inference_steps={num_inference_steps} is more than "
                f"the {most} timesteps the model was trained with (num_train_timesteps); use at "
                f"most {most}"
            )
        return int(num_inference_steps)

    def _set_run(self, sigmas: np.ndarray, timesteps: np.ndarray | torch.Tensor,
                 num_inference_steps: int | None, device: torch.device | str | None = None) -> None:
        """Record a run: float32 sigmas (final one included) kept on the CPU, float32 timesteps on
        ``device``; the step and begin indices start clean."""
        self.num_inference_steps = num_inference_steps
        self.sigmas = torch.from_numpy(np.asarray(sigmas, dtype=np.float32).copy())
        if not isinstance(timesteps, torch.Tensor):
            timesteps = torch.from_numpy(np.asarray(timesteps, dtype=np.float32).copy())
        self.timesteps = timesteps.to(device=device, dtype=torch.float32)
        self._sigma_list = self.sigmas.double().tolist()
        self._input_scale = self._input_scales()
        self._step_index = None
        self._begin_index = None

    def _input_scales(self) -> list[float]:
        """1 / sqrt(sigma^2 + 1) for each model call: x_t = x_sigma / sqrt(sigma^2 + 1)."""
        return [1.0 / (s * s + 1) ** 0.5 for s in self._model_input_sigmas()]

    def _model_input_sigmas(self) -> list[float]:
        """The sigma at which each entry of ``timesteps`` calls the model."""
        return self._sigma_list[: len(self.timesteps)]

    def _set_training_run(self, timesteps: torch.Tensor | None = None) -> None:
        """The state a new scheduler starts in (as in the diffusers format): a run over every
        training timestep, T - 1 down to 0 (or the model inputs ``timesteps`` of those steps),
        at the training sigmas (then zero), with ``num_inference_steps`` None. ``step`` works on
        it; ``set_timesteps`` replaces it."""
        T = len(self.train_sigmas)
        sigmas = np.concatenate([self.train_sigmas[::-1], [0.0]])
        if timesteps is None:
            timesteps = np.arange(T - 1, -1, -1, dtype=np.float32)
        self._set_run(sigmas, timesteps, None)

    def _require_timesteps(self) -> None:
        # the constructor's run (num_inference_steps None) is a run too
        if self.timesteps is None:
            super()._require_timesteps()

    @property
    def init_noise_sigma(self) -> torch.Tensor:
        """The standard deviation of the initial noise, a 0-d float32 tensor (as in the diffusers
        format): the largest sigma of the run (times sqrt(1 + 1/sigma^2) for "leading" spacing,
        whose first step is not the last training step)."""
        sigma_max = self.sigmas.max()
        if self.config.timestep_spacing in ("linspace", "trailing"):
            return sigma_max
        return (sigma_max**2 + 1) ** 0.5

    def index_for_timestep(self, timestep: Any, schedule_timesteps: torch.Tensor | None = None
                           ) -> int:
        """Position of ``timestep`` in the run (the second match where it occurs twice, so a run
        started mid-way does not skip a sigma)."""
        schedule = self.timesteps if schedule_timesteps is None else schedule_timesteps
        timestep = torch.as_tensor(timestep).to(schedule.device)
        indices = (schedule == timestep).nonzero()
        if len(indices) == 0:
            raise SchedulerError(
                f"{type(self).__name__}: timestep {float(timestep):g} is not in this run's "
                f"timesteps; pass the values of scheduler.timesteps"
            )
        return int(indices[1 if len(indices) > 1 else 0].item())

    def _current_index(self, timestep: Any) -> int:
        if self._step_index is None:
            self._step_index = (self._begin_index if self._begin_index is not None
                                else self.index_for_timestep(timestep))
        return self._step_index

    def _begin_step(self, model_output: torch.Tensor, timestep: Any, sample: torch.Tensor) -> int:
        """Checks shared by every ``step``; returns the step index."""
        self._require_timesteps()
        self._check_model_output(model_output, sample)
        if self._refuses_integer_timesteps and (
                isinstance(timestep, int) or (isinstance(timestep, torch.Tensor)
                                              and not timestep.is_floating_point())):
            raise SchedulerError(
                f"{type(self).__name__}.step got the integer timestep {timestep!r}: pass one of "
                f"scheduler.timesteps (float), not the loop index from enumerate()"
            )
        i = self._current_index(timestep)
        if i >= len(self.timesteps):
            raise SchedulerError(
                f"{type(self).__name__}.step: the run of {len(self.timesteps)} timesteps is "
                f"finished; call set_timesteps to start a new run"
            )
        return i

    # -- the contract -----------------------------------------------------------------------------
    def _step_output(self, i: int, prev_sample: torch.Tensor, denoised: torch.Tensor,
                     return_dict: bool) -> SchedulerOutput | tuple:
        """The end of step ``i``: the next step is i + 1; ``SchedulerOutput(prev_sample,
        pred_original_sample)``, or the pair as a tuple."""
        self._step_index = i + 1
        if not return_dict:
            return prev_sample, denoised
        return SchedulerOutput(prev_sample=prev_sample, pred_original_sample=denoised)

    def scale_model_input(self, sample: torch.Tensor, timestep: Any = None) -> torch.Tensor:
        """The model's input x_sigma / sqrt(sigma^2 + 1) at this step."""
        self._require_timesteps()
        return sample * self._input_scale[self._current_index(timestep)]

    def add_noise(self, original_samples: torch.Tensor, noise: torch.Tensor,
                  timesteps: torch.Tensor) -> torch.Tensor:
        """x_sigma = x_0 + sigma(t) noise (Karras et al. 2022, sec. 2) for run timesteps ``t``
        (one per sample); after ``set_begin_index`` the begin (or current) step's sigma."""
        self._require_timesteps()
        sigmas = self.sigmas.to(device=original_samples.device, dtype=original_samples.dtype)
        timesteps = torch.as_tensor(timesteps).reshape(-1)
        if self._begin_index is None:
            schedule = self.timesteps.to(original_samples.device)
            indices = [self.index_for_timestep(t, schedule) for t in timesteps]
        else:
            index = self._step_index if self._step_index is not None else self._begin_index
            indices = [index] * timesteps.shape[0]
        sigma = broadcast_to(sigmas[indices], original_samples)
        return original_samples + noise * sigma
