"""DEIS: diffusion exponential integrator sampler, multistep, in log-rho ("rhoAB-DEIS").

Zhang & Chen 2022, "Fast Sampling of Diffusion Models with Exponential Integrator". In the
time variable rho = sigma_t / alpha_t (the VE sigma), the probability-flow ODE becomes
d(x / alpha) = eps_theta d(rho) (their eq. 12), so

    x_t / alpha_t = x_s / alpha_s + integral_{rho_s}^{rho_t} eps_theta d(rho).

rhoAB-DEIS (sec. 4, eq. 15) fits a polynomial in log rho through the last p noise predictions
(an Adams-Bashforth extrapolation) and integrates it exactly: the weight of output m_j is
integral of its Lagrange basis polynomial l_j(log rho) d(rho) = [e^u P_j(u)] over u = log rho,
with P_j in closed form below. Order 1 is DDIM.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from diffusion_kernel.scheduling import SchedulerOutput, check_option

from .multistep import MultistepScheduler
from .schedules import as_dtype

# Option values of the other solvers' configs map onto DEIS's only variant (config swaps).
_ALGORITHM_ALIASES = {"dpmsolver": "deis", "dpmsolver++": "deis"}
_SOLVER_ALIASES = {"midpoint": "logrho", "heun": "logrho", "bh1": "logrho", "bh2": "logrho"}


def lagrange_rho_antiderivative(rho: float, node: float, others: list[float]) -> float:
    """An antiderivative, at ``rho``, of the Lagrange basis polynomial in u = log rho that is 1 at
    log ``node`` and 0 at the log of each of ``others`` (one or two of them), with respect to
    rho = e^u: for one other node c, e^u (u - log c - 1) / (log b - log c); for two, c and d,
    e^u ((u - lc)(u - ld) - (2u - lc - ld) + 2) / ((lb - lc)(lb - ld))."""
    u, lb = np.log(rho), np.log(node)
    if len(others) == 1:
        lc = np.log(others[0])
        return rho * (u - lc - 1.0) / (lb - lc)
    lc, ld = np.log(others[0]), np.log(others[1])
    return rho * ((u - lc) * (u - ld) - (2.0 * u - lc - ld) + 2.0) / ((lb - lc) * (lb - ld))


def rho_ab_weights(rho_t: float, nodes: list[float]) -> list[float]:
    """integral_{nodes[0]}^{rho_t} l_j(log rho) d(rho) for each node j: the weights of the model
    outputs at ``nodes`` (newest first; the step starts at nodes[0])."""
    weights = []
    for j, node in enumerate(nodes):
        others = nodes[:j] + nodes[j + 1:]
        weights.append(lagrange_rho_antiderivative(rho_t, node, others)
                       - lagrange_rho_antiderivative(nodes[0], node, others))
    return weights


class DEISMultistepScheduler(MultistepScheduler):
    """DEIS multistep sampler (log-rho Adams-Bashforth, orders 1-3). ``solver_order`` 2 or 3,
    ``lower_order_final`` lowers the order of the last steps of short (< 15 step) runs. A run
    ends at the smallest training sigma (never at sigma = 0)."""

    _repeat_last_sigma_when_discretised = True

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
        algorithm_type: str = "deis",
        solver_type: str = "logrho",
        lower_order_final: bool = True,
        use_karras_sigmas: bool = False,
        use_exponential_sigmas: bool = False,
        use_beta_sigmas: bool = False,
        use_flow_sigmas: bool = False,
        flow_shift: float = 1.0,
        timestep_spacing: str = "linspace",
        steps_offset: int = 0,
        use_dynamic_shifting: bool = False,
        time_shift_type: str = "exponential",
    ):
        owner = type(self).__name__
        check_option("algorithm_type", _ALGORITHM_ALIASES.get(algorithm_type, algorithm_type),
                     ("deis",), owner)
        check_option("solver_type", _SOLVER_ALIASES.get(solver_type, solver_type),
                     ("logrho",), owner)
        self._init_common()

    def _plan(self) -> None:
        """Per run index i and usable order: (weight of x_i, weights of m_i, m_{i-1}, ...)."""
        c, n = self.config, self.num_inference_steps
        alpha, sigma, lam = self.alpha, self.sigma_t, self.lambda_
        with np.errstate(divide="ignore"):
            rho = sigma / alpha  # the VE sigma (sigma / (1 - sigma) for flow sigmas)
        short = c.lower_order_final and n < 15
        self._max_order, self._coefs = [], []
        for i in range(n):
            order = c.solver_order
            if i == n - 1 and short:
                order = 1
            elif i == n - 2 and short:
                order = min(order, 2)
            order = min(order, i + 1)
            per_order = {1: (alpha[i + 1] / alpha[i],  # DDIM: -sigma_t (e^h - 1) eps
                             (-sigma[i + 1] * np.expm1(lam[i + 1] - lam[i]),))}
            with np.errstate(divide="ignore", invalid="ignore"):
                for k in range(2, order + 1):
                    w = rho_ab_weights(rho[i + 1], [rho[i - j] for j in range(k)])
                    per_order[k] = (alpha[i + 1] / alpha[i], tuple(alpha[i + 1] * np.array(w)))
            self._max_order.append(order)
            self._coefs.append({k: (float(cx), tuple(map(float, ws)))
                                for k, (cx, ws) in per_order.items()})

    def convert_model_output(self, model_output: torch.Tensor, sample: torch.Tensor,
                             **unused: Any) -> torch.Tensor:
        """The model output at the current step as a noise prediction, through the clean-sample
        estimate (so thresholding applies)."""
        i = self._step_index if self._step_index is not None else 0
        x0 = self.data_prediction(model_output, sample, i)
        return torch.add(sample, x0, alpha=-float(self.alpha[i])).div_(float(self.sigma_t[i]))

    def step(self, model_output: torch.Tensor, timestep: Any, sample: torch.Tensor,
             return_dict: bool = True):
        """One DEIS step from ``timestep`` to the next run timestep. Returns
        ``SchedulerOutput`` with ``prev_sample``."""
        model_output, i = self._begin_step(model_output, timestep, sample)
        dtype = self._compute_dtype(sample)
        m = self.convert_model_output(model_output, sample).to(dtype)
        self._push(m, self.config.solver_order)
        order = min(self._max_order[i], self._steps_taken + 1)
        x_coef, weights = self._coefs[i][order]
        prev_sample = self._combine(x_coef, sample.to(dtype),
                                    zip(weights, reversed(self._history[-order:])))
        self._end_step()
        prev_sample = as_dtype(prev_sample, sample.dtype)
        return SchedulerOutput(prev_sample) if return_dict else (prev_sample,)
