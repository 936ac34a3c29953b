"""Convergence order of the ODE samplers, measured against an exact solution.

For Gaussian data the exact denoiser and the exact probability-flow ODE solution are known in
closed form (``gaussian_flow.py``). Each deterministic sampler is run with that exact model from
the same x_T at 20, 40, 80 and 160 steps; the observed order is log2 of the ratio of successive
max-errors, and the last one (160 vs 80 steps, the asymptotic regime) must lie within ``TOL`` of
the order the method's paper states.

The runs use Karras sigmas (a smooth mesh with fixed end points) and ``lower_order_final=False``
(so the multistep methods keep their order to the end; a final step to sigma = 0 is the denoiser
itself for every solver and is accounted for exactly by the reference).
"""

from __future__ import annotations

import math

import pytest
import torch
from diffusion_kernel import registry
from gaussian_flow import GaussianData, observed_orders, run_exact_model

STEPS = (20, 40, 80, 160)
TOL = 0.25
KARRAS = {"use_karras_sigmas": True}
MULTISTEP = {"use_karras_sigmas": True, "lower_order_final": False}

# (id, scheduler name, config, stated order, source of the stated order)
CASES = [
    ("euler", "EulerDiscreteScheduler", KARRAS, 1, "Euler's method"),
    ("heun", "HeunDiscreteScheduler", KARRAS, 2, "Karras et al. 2022, Algorithm 1"),
    ("dpm++1", "DPMSolverMultistepScheduler", {**MULTISTEP, "solver_order": 1}, 1,
     "DPM-Solver++ first order (= DDIM), Lu et al. 2022b"),
    ("dpm++2m-midpoint", "DPMSolverMultistepScheduler", {**MULTISTEP, "solver_order": 2}, 2,
     "DPM-Solver++(2M), Lu et al. 2022b, Algorithm 2"),
    ("dpm++2m-heun", "DPMSolverMultistepScheduler",
     {**MULTISTEP, "solver_order": 2, "solver_type": "heun"}, 2, "Lu et al. 2022b"),
    ("dpm++3m", "DPMSolverMultistepScheduler", {**MULTISTEP, "solver_order": 3}, 3,
     "DPM-Solver++(3M), Lu et al. 2022b (diffusers' update measures 2.07: it halves D2)"),
    ("dpm3m-noise-prediction", "DPMSolverMultistepScheduler",
     {**MULTISTEP, "solver_order": 3, "algorithm_type": "dpmsolver",
      "final_sigmas_type": "sigma_min"}, 3, "multistep DPM-Solver-3, Lu et al. 2022"),
    ("dpm++2s", "DPMSolverSinglestepScheduler",
     {**MULTISTEP, "solver_order": 2, "final_sigmas_type": "sigma_min"}, 2,
     "DPM-Solver++(2S), Lu et al. 2022b, Algorithm 1"),
    ("dpm++3s", "DPMSolverSinglestepScheduler",
     {**MULTISTEP, "solver_order": 3, "final_sigmas_type": "sigma_min"}, 3,
     "DPM-Solver-3, Lu et al. 2022, Theorem 3.2"),
    ("unipc-1", "UniPCMultistepScheduler", {**MULTISTEP, "solver_order": 1}, 2,
     "UniPC-p has order p + 1, Zhao et al. 2023, Theorem 3.3"),
    ("unipc-2-bh2", "UniPCMultistepScheduler", {**MULTISTEP, "solver_order": 2}, 3,
     "Zhao et al. 2023, Theorem 3.3"),
    ("unipc-2-bh1", "UniPCMultistepScheduler",
     {**MULTISTEP, "solver_order": 2, "solver_type": "bh1"}, 3, "Zhao et al. 2023"),
    ("unipc-3", "UniPCMultistepScheduler", {**MULTISTEP, "solver_order": 3}, 4,
     "Zhao et al. 2023, Theorem 3.3"),
    ("unip-2-without-corrector", "UniPCMultistepScheduler",
     {**MULTISTEP, "solver_order": 2, "disable_corrector": list(range(200))}, 2,
     "UniP-p alone has order p, Zhao et al. 2023"),
    ("unip-3-without-corrector", "UniPCMultistepScheduler",
     {**MULTISTEP, "solver_order": 3, "disable_corrector": list(range(200))}, 3,
     "UniP-p alone has order p, Zhao et al. 2023"),
    ("deis-2", "DEISMultistepScheduler", {**MULTISTEP, "solver_order": 2}, 2,
     "rhoAB-DEIS, Zhang & Chen 2022"),
    ("deis-3", "DEISMultistepScheduler", {**MULTISTEP, "solver_order": 3}, 3,
     "rhoAB-DEIS, Zhang & Chen 2022"),
]


def _errors(name: str, config: dict, data: GaussianData) -> list[float]:
    cls = registry.schedulers.get(name)
    errors = []
    for n in STEPS:
        sample, exact = run_exact_model(cls.from_config(dict(config)), n, data)
        errors.append((sample - exact).abs().max().item())
    return errors


@pytest.mark.parametrize("name,config,order", [c[1:4] for c in CASES], ids=[c[0] for c in CASES])
def test_ode_solver_error_falls_with_its_stated_order(name, config, order):
    if name not in registry.schedulers:
        pytest.skip(f"{name} is not installed")
    errors = _errors(name, config, GaussianData())
    orders = observed_orders(errors)
    assert all(b < a for a, b in zip(errors, errors[1:])), f"errors do not fall: {errors}"
    assert abs(orders[-1] - order) <= TOL, (
        f"{name} {config}: observed order {orders[-1]:.2f} (all: "
        f"{[round(o, 2) for o in orders]}, errors {errors}), stated {order}")


def test_exact_flow_solves_the_probability_flow_ode():
    """dx/dsigma = (x - D(x; sigma)) / sigma along the closed-form solution (central
    differences), and the flow is the identity at its start."""
    data = GaussianData(mu=0.3, s=0.5)
    x_a = torch.tensor([-2.0, 0.1, 3.0], dtype=torch.float64)
    sigma_a = 10.0
    assert torch.allclose(data.flow(x_a, sigma_a, sigma_a), x_a)
    for sigma in (0.05, 0.7, 4.0):
        d = 1e-6 * sigma
        ahead, behind = data.flow(x_a, sigma_a, sigma + d), data.flow(x_a, sigma_a, sigma - d)
        numeric = (ahead - behind) / (2 * d)
        x = data.flow(x_a, sigma_a, sigma)
        assert torch.allclose(numeric, (x - data.denoiser(x, sigma)) / sigma, rtol=1e-6)


def test_exact_denoiser_is_the_posterior_mean():
    """Regressing x_0 on x_sigma over many draws recovers D's slope s^2 / (s^2 + sigma^2)."""
    data, sigma = GaussianData(mu=0.3, s=0.5), 0.8
    g = torch.Generator().manual_seed(0)
    x0 = data.mu + data.s * torch.randn(200_000, generator=g, dtype=torch.float64)
    x = x0 + sigma * torch.randn(200_000, generator=g, dtype=torch.float64)
    slope = torch.cov(torch.stack([x, x0]))[0, 1] / x.var()
    assert math.isclose(slope.item(), data.s**2 / (data.s**2 + sigma**2), rel_tol=0.02)
    expected = data.denoiser(torch.tensor([0.3 + 1.0], dtype=torch.float64), sigma)
    assert math.isclose(expected.item(), 0.3 + slope.item(), rel_tol=0.01)
