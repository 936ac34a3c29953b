"""UniPC: a unified predictor-corrector framework for fast sampling of diffusion models.

Zhao et al. 2023, "UniPC: A Unified Predictor-Corrector Framework for Fast Sampling of Diffusion
Models". The predictor UniP-p is a p-th order multistep exponential integrator (Algorithm 2 with
the B(h) variants of sec. 3.3, "bh1": B(h) = h, "bh2": B(h) = e^h - 1); the corrector UniC-p
(Algorithm 1) reuses the model output at the freshly predicted point, which the next step needs
anyway, to raise the order of the previous step by one at no extra model call.

For an interval from s0 to t (h = lambda_t - lambda_s0, hh = -h for the data-prediction form),
with earlier points s_k at r_k = (lambda_{s_k} - lambda_s0) / h and D_k = (m_k - m_0) / r_k:

    x_t = c_x x_s0 - c_a (e^hh - 1) m_0 - c_a B(h) sum_k rho_k D_k       (predictor, eq. 8)

where c_x, c_a = sigma_t / sigma_s0, alpha_t (data prediction) or alpha_t / alpha_s0, sigma_t
(noise prediction) and rho solves R rho = b, R_ik = r_k^(i-1), b_i = i! h phi_{i+1}(hh) / B(h)
(sec. 3.2). The corrector adds the new point t itself (r = 1, D = m_t - m_0).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from diffusion_kernel.errors import ConfigError
from diffusion_kernel.scheduling import SchedulerOutput, check_option

from .multistep import MultistepScheduler
from .schedules import as_dtype

UNIPC_SOLVER_TYPES = ("bh1", "bh2")
# The other solvers' solver_type values map onto UniPC's default (config swaps).
_SOLVER_ALIASES = {"midpoint": "bh2", "heun": "bh2", "logrho": "bh2"}


def unipc_rhos(rks: np.ndarray, hh: float, solver_type: str) -> tuple[np.ndarray, np.ndarray,
                                                                        float, float]:
    """For nodes ``rks`` (the earlier points' r_k, then 1 for the new point): the predictor's
    and the corrector's rho, e^hh - 1 and B(h) (Zhao et al. 2023, sec. 3.2-3.3)."""
    p = len(rks)
    h_phi_1 = np.expm1(hh)  # h phi_1(h) = e^h - 1
    B_h = hh if solver_type == "bh1" else h_phi_1
    # b_i = i! h phi_{i+1}(h) / B(h), with h phi_{k+1} = h phi_k / h - 1/k! (phi recursion)
    h_phi_k, factorial, b = h_phi_1 / hh - 1.0, 1.0, []
    for i in range(1, p + 1):
        b.append(h_phi_k * factorial / B_h)
        factorial *= i + 1
        h_phi_k = h_phi_k / hh - 1.0 / factorial
    R = np.stack([rks ** (i - 1) for i in range(1, p + 1)])
    b = np.array(b)
    if p == 1:
        rhos_p = np.zeros(0)
    elif p == 2:
        rhos_p = np.array([0.5])  # UniP-2 with one earlier point (the paper's choice)
    else:
        rhos_p = np.linalg.solve(R[:-1, :-1], b[:-1])
    rhos_c = np.array([0.5]) if p == 1 else np.linalg.solve(R, b)
    return rhos_p, rhos_c, h_phi_1, B_h


class UniPCMultistepScheduler(MultistepScheduler):
    """UniPC sampler: multistep predictor (UniP) plus a free corrector (UniC) after each model
    call. ``solver_order`` p (2 for guided sampling, 3 for unconditional), ``solver_type``
    "bh1" / "bh2", ``predict_x0`` (data- or noise-prediction form), ``disable_corrector``: the
    step indices whose result is not corrected, ``solver_p``: another scheduler to use as the
    predictor (UniC then corrects its steps), ``lower_order_final``: lower the order of the last
    steps (always, not only for short runs).
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
        predict_x0: bool = True,
        solver_type: str = "bh2",
        lower_order_final: bool = True,
        disable_corrector: list[int] = (),
        solver_p: Any = None,
        use_karras_sigmas: bool = False,
        use_exponential_sigmas: bool = False,
        use_beta_sigmas: bool = False,
        use_flow_sigmas: bool = False,
        flow_shift: float = 1.0,
        timestep_spacing: str = "linspace",
        steps_offset: int = 0,
        final_sigmas_type: str = "zero",
        rescale_betas_zero_snr: bool = False,
        use_dynamic_shifting: bool = False,
        time_shift_type: str = "exponential",
        sigma_min: float | None = None,
        sigma_max: float | None = None,
        shift_terminal: float | None = None,
    ):
        self.solver_type = _SOLVER_ALIASES.get(solver_type, solver_type)
        check_option("solver_type", self.solver_type, UNIPC_SOLVER_TYPES, type(self).__name__)
        self.predict_x0 = bool(predict_x0)
        if not self.predict_x0 and final_sigmas_type == "zero":
            raise ConfigError(f"{type(self).__name__}: the noise-prediction form "
                              f"(predict_x0=False) cannot step to sigma = 0; use "
                              f"final_sigmas_type='sigma_min' or predict_x0=True")
        self.disable_corrector = tuple(disable_corrector or ())
        self.solver_p = solver_p
        self._init_common()
        self._require_data_prediction_for_flow(self.predict_x0, "set predict_x0=True")

    _repeat_last_sigma_when_discretised = True
    _flow_grid = "ramp_then_shift"
    _flow_allows_karras = True
    _time_shift_types = ("exponential", "linear")

    def set_timesteps(self, num_inference_steps: int | None = None,
                      device: str | torch.device | None = None,
                      timesteps: Sequence[int] | None = None,
                      sigmas: Sequence[float] | None = None, mu: float | None = None) -> None:
        """As ``MultistepScheduler.set_timesteps``; a ``solver_p`` gets the same step count."""
        super().set_timesteps(num_inference_steps, device, timesteps, sigmas, mu)
        if self.solver_p is not None:
            self.solver_p.set_timesteps(self.num_inference_steps, device=device)

    def _reset_run(self) -> None:
        super()._reset_run()
        self._last_sample: torch.Tensor | None = None
        self._last_order = 0

    def _plan(self) -> None:
        """Per interval j -> j+1 and usable order p: predictor weights (x, m_0..m_{p-1}) and
        corrector weights (x, m_new, m_0..m_{p-1}) for the correction at step j + 1."""
        c, n = self.config, self.num_inference_steps
        lam, alpha, sigma = self.lambda_, self.alpha, self.sigma_t
        self._max_order, self._predictor, self._corrector = [], [], []
        for j in range(n):
            order = min(c.solver_order, n - j) if c.lower_order_final else c.solver_order
            if self.sigmas[j + 1] == 0 or self.sigmas[j + 1] == self.sigmas[j]:
                # a step to sigma = 0 (h = inf) or onto a repeated final sigma (h = 0): only the
                # first-order form is finite (the format returns inf/NaN there)
                order = 1
            order = min(order, j + 1)
            self._max_order.append(order)
            pred, corr = {}, {}
            with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
                h = lam[j + 1] - lam[j]
                hh = -h if self.predict_x0 else h
                if self.predict_x0:
                    c_x, c_a = sigma[j + 1] / sigma[j], alpha[j + 1]
                else:
                    c_x, c_a = alpha[j + 1] / alpha[j], sigma[j + 1]
                for p in range(1, order + 1):
                    rks = np.array([(lam[j - k] - lam[j]) / h for k in range(1, p)] + [1.0])
                    rhos_p, rhos_c, h_phi_1, B_h = unipc_rhos(rks, hh, self.solver_type)
                    w_p = np.zeros(p)
                    w_p[0] = -c_a * h_phi_1
                    w_c = w_p.copy()
                    for k in range(1, p):  # D_k = (m_k - m_0) / r_k
                        w_p[k] -= c_a * B_h * rhos_p[k - 1] / rks[k - 1]
                        w_p[0] += c_a * B_h * rhos_p[k - 1] / rks[k - 1]
                        w_c[k] -= c_a * B_h * rhos_c[k - 1] / rks[k - 1]
                        w_c[0] += c_a * B_h * rhos_c[k - 1] / rks[k - 1]
                    w_new = -c_a * B_h * rhos_c[-1]  # D_t = m_t - m_0
                    w_c[0] -= w_new
                    pred[p] = (float(c_x), tuple(map(float, w_p)))
                    corr[p] = (float(c_x), float(w_new), tuple(map(float, w_c)))
            self._predictor.append(pred)
            self._corrector.append(corr)

    def convert_model_output(self, model_output: torch.Tensor, sample: torch.Tensor,
                             **unused: Any) -> torch.Tensor:
        """The model output at the current step as a data prediction (``predict_x0``) or a
        noise prediction."""
        i = self._step_index if self._step_index is not None else 0
        if self.predict_x0:
            return self.data_prediction(model_output, sample, i)
        return self.noise_prediction(model_output, sample, i)

    def step(self, model_output: torch.Tensor, timestep: Any, sample: torch.Tensor,
             return_dict: bool = True):
        """Correct the sample with this model output (UniC), then predict the next one (UniP).
        Returns ``SchedulerOutput`` with ``prev_sample``."""
        model_output, i = self._begin_step(model_output, timestep, sample)
        dtype = self._compute_dtype(sample)
        m = self.convert_model_output(model_output, sample).to(dtype)
        x = sample.to(dtype)
        if i > 0 and (i - 1) not in self.disable_corrector and self._last_sample is not None:
            # UniC on the interval just predicted, with the same order as its predictor
            c_x, w_new, weights = self._corrector[i - 1][self._last_order]
            history = reversed(self._history[-self._last_order:])
            x = self._combine(c_x, self._last_sample, [(w_new, m), *zip(weights, history)])
        self._push(m, self.config.solver_order)
        order = min(self._max_order[i], self._steps_taken + 1)
        self._last_sample, self._last_order = x, order
        if self.solver_p is not None:
            prev_sample = self.solver_p.step(model_output, timestep, x).prev_sample
        else:
            c_x, weights = self._predictor[i][order]
            prev_sample = self._combine(c_x, x, zip(weights, reversed(self._history[-order:])))
        self._end_step()
        prev_sample = as_dtype(prev_sample, sample.dtype)
        return SchedulerOutput(prev_sample) if return_dict else (prev_sample,)
