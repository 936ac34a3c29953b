"""DPM-Solver and DPM-Solver++ in singlestep form.

Lu et al. 2022 (DPM-Solver-2 and -3, Algorithms 1-2 and eqs. 3.7-3.9) and Lu et al. 2022b
(DPM-Solver++(2S), Algorithm 1). A singlestep solver of order k spends k model calls on one
interval: the run's timesteps are grouped into intervals of 1, 2 or 3 steps (``order_list``), the
intermediate timesteps of a group are the solver's intermediate points, and the group's last step
jumps from the sample saved at the group's start using every output of the group.

Symbols for a step at run index i of order k: the group starts at s = i - k + 1 (x_s saved),
t = i + 1; h = lambda_t - lambda_s; r0, r1 the intermediate points' (lambda - lambda_s) / h.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from diffusion_kernel.errors import ConfigError
from diffusion_kernel.scheduling import SchedulerOutput, check_option

from .multistep import (
    DPM_ALGORITHM_ALIASES,
    DPM_SOLVER_ALIASES,
    DPM_SOLVER_TYPES,
    VARIANCE_TYPES,
    MultistepScheduler,
    phi_coefficients,
)
from .schedules import gaussian_noise

SINGLESTEP_ALGORITHM_TYPES = ("dpmsolver", "dpmsolver++", "sde-dpmsolver++")


def order_list(num_inference_steps: int, solver_order: int, lower_order_final: bool,
               final_sigma_is_zero: bool) -> list[int]:
    """The order of each step: repeated groups 1, 2(, 3), the last group shortened to fit the
    run when ``lower_order_final``; a final step to sigma = 0 is first order."""
    n, k = num_inference_steps, solver_order
    if not lower_order_final:
        orders = list(range(1, k + 1)) * (n // k)
    elif k == 3:
        tail = {0: [1, 2, 1], 1: [1], 2: [1, 2]}[n % 3]
        orders = [1, 2, 3] * (n // 3 - (1 if n % 3 == 0 else 0)) + tail
    elif k == 2:
        orders = [1, 2] * (n // 2 - 1) + [1, 1] if n % 2 == 0 else [1, 2] * (n // 2) + [1]
    else:
        orders = [1] * n
    if final_sigma_is_zero:
        orders[-1] = 1
    return orders


def singlestep_weights(order: int, pc, r0: float, r1: float, solver_type: str) -> np.ndarray:
    """Weights of the group's outputs (m0 the newest, at i; m_{k-1} at the group start s)."""
    if order == 1:
        return np.array([pc.d0])
    if order == 2:  # D0 = m1 (at s), D1 = (m0 - m1) / r0
        w1 = pc.d1_midpoint if solver_type == "midpoint" else pc.d1
        return np.array([w1 / r0, pc.d0 - w1 / r0])
    # third order (Lu et al. 2022, Algorithm 2): D0 = m2, D1_0 = (m1 - m2) / r1,
    # D1_1 = (m0 - m2) / r0; midpoint uses D1_1 alone, heun the two-point derivative fit
    D0 = np.array([0.0, 0.0, 1.0])
    D1_0 = np.array([0.0, 1.0, -1.0]) / r1
    D1_1 = np.array([1.0, 0.0, -1.0]) / r0
    if solver_type == "midpoint":
        return pc.d0 * D0 + pc.d1 * D1_1
    D1 = (r0 * D1_0 - r1 * D1_1) / (r0 - r1)
    D2 = 2.0 * (D1_1 - D1_0) / (r0 - r1)
    return pc.d0 * D0 + pc.d1 * D1 + pc.d2 * D2


class DPMSolverSinglestepScheduler(MultistepScheduler):
    """DPM-Solver(++) singlestep sampler (DPM++ 2S / 3S). ``algorithm_type`` "dpmsolver++"
    (default), "dpmsolver" or "sde-dpmsolver++" (stochastic: ``step`` takes a ``generator``),
    ``solver_order`` 1-3, ``solver_type`` "midpoint" / "heun". Runs whose step count is not a
    multiple of the order, or that end at sigma = 0, shorten their last group
    (``lower_order_final``) for that run only: the config is never changed.
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
        lower_order_final: bool = False,
        use_karras_sigmas: bool = False,
        use_exponential_sigmas: bool = False,
        use_beta_sigmas: bool = False,
        use_flow_sigmas: bool = False,
        flow_shift: float = 1.0,
        final_sigmas_type: str = "zero",
        lambda_min_clipped: float = -float("inf"),
        variance_type: str | None = None,
        use_dynamic_shifting: bool = False,
        time_shift_type: str = "exponential",
    ):
        owner = type(self).__name__
        self.algorithm_type = DPM_ALGORITHM_ALIASES.get(algorithm_type, algorithm_type)
        self.solver_type = DPM_SOLVER_ALIASES.get(solver_type, solver_type)
        check_option("algorithm_type", self.algorithm_type, SINGLESTEP_ALGORITHM_TYPES, owner)
        check_option("solver_type", self.solver_type, DPM_SOLVER_TYPES, owner)
        check_option("variance_type", variance_type, VARIANCE_TYPES, owner)
        if self.algorithm_type == "dpmsolver" and final_sigmas_type == "zero":
            raise ConfigError(f"{owner}: final_sigmas_type 'zero' needs a data-prediction "
                              f"solver; with algorithm_type 'dpmsolver' use "
                              f"final_sigmas_type='sigma_min'")
        self._init_common()
        self._stochastic = self.algorithm_type == "sde-dpmsolver++"
        self._data_pred = self.algorithm_type != "dpmsolver"
        self._require_data_prediction_for_flow(
            self._data_pred, "use algorithm_type 'dpmsolver++' or 'sde-dpmsolver++'")

    def _default_timesteps(self, n: int) -> np.ndarray:
        # linspace over the training steps whose lambda is above lambda_min_clipped
        c = self.config
        clipped = self._clipped_train_steps()
        T = c.num_train_timesteps
        return np.linspace(0, T - 1 - clipped, n + 1).round()[::-1][:-1].copy().astype(np.int64)

    def _plan(self) -> None:
        c, n = self.config, self.num_inference_steps
        final_zero = c.final_sigmas_type == "zero"
        lower_final = c.lower_order_final or n % c.solver_order != 0 or final_zero
        self.order_list = order_list(n, c.solver_order, lower_final, final_zero)
        lam, alpha, sigma = self.lambda_, self.alpha, self.sigma_t
        self._coefs = []
        for i in range(n):
            per_order = {}
            for k in range(1, min(self.order_list[i], i + 1) + 1):
                s = i - k + 1
                h = lam[i + 1] - lam[s]
                pc = phi_coefficients(self.algorithm_type, h, alpha[s], sigma[s], alpha[i + 1],
                                      sigma[i + 1])
                with np.errstate(divide="ignore", invalid="ignore"):  # h = 0 or inf: unused
                    r0 = (lam[i] - lam[s]) / h
                    r1 = (lam[i - 1] - lam[s]) / h if k == 3 else np.nan
                    weights = singlestep_weights(k, pc, r0, r1, self.solver_type)
                per_order[k] = (float(pc.x), tuple(map(float, weights)), float(pc.noise))
            self._coefs.append(per_order)

    def _reset_run(self) -> None:
        super()._reset_run()
        self._group_start_sample: torch.Tensor | None = None

    def step(self, model_output: torch.Tensor, timestep: Any, sample: torch.Tensor,
             generator: torch.Generator | list[torch.Generator] | None = None,
             return_dict: bool = True):
        """One step; at the last step of a group, the jump from the group's start. Returns
        ``SchedulerOutput`` with ``prev_sample``."""
        model_output, i = self._begin_step(model_output, timestep, sample)
        m = self.convert_model_output(model_output, sample)
        self._push(m, self.config.solver_order)
        order = min(self.order_list[i], self._steps_taken + 1)
        if order == 1:
            self._group_start_sample = sample
        x_coef, weights, noise_coef = self._coefs[i][order]
        terms = list(zip(weights, reversed(self._history[-order:])))
        if self._stochastic:
            terms.append((noise_coef, gaussian_noise(m, generator)))
        prev_sample = self._combine(x_coef, self._group_start_sample, terms)
        self._end_step()
        return SchedulerOutput(prev_sample) if return_dict else (prev_sample,)
