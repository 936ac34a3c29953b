"""Alpha-bar space: what the DDPM-family schedulers (DDPM, DDIM, DDIM inversion, PNDM, LCM) share.

These samplers work directly on the training chain x_t = sqrt(alpha_bar_t) x_0 +
sqrt(1 - alpha_bar_t) eps (Ho et al. 2020, eq. 4) and move between two of its timesteps. Here:

- ``x0_and_eps``: the model output turned into the clean-sample estimate x_0 and the noise eps for
  each prediction type (eq. 15 of Ho et al. for eps; v = sqrt(alpha_bar) eps - sqrt(1 - alpha_bar)
  x_0, Salimans & Ho 2022, sec. 4);
- ``limit_x0``: clipping or dynamic thresholding of x_0 (Saharia et al. 2022, sec. 2.3);
- ``AlphaSchedulerMixin``: the training schedule from the config, the checks every run makes, the
  timestep -> step lookup, ``add_noise`` and ``get_velocity``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from diffusion_kernel.errors import SchedulerError
from diffusion_kernel.scheduling import SchedulerMixin, check_option

from .schedules import (
    BETA_SCHEDULES,
    PREDICTION_TYPES,
    TIMESTEP_SPACINGS,
    BeginIndexMixin,
    alphas_cumprod_for,
    betas_for,
    broadcast_to,
    dynamic_threshold,
    own_option,
    spaced_timesteps,
)


def x0_and_eps(model_output: torch.Tensor, sample: torch.Tensor, sqrt_alpha_bar: float,
               sqrt_one_minus_alpha_bar: float, prediction_type: str):
    """(x_0, eps) implied by the model output at a timestep with the given sqrt(alpha_bar);
    x_0 is a fresh tensor unless the model predicts it (``prediction_type="sample"``)."""
    a, b = sqrt_alpha_bar, sqrt_one_minus_alpha_bar
    if prediction_type == "epsilon":  # x_0 = (x_t - sqrt(1 - abar) eps) / sqrt(abar)
        return torch.add(sample, model_output, alpha=-b).div_(a), model_output
    if prediction_type == "sample":
        return model_output, torch.add(sample, model_output, alpha=-a).div_(b)
    # v-prediction: x_0 = sqrt(abar) x_t - sqrt(1 - abar) v, eps = sqrt(abar) v + sqrt(1 - abar) x_t
    return (torch.add(a * sample, model_output, alpha=-b),
            torch.add(a * model_output, sample, alpha=b))


def x0_linear_coefficients(sqrt_alpha_bar: float, sqrt_one_minus_alpha_bar: float,
                           prediction_type: str) -> tuple[float, float]:
    """(p, q) with x_0 = p x_t + q F for the model output F (``x0_and_eps``'s x_0, unclipped)."""
    a, b = sqrt_alpha_bar, sqrt_one_minus_alpha_bar
    if prediction_type == "epsilon":
        return 1.0 / a, -b / a
    if prediction_type == "sample":
        return 0.0, 1.0
    return a, -b  # v-prediction


def limit_x0(x0: torch.Tensor, scheduler, owned: bool = False) -> torch.Tensor:
    """Dynamic thresholding when the scheduler's ``thresholding`` is set, else clipping to
    [-clip_sample_range, clip_sample_range] when its ``clip_sample`` is, else x0 unchanged
    (options its class does not take count as unset). ``owned``: x0 is a fresh tensor of the
    caller's, clipped in place."""
    config = scheduler.config
    if own_option(scheduler, "thresholding", False):
        return dynamic_threshold(x0, config.dynamic_thresholding_ratio, config.sample_max_value)
    if own_option(scheduler, "clip_sample", False):
        limits = (-config.clip_sample_range, config.clip_sample_range)
        return x0.clamp_(*limits) if owned else x0.clamp(*limits)
    return x0


def check_num_inference_steps(num_inference_steps: Any, num_train_timesteps: int,
                              owner: str) -> int:
    """A positive integer no larger than the number of training timesteps, or a SchedulerError."""
    if isinstance(num_inference_steps, bool) or not isinstance(
            num_inference_steps, int | np.integer) or num_inference_steps < 1:
        raise SchedulerError(
            f"{owner}.set_timesteps: num_inference_steps must be a positive integer, got "
            f"{num_inference_steps!r}"
        )
    if num_inference_steps > num_train_timesteps:
        raise SchedulerError(
            f"{owner}.set_timesteps: num_inference_steps={num_inference_steps} is more than the "
            f"{num_train_timesteps} timesteps the model was trained with; use at most "
            f"{num_train_timesteps}"
        )
    return int(num_inference_steps)


def check_custom_timesteps(timesteps: Sequence[int], num_train_timesteps: int,
                           owner: str) -> np.ndarray:
    """Custom timesteps as int64: strictly descending integers in [0, num_train_timesteps)."""
    values = np.asarray([int(t) for t in timesteps], dtype=np.int64)
    if values.size == 0:
        raise SchedulerError(f"{owner}.set_timesteps: timesteps= is empty; pass at least one")
    if np.any(np.diff(values) >= 0):
        raise SchedulerError(
            f"{owner}.set_timesteps: custom timesteps must be strictly descending, got "
            f"{values.tolist()}"
        )
    if values[0] >= num_train_timesteps or values[-1] < 0:
        raise SchedulerError(
            f"{owner}.set_timesteps: custom timesteps must lie in [0, {num_train_timesteps - 1}], "
            f"got {values.tolist()}"
        )
    return values


def previous_timestep(scheduler, timestep: int | torch.Tensor) -> int | torch.Tensor:
    """The timestep a step from ``timestep`` lands on, as the diffusers format returns it: the
    next entry of the run's ``timesteps`` as a 0-d tensor (``tensor(-1)`` after the last: the
    clean end), or ``timestep - 1`` before ``set_timesteps`` (the training chain)."""
    if scheduler.num_inference_steps is None and not scheduler.custom_timesteps:
        return timestep - 1
    i = scheduler._step_index(timestep)
    timesteps = scheduler.timesteps
    return timesteps[i + 1] if i + 1 < len(timesteps) else torch.tensor(-1)


class AlphaSchedulerMixin(BeginIndexMixin, SchedulerMixin):
    """Training schedule and bookkeeping of the alpha-bar schedulers. ``set_begin_index`` only
    records where an img2img run starts: these schedulers find their step from its timestep.

    ``__init__`` calls ``_init_training_schedule``; ``set_timesteps`` ends with ``_set_run``, which
    records the timesteps and builds the lookup ``step`` uses to find its step index from the
    timestep it is given (there is no step counter to get out of sync).
    """

    prediction_types: tuple[str, ...] = PREDICTION_TYPES
    timestep_spacings: tuple[str, ...] = TIMESTEP_SPACINGS

    def _init_training_schedule(self, config) -> None:
        owner = type(self).__name__
        trained_betas = own_option(self, "trained_betas", None)
        if trained_betas is None:
            check_option("beta_schedule", config.beta_schedule, BETA_SCHEDULES, owner)
        if own_option(self, "prediction_type", None) is not None:
            check_option("prediction_type", config.prediction_type, self.prediction_types, owner)
        if own_option(self, "timestep_spacing", None) is not None:
            check_option("timestep_spacing", config.timestep_spacing, self.timestep_spacings,
                         owner)
        self.betas = betas_for(config.beta_schedule, config.num_train_timesteps,
                               config.beta_start, config.beta_end, trained_betas,
                               own_option(self, "rescale_betas_zero_snr", False), owner=owner)
        self.alphas = 1.0 - self.betas
        # float32 cumulative product, as the format's reference computes it (a zero-SNR schedule
        # keeps its exact 0 at the end: v-prediction handles it, eps-prediction cannot)
        self.alphas_cumprod = alphas_cumprod_for(self.betas)
        # alpha_bar as float32 scalars: per-step coefficients are computed with float32
        # arithmetic, like the format's reference, so that runs agree to float32 round-off
        # (in float64, 1 - abar_t / abar_prev alone differs by ~1e-5 relative over big jumps)
        self._abar = [np.float32(a) for a in self.alphas_cumprod.tolist()]
        self.num_inference_steps: int | None = None
        self._begin_index: int | None = None
        self._index_of: dict[int, int] = {}

    def _check_steps_or_timesteps(self, num_inference_steps: Any,
                                  timesteps: Sequence[int] | None) -> None:
        if (num_inference_steps is None) == (timesteps is None):
            raise SchedulerError(f"{type(self).__name__}.set_timesteps: pass exactly one of "
                                 f"num_inference_steps or timesteps")

    def _spaced_run(self, num_inference_steps: Any) -> np.ndarray:
        """``num_inference_steps`` descending timesteps spaced by ``config.timestep_spacing`` and
        shifted by ``config.steps_offset`` (checked: the first must be a training step)."""
        owner = type(self).__name__
        T = self.config.num_train_timesteps
        n = check_num_inference_steps(num_inference_steps, T, owner)
        run = spaced_timesteps(self.config.timestep_spacing, n, T, self.config.steps_offset, owner)
        if run[0] >= T:
            raise SchedulerError(f"{owner}: steps_offset={self.config.steps_offset} moves the "
                                 f"first timestep past {T - 1}; lower it")
        return run

    def _run_timesteps(self, num_inference_steps: Any,
                       timesteps: Sequence[int] | None) -> np.ndarray:
        """The timesteps of a run: exactly one of ``num_inference_steps`` (``_spaced_run``) and
        explicit descending ``timesteps`` (checked)."""
        self._check_steps_or_timesteps(num_inference_steps, timesteps)
        if timesteps is not None:
            return check_custom_timesteps(timesteps, self.config.num_train_timesteps,
                                          type(self).__name__)
        return self._spaced_run(num_inference_steps)

    def _set_run(self, timesteps: np.ndarray, device=None) -> None:
        self.timesteps = torch.from_numpy(np.asarray(timesteps, dtype=np.int64).copy()).to(device)
        self.num_inference_steps = len(timesteps)
        self._index_of = {int(t): i for i, t in enumerate(timesteps)}
        self._begin_index = None

    def _step_index(self, timestep: Any) -> int:
        """The position of ``timestep`` in this run's ``timesteps``."""
        self._require_timesteps()
        if isinstance(timestep, torch.Tensor):
            if timestep.numel() != 1:
                raise SchedulerError(
                    f"{type(self).__name__}.step takes one timestep for the whole batch, got a "
                    f"tensor of shape {tuple(timestep.shape)}"
                )
            timestep = timestep.item()
        index = self._index_of.get(int(timestep)) if float(timestep).is_integer() else None
        if index is None:
            raise SchedulerError(
                f"{type(self).__name__}.step: timestep {timestep} is not one of this run's "
                f"timesteps {self.timesteps.tolist()}; pass the values of scheduler.timesteps"
            )
        return index

    def _abar_or(self, t: int, final: float) -> float:
        """alpha_bar_t, or ``final`` past the end of the chain (t < 0)."""
        return self._abar[t] if t >= 0 else final

    @staticmethod
    def _floats(values):
        """Coefficients as plain Python floats (fast scalar arguments to torch ops)."""
        return tuple(float(v) for v in values)

    # -- public API shared by the family --------------------------------------------------------
    def _coefficients_at(self, timesteps: torch.Tensor, like: torch.Tensor):
        alphas_cumprod = self.alphas_cumprod.to(device=like.device, dtype=like.dtype)
        timesteps = torch.as_tensor(timesteps, device=like.device).long().reshape(-1)
        if timesteps.numel() and (timesteps.min() < 0 or
                                  timesteps.max() >= self.config.num_train_timesteps):
            raise SchedulerError(
                f"timesteps must lie in [0, {self.config.num_train_timesteps - 1}], got "
                f"{timesteps.tolist()}"
            )
        abar = broadcast_to(alphas_cumprod[timesteps], like)
        return abar**0.5, (1 - abar) ** 0.5

    def add_noise(self, original_samples: torch.Tensor, noise: torch.Tensor,
                  timesteps: torch.Tensor) -> torch.Tensor:
        """x_t = sqrt(alpha_bar_t) x_0 + sqrt(1 - alpha_bar_t) noise (Ho et al. 2020, eq. 4), with
        one timestep for the batch or one per sample."""
        a, b = self._coefficients_at(timesteps, original_samples)
        return a * original_samples + b * noise

    def get_velocity(self, sample: torch.Tensor, noise: torch.Tensor,
                     timesteps: torch.Tensor) -> torch.Tensor:
        """The v-prediction target v = sqrt(alpha_bar_t) noise - sqrt(1 - alpha_bar_t) x_0."""
        a, b = self._coefficients_at(timesteps, sample)
        return a * noise - b * sample
