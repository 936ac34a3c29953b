"""Parity of the multistep exponential-integrator schedulers (DPM-Solver(++) multistep and
singlestep, UniPC, DEIS) with diffusers 0.42.1: the same config, model and seeds give the same
final sample within 1e-5 relative (float32), over a grid of algorithm types, orders, timestep
spacings, prediction types, beta schedules and sigma discretisations, at odd step counts 7 and 13
(and 20, past the < 15-step lower-order switch), batch 2.

DPM-Solver multistep is compared at orders 1 and 2 only: its third-order update follows the
paper, not diffusers (which halves the D2 term; see test_multistep_third_order.py, where "3M" is
checked against exact integrals, and docs/scheduler-differences.md)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import (
    assert_parity,
    diffusers_scheduler_class,
    fake_model,
    learned_variance_model,
    relative_error,
    run_loop,
)
from diffusion_kernel import registry

RTOL = 1e-5
STEPS = (7, 13)
LDM = {"beta_schedule": "scaled_linear", "beta_start": 0.00085, "beta_end": 0.012}
SIGMA_MIN = {"final_sigmas_type": "sigma_min"}

DPM_MULTISTEP = {
    "default-2m-midpoint": {},
    "order1": {"solver_order": 1},
    "2m-heun": {"solver_type": "heun"},
    "dpmsolver-order1": {"algorithm_type": "dpmsolver", "solver_order": 1, **SIGMA_MIN},
    "dpmsolver-order2": {"algorithm_type": "dpmsolver", **SIGMA_MIN},
    "dpmsolver-order2-heun": {"algorithm_type": "dpmsolver", "solver_type": "heun", **SIGMA_MIN},
    "sde++-order1": {"algorithm_type": "sde-dpmsolver++", "solver_order": 1},
    "sde++-order2": {"algorithm_type": "sde-dpmsolver++"},
    "sde++-order2-heun": {"algorithm_type": "sde-dpmsolver++", "solver_type": "heun"},
    "sde-order2": {"algorithm_type": "sde-dpmsolver", **SIGMA_MIN},
    "sde-order2-heun": {"algorithm_type": "sde-dpmsolver", "solver_type": "heun", **SIGMA_MIN},
    "karras": {"use_karras_sigmas": True},
    "karras-sigma-min": {"use_karras_sigmas": True, **SIGMA_MIN},
    "exponential": {"use_exponential_sigmas": True},
    "beta": {"use_beta_sigmas": True},
    "lu-lambdas": {"use_lu_lambdas": True},
    "v-trailing-zero-snr": {"prediction_type": "v_prediction", "timestep_spacing": "trailing",
                            "rescale_betas_zero_snr": True},
    "sample-thresholding": {"prediction_type": "sample", "thresholding": True,
                            "sample_max_value": 1.5},
    "ldm-leading-offset": {**LDM, "timestep_spacing": "leading", "steps_offset": 1},
    "cosine-lambda-clipped": {"beta_schedule": "squaredcos_cap_v2", "lambda_min_clipped": -5.1},
    "euler-at-final": {"euler_at_final": True},
    "no-lower-order-final": {"lower_order_final": False},
    "trained-betas": {"trained_betas": torch.linspace(1e-4, 0.03, 1000).tolist()},
}

DPM_SINGLESTEP = {
    "default-2s": {},
    "order1": {"solver_order": 1},
    "order3": {"solver_order": 3},
    "2s-heun": {"solver_type": "heun"},
    "3s-heun": {"solver_order": 3, "solver_type": "heun"},
    "dpmsolver-order2": {"algorithm_type": "dpmsolver", **SIGMA_MIN},
    "dpmsolver-order3-heun": {"algorithm_type": "dpmsolver", "solver_order": 3,
                              "solver_type": "heun", **SIGMA_MIN},
    "sde++-order2": {"algorithm_type": "sde-dpmsolver++"},
    "sde++-order3": {"algorithm_type": "sde-dpmsolver++", "solver_order": 3},
    "karras": {"use_karras_sigmas": True},
    "exponential-order3": {"use_exponential_sigmas": True, "solver_order": 3},
    "beta-order3": {"use_beta_sigmas": True, "solver_order": 3},
    "v-prediction": {"prediction_type": "v_prediction", **LDM},
    "sigma-min-no-lower-order-final": {"lower_order_final": False, **SIGMA_MIN},
    "sigma-min-order3": {"solver_order": 3, **SIGMA_MIN},
    "cosine-lambda-clipped": {"beta_schedule": "squaredcos_cap_v2", "lambda_min_clipped": -5.1},
    "sample-thresholding": {"prediction_type": "sample", "thresholding": True},
}

UNIPC = {
    "default-bh2-order2": {},
    "order1": {"solver_order": 1},
    "order3": {"solver_order": 3},
    "bh1": {"solver_type": "bh1", **SIGMA_MIN},
    "noise-prediction": {"predict_x0": False, **SIGMA_MIN},
    "noise-prediction-order3-bh1": {"predict_x0": False, "solver_order": 3,
                                    "solver_type": "bh1", **SIGMA_MIN},
    "karras": {"use_karras_sigmas": True},
    "exponential-order3": {"use_exponential_sigmas": True, "solver_order": 3},
    "beta-order3": {"use_beta_sigmas": True, "solver_order": 3},
    "v-trailing-zero-snr": {"prediction_type": "v_prediction", "timestep_spacing": "trailing",
                            "rescale_betas_zero_snr": True},
    "disable-corrector": {"disable_corrector": [0, 2, 3]},
    "no-lower-order-final": {"lower_order_final": False, "solver_order": 3, **SIGMA_MIN},
    "ldm-leading-offset": {**LDM, "timestep_spacing": "leading", "steps_offset": 1},
    "sample-thresholding": {"prediction_type": "sample", "thresholding": True},
    "cosine": {"beta_schedule": "squaredcos_cap_v2"},
}

DEIS = {
    "default-order2": {},
    "order1": {"solver_order": 1},
    "order3": {"solver_order": 3},
    "karras": {"use_karras_sigmas": True},
    "exponential-order3": {"use_exponential_sigmas": True, "solver_order": 3},
    "v-trailing": {"prediction_type": "v_prediction", "timestep_spacing": "trailing"},
    "no-lower-order-final": {"lower_order_final": False, "solver_order": 3},
    "ldm-leading-offset": {**LDM, "timestep_spacing": "leading", "steps_offset": 1},
    "sample-thresholding": {"prediction_type": "sample", "thresholding": True},
    "cosine": {"beta_schedule": "squaredcos_cap_v2"},
}

GRID = [
    pytest.param(name, config, n, id=f"{short}-{label}-{n}")
    for name, short, table in (
        ("DPMSolverMultistepScheduler", "dpm-multistep", DPM_MULTISTEP),
        ("DPMSolverSinglestepScheduler", "dpm-singlestep", DPM_SINGLESTEP),
        ("UniPCMultistepScheduler", "unipc", UNIPC),
        ("DEISMultistepScheduler", "deis", DEIS),
    )
    for label, config in table.items()
    for n in STEPS
]


@pytest.mark.parametrize("name,config,num_inference_steps", GRID)
def test_final_sample_matches_diffusers(parity, name, config, num_inference_steps):
    ours, theirs = parity.run(name, config, num_inference_steps)
    parity.check(ours, theirs, rtol=RTOL)


@pytest.mark.parametrize("name,config", [
    ("DPMSolverMultistepScheduler", {}),
    ("DPMSolverMultistepScheduler", {"algorithm_type": "sde-dpmsolver++"}),
    ("DPMSolverSinglestepScheduler", {"solver_order": 3}),
    ("UniPCMultistepScheduler", {"solver_order": 3}),
    ("DEISMultistepScheduler", {"solver_order": 3}),
], ids=["dpm-2m", "dpm-sde-2m", "dpm-3s", "unipc-3", "deis-3"])
def test_twenty_step_run_matches_diffusers(parity, name, config):
    """Past 15 steps the final-step order rules change (lower_order_final applies below 15)."""
    parity.check(*parity.run(name, config, 20), rtol=RTOL)


@pytest.mark.parametrize("name,config", [
    ("DPMSolverMultistepScheduler", {"algorithm_type": "sde-dpmsolver++"}),
    ("DPMSolverMultistepScheduler", {"algorithm_type": "sde-dpmsolver", **SIGMA_MIN}),
    ("DPMSolverSinglestepScheduler", {"algorithm_type": "sde-dpmsolver++", "solver_order": 3}),
], ids=["dpm-sde++", "dpm-sde", "dpm-singlestep-sde++"])
def test_sde_noise_from_per_sample_generators_matches_diffusers(parity, name, config):
    ours, theirs = parity.run(name, config, 13, generator_seeds=[11, 12])
    parity.check(ours, theirs, rtol=RTOL)


@pytest.mark.parametrize("name", ["DPMSolverMultistepScheduler", "DPMSolverSinglestepScheduler",
                                  "UniPCMultistepScheduler", "DEISMultistepScheduler"])
def test_img2img_run_from_begin_index_matches_diffusers(parity, name):
    init = torch.linspace(-1, 1, 2 * 3 * 8 * 8).reshape(2, 3, 8, 8)
    ours, theirs = parity.run(name, {}, 13, init_sample=init, begin_index=5)
    parity.check(ours, theirs, rtol=RTOL)


@pytest.mark.parametrize("name", ["DPMSolverMultistepScheduler", "DPMSolverSinglestepScheduler"])
def test_custom_timesteps_match_diffusers(parity, name):
    timesteps = [999, 880, 700, 512, 400, 301, 200, 120, 60, 17]
    ours, theirs = parity.run(name, {}, None, set_timesteps_kwargs={"timesteps": timesteps})
    parity.check(ours, theirs, rtol=RTOL)


def test_learned_variance_channels_are_dropped_like_diffusers(parity):
    config = {"variance_type": "learned_range"}
    ours, theirs = parity.run("DPMSolverMultistepScheduler", config, 7,
                              model=learned_variance_model)
    parity.check(ours, theirs, rtol=RTOL)


def test_unipc_correcting_another_solvers_predictions_matches_diffusers():
    """``solver_p``: DPM-Solver++ predicts, UniC corrects."""
    ours = registry.schedulers.get("UniPCMultistepScheduler")(
        solver_p=registry.schedulers.get("DPMSolverMultistepScheduler")())
    theirs = diffusers_scheduler_class("UniPCMultistepScheduler")(
        solver_p=diffusers_scheduler_class("DPMSolverMultistepScheduler")())
    assert_parity(run_loop(ours, 13), run_loop(theirs, 13), rtol=RTOL)


# Flow-matching runs (use_flow_sigmas: x_t = (1 - s) x_0 + s eps, velocity predictions) -------

FLOW = {"use_flow_sigmas": True, "prediction_type": "flow_prediction", "flow_shift": 3.0}
DYNAMIC = {**FLOW, "use_dynamic_shifting": True}
FLOW_GRID = [
    ("DPMSolverMultistepScheduler", "2m", FLOW, {}),
    ("DPMSolverMultistepScheduler", "2m-sde", {**FLOW, "algorithm_type": "sde-dpmsolver++"},
     {}),
    ("DPMSolverMultistepScheduler", "sigma-min", {**FLOW, "final_sigmas_type": "sigma_min"}, {}),
    ("DPMSolverMultistepScheduler", "dynamic", DYNAMIC, {"mu": 0.8}),
    ("DPMSolverSinglestepScheduler", "3s", {**FLOW, "solver_order": 3}, {}),
    ("UniPCMultistepScheduler", "bh2", FLOW, {}),
    ("UniPCMultistepScheduler", "order3-sigma-min", {**FLOW, "solver_order": 3,
                                                     **SIGMA_MIN}, {}),
    ("UniPCMultistepScheduler", "karras", {**FLOW, "use_karras_sigmas": True}, {}),
    ("UniPCMultistepScheduler", "shift-terminal", {**FLOW, "shift_terminal": 0.1}, {}),
    ("UniPCMultistepScheduler", "dynamic-exponential", DYNAMIC, {"mu": 0.8}),
    ("UniPCMultistepScheduler", "dynamic-linear", {**DYNAMIC, "time_shift_type": "linear"},
     {"mu": 2.0}),
]


@pytest.mark.parametrize("name,config,kwargs", [pytest.param(n, c, k, id=f"{n}-{label}")
                                                for n, label, c, k in FLOW_GRID])
@pytest.mark.parametrize("num_inference_steps", STEPS)
def test_flow_matching_run_matches_diffusers(parity, name, config, kwargs, num_inference_steps):
    ours, theirs = parity.run(name, config, num_inference_steps, set_timesteps_kwargs=kwargs)
    parity.check(ours, theirs, rtol=RTOL)


def test_unipc_flow_run_on_custom_sigmas_matches_diffusers(parity):
    sigmas = np.array([1.0, 0.9, 0.75, 0.6, 0.4, 0.25, 0.1])  # the reference needs an array
    ours, theirs = parity.run("UniPCMultistepScheduler", FLOW, None,
                              set_timesteps_kwargs={"sigmas": sigmas})
    parity.check(ours, theirs, rtol=RTOL)


def test_deis_flow_run_matches_diffusers_within_its_float32_rounding(parity):
    """DEIS's log-rho weights at rho = s / (1 - s) ~ 3000 lose digits in the reference's
    float32 arithmetic (ours are computed in float64): the runs agree to 1e-4, and ours is the
    closer of the two to a float64 run."""
    config = {**FLOW, "solver_order": 3}
    ours, theirs = parity.run("DEISMultistepScheduler", config, 13)
    parity.check(ours, theirs, rtol=1e-4)
    exact = registry.schedulers.get("DEISMultistepScheduler").from_config(config)
    exact.set_timesteps(13)
    x = torch.randn((2, 3, 8, 8), generator=torch.Generator().manual_seed(0)).double()
    for t in exact.timesteps:
        x = exact.step(fake_model(x, t), t, x).prev_sample
    assert relative_error(ours, x) < relative_error(theirs, x)


@pytest.mark.parametrize("config", [{}, {"solver_order": 3}], ids=["order2", "order3"])
@pytest.mark.parametrize("n", [7, 13])
def test_deis_beta_sigmas_match_the_reference_evaluated_in_float64(config, n):
    """Beta sigmas crowd the first steps (h = log(157 / 143) at 7 steps), where DEIS's weights
    lose digits in the reference's float32 arithmetic (its float32 run is 2e-3 off at order 3);
    with its sigmas and alphas in float64 it agrees with ours to 1e-5."""
    from conftest import build_pair

    ours, theirs = build_pair("DEISMultistepScheduler", {"use_beta_sigmas": True, **config})
    for scheduler in (ours, theirs):
        scheduler.set_timesteps(n)
    for name in ("sigmas", "alphas_cumprod", "alpha_t", "sigma_t", "lambda_t"):
        setattr(theirs, name, getattr(theirs, name).double())
    x = torch.randn((2, 3, 8, 8), generator=torch.Generator().manual_seed(0)) * 157.4
    x_ours, x_theirs = x.clone(), x.double()
    for t in theirs.timesteps:
        x_ours = ours.step(fake_model(x_ours, t), t, x_ours).prev_sample
        x_theirs = theirs.step(fake_model(x_theirs.float(), t).double(), t, x_theirs).prev_sample
    assert relative_error(x_ours, x_theirs) < 1e-5


@pytest.mark.parametrize("name", ["DPMSolverMultistepScheduler", "UniPCMultistepScheduler"])
def test_flow_matching_img2img_run_matches_diffusers(parity, name):
    """add_noise on a flow schedule is (1 - s) x_0 + s noise."""
    init = torch.linspace(-1, 1, 2 * 3 * 8 * 8).reshape(2, 3, 8, 8)
    ours, theirs = parity.run(name, FLOW, 13, init_sample=init, begin_index=4)
    parity.check(ours, theirs, rtol=RTOL)
