"""The third-order multistep DPM-Solver(++) update, tested against the math instead of diffusers.

diffusers (like the DPM-Solver reference code) gives the second-difference term D2 of its "3M"
update half the weight the Taylor expansion needs, and its SDE variant also flips the sign of that
weight's constant (see ``dpm_solver_multistep.multistep_weights`` and
``multistep.phi_coefficients``; docs/scheduler-differences.md). We follow the paper, so these runs
are checked against exact integrals.

A model term that is a quadratic polynomial p(lambda) and does not depend on x makes every
exponential-integrator step an integral that a third-order update must reproduce exactly
(finite differences through three points are exact on a quadratic):

- DPM-Solver++ (Lu et al. 2022b, eq. 9):
  x_t = sigma_t / sigma_s x_s + alpha_t int e^{-(lambda_t - lambda)} p(lambda) dlambda;
- DPM-Solver (Lu et al. 2022, eq. 3.4): x_t = alpha_t / alpha_s x_s - alpha_t int e^{-lambda} p;
- SDE-DPM-Solver++ without its noise (Lu et al. 2022b, appendix):
  x_t = sigma_t / sigma_s e^{-h} x_s + 2 alpha_t int e^{-2 (lambda_t - lambda)} p(lambda) dlambda,

each integral over [lambda_s, lambda_t], evaluated here by 40-point Gauss-Legendre quadrature in
float64 (exact to rounding for these smooth integrands).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from diffusion_kernel import registry

# p(lambda) = c0 + c1 lambda + c2 lambda^2, a different quadratic for each of the 4 coordinates
COEFFICIENTS = torch.tensor([[0.3, -0.2, 0.05], [-1.0, 0.4, -0.02], [0.7, 0.0, 0.1],
                             [0.1, 0.25, -0.08]], dtype=torch.float64)
NODES, WEIGHTS = np.polynomial.legendre.leggauss(40)


def _p(lam: float) -> torch.Tensor:
    return COEFFICIENTS @ torch.tensor([1.0, lam, lam**2], dtype=torch.float64)


def _integral(weight, lam_s: float, lam_t: float) -> torch.Tensor:
    lams = lam_s + (NODES + 1.0) * (lam_t - lam_s) / 2.0
    total = sum(w * weight(lam) * _p(lam) for lam, w in zip(lams, WEIGHTS))
    return total * (lam_t - lam_s) / 2.0


def _exact_step(algorithm_type: str, scheduler, i: int, x: torch.Tensor) -> torch.Tensor:
    a, s, lam = scheduler.alpha, scheduler.sigma_t, scheduler.lambda_
    lam_s, lam_t = float(lam[i]), float(lam[i + 1])
    if algorithm_type == "dpmsolver++":
        return s[i + 1] / s[i] * x + a[i + 1] * _integral(
            lambda u: math.exp(-(lam_t - u)), lam_s, lam_t)
    if algorithm_type == "dpmsolver":
        return a[i + 1] / a[i] * x - a[i + 1] * _integral(lambda u: math.exp(-u), lam_s, lam_t)
    return s[i + 1] / s[i] * math.exp(-(lam_t - lam_s)) * x + 2.0 * a[i + 1] * _integral(
        lambda u: math.exp(-2.0 * (lam_t - u)), lam_s, lam_t)


@pytest.mark.parametrize("algorithm_type,prediction_type", [
    ("dpmsolver++", "sample"), ("dpmsolver", "epsilon"), ("sde-dpmsolver++", "sample")])
@pytest.mark.parametrize("sigmas", ["karras", "default"])
def test_third_order_multistep_step_is_exact_for_a_quadratic_model_term(
        algorithm_type, prediction_type, sigmas):
    """From the third step on (three outputs in the history) every step of solver_order=3 equals
    the exact integral to float64 rounding, on uneven (Karras) and even lambda steps alike."""
    scheduler = registry.schedulers.get("DPMSolverMultistepScheduler")(
        solver_order=3, algorithm_type=algorithm_type, prediction_type=prediction_type,
        lower_order_final=False, final_sigmas_type="sigma_min",
        use_karras_sigmas=sigmas == "karras")
    scheduler.set_timesteps(8)
    x = torch.linspace(-1.0, 1.0, 4, dtype=torch.float64)
    noise = torch.zeros_like(x)  # the SDE variant's fresh noise, off: its mean update is checked
    for i, t in enumerate(scheduler.timesteps):
        model_output = _p(float(scheduler.lambda_[i]))
        kwargs = {"variance_noise": noise} if algorithm_type.startswith("sde") else {}
        x_next = scheduler.step(model_output, t, x, **kwargs).prev_sample
        if i >= 2:
            exact = _exact_step(algorithm_type, scheduler, i, x)
            torch.testing.assert_close(x_next, exact, rtol=1e-10, atol=1e-12,
                                       msg=f"step {i} ({algorithm_type}, {sigmas})")
        x = x_next



@pytest.mark.parametrize("algorithm_type", ["dpmsolver++", "dpmsolver", "sde-dpmsolver++"])
@pytest.mark.parametrize("h", [0.05, 0.4, 1.5])
def test_second_derivative_weight_is_the_exact_integral_of_the_quadratic_taylor_term(
        algorithm_type, h):
    """``phi_coefficients(...).d2`` multiplies an estimate of h^2 m'' (both the multistep and
    the singlestep third-order updates form one), so d2 h^2 must equal the integral of the
    quadratic Taylor term (lambda - lambda_s)^2 / 2 against the step's kernel. For the SDE
    variant this is 2 alpha_t h / 3 + O(h^2), where diffusers' formula gives about -alpha_t."""
    from diffusion_kernel_schedulers.multistep import phi_coefficients

    alpha_s, sigma_s = 0.8, 0.6
    alpha_t, sigma_t = alpha_s * math.exp(h / 2), sigma_s * math.exp(-h / 2)  # lambda_t = +h
    pc = phi_coefficients(algorithm_type, h, alpha_s, sigma_s, alpha_t, sigma_t)
    v = (NODES + 1.0) * h / 2.0  # v = lambda_t - lambda over [0, h]
    kernel = {"dpmsolver++": alpha_t * np.exp(-v), "dpmsolver": -sigma_t * np.exp(v),
              "sde-dpmsolver++": 2.0 * alpha_t * np.exp(-2.0 * v)}[algorithm_type]
    exact = np.sum(WEIGHTS * kernel * (h - v) ** 2 / 2.0) * h / 2.0
    assert math.isclose(pc.d2 * h**2, exact, rel_tol=1e-9)
