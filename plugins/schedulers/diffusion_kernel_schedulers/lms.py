"""Linear multistep (Adams-Bashforth on a non-uniform grid) in sigma space, as in k-diffusion's
``sample_lms`` (used in Karras et al. 2022 as a baseline ODE solver).

The probability-flow ODE dx/dsigma = d(x; sigma) = (x - D(x; sigma)) / sigma is integrated from
sigma_i to sigma_{i+1} by replacing d with the polynomial interpolating the last k slopes
d_i, d_{i-1}, ..., d_{i-k+1} (Lagrange form):

    x_{i+1} = x_i + sum_j c_{ij} d_{i-j},
    c_{ij} = integral_{sigma_i}^{sigma_{i+1}} l_j(s) ds,
    l_j(s) = prod_{m != j} (s - sigma_{i-m}) / (sigma_{i-j} - sigma_{i-m}).

The c_{ij} depend only on the run's sigmas, so they are integrated exactly (the integrands are
polynomials), once per step of a run and order, not numerically.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
from diffusion_kernel.errors import SchedulerError
from diffusion_kernel.scheduling import SchedulerOutput

from .heun import slope
from .sigma_schedule import (
    SigmaSchedulerMixin,
    run_sigmas,
    run_timesteps,
    sigma_kind,
    x0_coefficients,
)


def lms_coefficients(sigmas: Sequence[float], i: int, order: int) -> list[float]:
    """[c_i0, ..., c_i(k-1)] for step i (sigma_i -> sigma_{i+1}) with k = min(order, i + 1)
    past slopes: exact integrals of the Lagrange basis polynomials on nodes sigma_i, ..,
    sigma_{i-k+1} (at most cubic: plain Python arithmetic is faster than numpy here)."""
    k = min(order, i + 1)
    nodes = [sigmas[i - m] for m in range(k)]
    lo, hi = sigmas[i], sigmas[i + 1]
    coefficients = []
    for j in range(k):
        others = nodes[:j] + nodes[j + 1:]
        basis = _monic_from_roots(others)  # prod_m (s - sigma_m), ascending powers
        scale = math.prod(nodes[j] - r for r in others)
        integral = sum(c * (hi ** (p + 1) - lo ** (p + 1)) / (p + 1) for p, c in enumerate(basis))
        coefficients.append(integral / scale)
    return coefficients


def _monic_from_roots(roots: Sequence[float]) -> list[float]:
    """Coefficients (ascending powers) of prod_r (s - r)."""
    coefficients = [1.0]
    for r in roots:
        shifted = [0.0, *coefficients]  # s * p(s)
        coefficients = [a - r * b for a, b in zip(shifted, [*coefficients, 0.0], strict=True)]
    return coefficients


class LMSDiscreteScheduler(SigmaSchedulerMixin):
    """Linear multistep sampler (order 4 by default, chosen per ``step(order=...)``) for
    VP-trained models.

    Config (diffusers format): the training schedule (``num_train_timesteps``, ``beta_start``,
    ``beta_end``, ``beta_schedule``, ``trained_betas``), the sigma discretisation
    (``use_karras_sigmas`` / ``use_exponential_sigmas``), ``prediction_type`` ("epsilon",
    "v_prediction", "sample") and ``timestep_spacing`` with ``steps_offset``.
    """

    order = 1
    default_lms_order = 4

    def __init__(
        self,
        num_train_timesteps: int = 1000,
        beta_start: float = 0.0001,
        beta_end: float = 0.02,
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
        self.derivatives: list[torch.Tensor] = []
        self._coefficients: dict[tuple[int, int], list[float]] = {}
        self.set_timesteps(num_train_timesteps)  # the diffusers format's starting run

    def set_timesteps(self, num_inference_steps: int,
                      device: str | torch.device | None = None) -> None:
        """Prepare a run of ``num_inference_steps``; each step's LMS coefficients are integrated
        when it is first taken. Starts clean (no slopes carried over)."""
        cfg, owner = self.config, type(self).__name__
        n = self._check_num_steps(num_inference_steps, owner)
        timesteps = run_timesteps(cfg.timestep_spacing, n, cfg.num_train_timesteps,
                                  cfg.steps_offset, owner)
        # the diffusers format takes the Karras range from the run's sigmas even where
        # sigma_min/sigma_max exist elsewhere: LMS has no such config fields
        sigmas, timesteps = run_sigmas(self.train_sigmas, timesteps, self._sigma_kind, n)
        self._set_run(np.concatenate([sigmas, [0.0]]), timesteps, n, device)
        self.derivatives = []
        self._coefficients = {}

    def _coefficients_of_step(self, order: int, i: int) -> list[float]:
        """c_{ij} of step i of the run at this order (integrated once per run)."""
        key = (order, i)
        if key not in self._coefficients:
            self._coefficients[key] = lms_coefficients(self._sigma_list, i, order)
        return self._coefficients[key]

    def get_lms_coefficient(self, order: int, t: int, current_order: int) -> float:
        """c_{t, current_order} of this run for a multistep of ``order`` (diffusers API)."""
        return self._coefficients_of_step(order, t)[current_order]

    def step(
        self,
        model_output: torch.Tensor,
        timestep: float | torch.Tensor,
        sample: torch.Tensor,
        order: int = 4,
        return_dict: bool = True,
    ) -> SchedulerOutput | tuple:
        """x_{i+1} = x_i + sum_j c_{ij} d_{i-j} with the last ``order`` slopes."""
        i = self._begin_step(model_output, timestep, sample)
        if isinstance(order, bool) or not isinstance(order, int) or order < 1:
            raise SchedulerError(f"{type(self).__name__}.step: order must be an integer >= 1, "
                                 f"got {order!r}")
        sigma = self._sigma_list[i]
        a, b = x0_coefficients(self.config.prediction_type, sigma)
        derivative, denoised = slope(sample, model_output, sigma, a, b)
        self.derivatives.append(derivative)
        if len(self.derivatives) > order:
            self.derivatives.pop(0)
        coefficients = self._coefficients_of_step(order, i)
        # newest slope first; after set_begin_index fewer slopes than coefficients exist
        prev_sample = sample
        for c, d in zip(coefficients, reversed(self.derivatives)):
            prev_sample = torch.add(prev_sample, d, alpha=c)
        return self._step_output(i, prev_sample, denoised, return_dict)
