"""DPM-Solver and DPM-Solver++ in multistep form, ODE and SDE.

Lu et al. 2022, "DPM-Solver: A Fast ODE Solver for Diffusion Probabilistic Model Sampling in
Around 10 Steps" (noise prediction, eqs. 3.7-3.9) and Lu et al. 2022b, "DPM-Solver++: Fast
Solver for Guided Sampling of Diffusion Probabilistic Models" (data prediction; multistep
second order is Algorithm 2, "DPM-Solver++(2M)"; the third-order multistep update and the SDE
variants are from the same paper's appendix). Each step reuses the model outputs of the previous
one or two steps instead of extra model evaluations: one model call per step.

Symbols: run index i (sigma_i), s0 = i (the current point), t = i + 1 (the target), s1 = i - 1,
s2 = i - 2; h = lambda_t - lambda_s0, r0 = (lambda_s0 - lambda_s1) / h,
r1 = (lambda_s1 - lambda_s2) / h; m_k the converted model outputs, newest first.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from diffusion_kernel.errors import ConfigError
from diffusion_kernel.scheduling import SchedulerOutput, check_option

from .multistep import (
    DPM_ALGORITHM_ALIASES,
    DPM_ALGORITHM_TYPES,
    DPM_SOLVER_ALIASES,
    DPM_SOLVER_TYPES,
    VARIANCE_TYPES,
    MultistepScheduler,
    phi_coefficients,
    solver_timesteps,
)
from .schedules import as_dtype, gaussian_noise


def multistep_weights(order: int, pc, r0: float, r1: float, solver_type: str) -> np.ndarray:
    """Weights (w0, w1, w2) of the newest three model outputs in a multistep update of the given
    order: D0 = m0; second order D1 = (m0 - m1) / r0; third order (Lu et al. 2022b, appendix)
    D1 = D1_0 + r0 / (r0 + r1) (D1_0 - D1_1), D2 = 2 (D1_0 - D1_1) / (r0 + r1) with
    D1_0 = (m0 - m1) / r0, D1_1 = (m1 - m2) / r1."""
    D0 = np.array([1.0, 0.0, 0.0])
    if order == 1:
        return pc.d0 * D0
    D1_0 = np.array([1.0, -1.0, 0.0]) / r0
    if order == 2:
        w1 = pc.d1_midpoint if solver_type == "midpoint" else pc.d1
        return pc.d0 * D0 + w1 * D1_0
    # Why D2 has the factor 2. Write m(lambda) for the model term, m', m'' its derivatives at
    # lambda_s0, and u = lambda - lambda_s0; m1 sits at u = -r0 h, m2 at u = -(r0 + r1) h.
    # Taylor expansion (Lu et al. 2022, eq. 3.6; Lu et al. 2022b, eq. 9):
    #   D1_0 = h m' - r0 h^2 m'' / 2 + O(h^3),   D1_1 = h m' - (2 r0 + r1) h^2 m'' / 2 + O(h^3),
    # so D1_0 - D1_1 = (r0 + r1) h^2 m'' / 2 + O(h^3) and D1 = h m' + O(h^3). The exact integral
    # of the quadratic term, e.g. alpha_t int_0^h e^{-v} (h - v)^2 / 2 dv for DPM-Solver++
    # (eq. 9 with the Taylor series of x_theta), equals d2 * h^2 m'' with d2 from
    # ``phi_coefficients`` (alpha_t ((phi - h) / h^2 + 1/2), = alpha_t h / 6 + O(h^2)): d2
    # multiplies an estimate of h^2 m'', which is 2 (D1_0 - D1_1) / (r0 + r1). The reference
    # code (DPM-Solver's multistep_dpm_solver_third_update, and diffusers) omits the 2, which
    # halves the m'' term, leaves an O(h^3) local error and makes "3M" second order
    # (measured 2.07; with the 2: 3.07). The singlestep third-order update (Lu et al. 2022,
    # Algorithm 2) already carries the 2.
    D1_1 = np.array([0.0, 1.0, -1.0]) / r1
    D1 = D1_0 + r0 / (r0 + r1) * (D1_0 - D1_1)
    D2 = 2.0 * (D1_0 - D1_1) / (r0 + r1)
    return pc.d0 * D0 + pc.d1 * D1 + pc.d2 * D2


class DPMSolverMultistepScheduler(MultistepScheduler):
    """DPM-Solver(++) multistep sampler; the usual choice for 10-25 step guided sampling.

    ``algorithm_type``: "dpmsolver++" (data prediction, the default), "dpmsolver" (noise
    prediction), "sde-dpmsolver++" / "sde-dpmsolver" (stochastic: ``step`` takes a
    ``generator``, one per sample for batch-independent noise). ``solver_order`` 1-3 (2 for
    guided sampling), ``solver_type`` "midpoint" or "heun" (the second-order weight).
    ``lower_order_final`` lowers the order of the last steps of short (< 15 step) runs;
    ``euler_at_final`` makes the final step first order. ``final_sigmas_type`` "zero" ends at the
    clean sample, "sigma_min" at the smallest training sigma.
    """

    def __init__(
        self,
        num_train_timesteps: int = 1000,
        beta_start: float = 0.0001,
        beta_end: float = 0.02,
        beta_schedule: str = "linear",
        trained_betas: Any = None,
        solver_order: int = 2,
        prediction_type: str = "epsilon",
        thresholding: bool = False,
        dynamic_thresholding_ratio: float = 0.995,
        sample_max_value: float = 1.0,
        algorithm_type: str = "dpmsolver++",
        solver_type: str = "midpoint",
        lower_order_final: bool = True,
        euler_at_final: bool = False,
        use_karras_sigmas: bool = False,
        use_exponential_sigmas: bool = False,
        use_beta_sigmas: bool = False,
        use_lu_lambdas: bool = False,
        use_flow_sigmas: bool = False,
        flow_shift: float = 1.0,
        final_sigmas_type: str = "zero",
        lambda_min_clipped: float = -float("inf"),
        variance_type: str | None = None,
        timestep_spacing: str = "linspace",
        steps_offset: int = 0,
        rescale_betas_zero_snr: bool = False,
        use_dynamic_shifting: bool = False,
        time_shift_type: str = "exponential",
    ):
        owner = type(self).__name__
        self.algorithm_type = DPM_ALGORITHM_ALIASES.get(algorithm_type, algorithm_type)
        self.solver_type = DPM_SOLVER_ALIASES.get(solver_type, solver_type)
        check_option("algorithm_type", self.algorithm_type, DPM_ALGORITHM_TYPES, owner)
        check_option("solver_type", self.solver_type, DPM_SOLVER_TYPES, owner)
        check_option("variance_type", variance_type, VARIANCE_TYPES, owner)
        if self.algorithm_type in ("dpmsolver", "sde-dpmsolver") and final_sigmas_type == "zero":
            raise ConfigError(f"{owner}: final_sigmas_type 'zero' needs a data-prediction "
                              f"solver; with algorithm_type {algorithm_type!r} use "
                              f"final_sigmas_type='sigma_min'")
        if self.algorithm_type == "sde-dpmsolver" and solver_order == 3:
            raise ConfigError(f"{owner}: sde-dpmsolver has no third-order update; use "
                              f"solver_order 1 or 2, or algorithm_type 'sde-dpmsolver++'")
        self._init_common()
        self._stochastic = self.algorithm_type.startswith("sde-")
        self._data_pred = self.algorithm_type.endswith("++")
        self._require_data_prediction_for_flow(
            self._data_pred, "use algorithm_type 'dpmsolver++' or 'sde-dpmsolver++'")

    def _rounds_timesteps(self, kind: str) -> bool:
        # the format keeps fractional (then truncated) timesteps for the cosine schedule
        return kind in ("karras", "lu") and self.config.beta_schedule != "squaredcos_cap_v2"

    def _default_timesteps(self, n: int) -> np.ndarray:
        # lambda_min_clipped: skip the training steps whose lambda is below the clip, which
        # keeps the cosine schedule's last steps (lambda -> -inf) out of the run
        c = self.config
        clipped = self._clipped_train_steps()
        return solver_timesteps(c.timestep_spacing, n, c.num_train_timesteps, c.steps_offset,
                                last_timestep=c.num_train_timesteps - clipped,
                                owner=type(self).__name__)

    def _plan(self) -> None:
        """For every run index i: the highest order allowed there and, for each usable order,
        (weight of x_s0, weights of m0, m1, m2, weight of the noise)."""
        c, n = self.config, self.num_inference_steps
        lam, alpha, sigma = self.lambda_, self.alpha, self.sigma_t
        short = c.lower_order_final and n < 15
        self._max_order, self._coefs = [], []
        for i in range(n):
            order = c.solver_order
            if i == n - 1 and (c.euler_at_final or short or c.final_sigmas_type == "zero"):
                order = 1
            elif i == n - 2 and short:
                order = min(order, 2)
            h = lam[i + 1] - lam[i]
            if h == 0:  # a repeated final sigma: the step is the identity (order 1 keeps it so)
                order = 1
            order = min(order, i + 1)
            pc = phi_coefficients(self.algorithm_type, h, alpha[i], sigma[i], alpha[i + 1],
                                  sigma[i + 1])
            with np.errstate(divide="ignore", invalid="ignore"):  # h = 0 or inf: order 1 only
                r0 = (lam[i] - lam[i - 1]) / h if i >= 1 else np.nan
                r1 = (lam[i - 1] - lam[i - 2]) / h if i >= 2 else np.nan
                per_order = {k: (float(pc.x), tuple(map(float, multistep_weights(
                    k, pc, r0, r1, self.solver_type)))[:k], float(pc.noise))
                    for k in range(1, order + 1)}
            self._max_order.append(order)
            self._coefs.append(per_order)

    def step(self, model_output: torch.Tensor, timestep: Any, sample: torch.Tensor,
             generator: torch.Generator | list[torch.Generator] | None = None,
             variance_noise: torch.Tensor | None = None, return_dict: bool = True):
        """One DPM-Solver step from ``timestep`` to the next run timestep. ``generator`` (or
        explicit ``variance_noise``) feeds the SDE variants. Returns ``SchedulerOutput`` with
        ``prev_sample`` (and ``pred_original_sample`` for the data-prediction variants)."""
        model_output, i = self._begin_step(model_output, timestep, sample)
        dtype = self._compute_dtype(sample)
        m = self.convert_model_output(model_output, sample).to(dtype)
        self._push(m, self.config.solver_order)
        order = min(self._max_order[i], self._steps_taken + 1)
        x_coef, weights, noise_coef = self._coefs[i][order]
        x = sample.to(dtype)
        terms = list(zip(weights, reversed(self._history[-order:])))
        if self._stochastic:
            noise = (variance_noise.to(device=x.device, dtype=dtype) if variance_noise is not None
                     else gaussian_noise(x, generator))
            terms.append((noise_coef, noise))
        prev_sample = as_dtype(self._combine(x_coef, x, terms), model_output.dtype)
        self._end_step()
        x0 = m if self._data_pred else None
        return SchedulerOutput(prev_sample, x0) if return_dict else (prev_sample,)
