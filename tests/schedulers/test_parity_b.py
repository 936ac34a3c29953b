"""Parity of the sigma-space schedulers (Euler, Euler-a, Heun, DPM2, DPM2-a, LMS, EDM Euler) with
the diffusers format's reference implementation, over a grid of configs and runs.

Tolerance: 1e-5 relative (``assert_parity``) in float32, except where the problem itself is
ill-conditioned in float32: the cosine schedule's last training sigma is ~2e4, and a first step
from there to sigma ~4 cancels five digits (x ~ 2e4 becomes x ~ 4), so any two float32
implementations differ by ~1e-4..1e-2 after it. Those runs are checked in float64 instead, where
the schedulers that keep the sample's dtype agree to 1e-5.
"""

from __future__ import annotations

import itertools

import pytest
import torch
from conftest import assert_parity, build_pair, fake_model, run_loop

SPACINGS = ("linspace", "leading", "trailing")
SIGMA_KINDS = ("default", "karras", "exponential", "beta")
KIND_FLAGS = {"default": {}, "karras": {"use_karras_sigmas": True},
              "exponential": {"use_exponential_sigmas": True}, "beta": {"use_beta_sigmas": True}}
ALL_PREDICTIONS = ("epsilon", "v_prediction", "sample")
# the reference raises NotImplementedError for "sample" in these
NO_SAMPLE = ("epsilon", "v_prediction")

VP_SCHEDULERS = {
    "EulerDiscreteScheduler": (ALL_PREDICTIONS, SIGMA_KINDS),
    "EulerAncestralDiscreteScheduler": (NO_SAMPLE, ("default",)),
    "HeunDiscreteScheduler": (ALL_PREDICTIONS, SIGMA_KINDS),
    "KDPM2DiscreteScheduler": (NO_SAMPLE, SIGMA_KINDS),
    "KDPM2AncestralDiscreteScheduler": (NO_SAMPLE, SIGMA_KINDS),
    "LMSDiscreteScheduler": (ALL_PREDICTIONS, SIGMA_KINDS),
}


def parity_run(name: str, config: dict, n: int | None, **kwargs):
    ours, theirs = build_pair(name, config)
    return run_loop(ours, n, **kwargs), run_loop(theirs, n, **kwargs)


def _grid(name: str):
    """Each spacing x sigma discretisation; the prediction type runs through a Latin square over
    them (every spacing and every discretisation meets every prediction type), and the beta
    schedule and the (odd) step count alternate. Euler, the most used, gets the full product."""
    predictions, kinds = VP_SCHEDULERS[name]
    if name == "EulerDiscreteScheduler" or len(kinds) == 1:
        cells = list(itertools.product(SPACINGS, kinds, predictions))
    else:  # prediction (s + k) mod P for spacing s and discretisation k: a Latin square
        cells = [(spacing, kind, predictions[(s + k) % len(predictions)])
                 for s, spacing in enumerate(SPACINGS) for k, kind in enumerate(kinds)]
    for index, (spacing, kind, prediction) in enumerate(cells):
        config = {"timestep_spacing": spacing, "prediction_type": prediction,
                  "beta_schedule": ("linear", "scaled_linear")[index % 2], "steps_offset": 1,
                  **KIND_FLAGS[kind]}
        yield pytest.param(name, config, (7, 13)[(index // 2) % 2],
                           id=f"{name}-{spacing}-{kind}-{prediction}-{index}")


GRID = [case for name in VP_SCHEDULERS for case in _grid(name)]


@pytest.mark.parametrize("name,config,steps", GRID)
def test_matches_reference_over_config_grid(name, config, steps):
    assert_parity(*parity_run(name, config, steps))


@pytest.mark.parametrize("name", list(VP_SCHEDULERS))
@pytest.mark.parametrize("kind", SIGMA_KINDS)
def test_matches_reference_with_cosine_schedule_and_leading_spacing(name, kind):
    if kind not in VP_SCHEDULERS[name][1]:
        pytest.skip("the reference has no such option for this class")
    config = {"beta_schedule": "squaredcos_cap_v2", "timestep_spacing": "leading",
              "prediction_type": "v_prediction", **KIND_FLAGS[kind]}
    assert_parity(*parity_run(name, config, 9))


def _float64_loop(scheduler, n: int, shape=(2, 3, 8, 8)) -> torch.Tensor:
    scheduler.set_timesteps(n)
    x = torch.randn(shape, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    x = x * scheduler.init_noise_sigma
    for t in scheduler.timesteps:
        x = scheduler.step(fake_model(scheduler.scale_model_input(x, t), t), t, x).prev_sample
    return x


@pytest.mark.parametrize("name", ["HeunDiscreteScheduler", "KDPM2DiscreteScheduler",
                                  "LMSDiscreteScheduler"])
def test_matches_reference_in_float64_from_cosine_sigma_max(name):
    # epsilon only: for v/sample the reference's float32 scalar coefficients (1 / (sigma^2 + 1)
    # rounded at sigma^2 = 4e8) are themselves amplified 5000-fold by the first step
    config = {"beta_schedule": "squaredcos_cap_v2", "timestep_spacing": "trailing"}
    ours, theirs = build_pair(name, config)
    assert ours.init_noise_sigma > 1e4  # the ill-conditioned start this test is about
    assert_parity(_float64_loop(ours, 7), _float64_loop(theirs, 7))


@pytest.mark.parametrize("config", [
    {"interpolation_type": "log_linear"},
    {"final_sigmas_type": "sigma_min"},
    {"final_sigmas_type": "sigma_min", "use_karras_sigmas": True},
    {"timestep_type": "continuous", "prediction_type": "v_prediction"},
    {"rescale_betas_zero_snr": True, "timestep_spacing": "trailing"},
    {"use_karras_sigmas": True, "sigma_min": 0.1, "sigma_max": 10.0},
    {"trained_betas": torch.linspace(1e-4, 0.02, 1000).tolist()},
], ids=["log_linear", "sigma_min", "sigma_min-karras", "continuous-v", "zero_snr",
        "karras-range", "trained_betas"])
def test_euler_options_match_reference(config):
    assert_parity(*parity_run("EulerDiscreteScheduler", config, 9))


def test_euler_churn_matches_reference():
    churn = {"s_churn": 1.0, "s_tmin": 0.5, "s_tmax": 10.0, "s_noise": 1.003}
    assert_parity(*parity_run("EulerDiscreteScheduler", {}, 13, step_kwargs=churn))


def test_euler_custom_sigmas_match_reference():
    sigmas = [14.6, 7.0, 3.1, 1.2, 0.4, 0.09, 0.0]
    assert_parity(*parity_run("EulerDiscreteScheduler", {}, None,
                              set_timesteps_kwargs={"sigmas": sigmas}))


def test_euler_custom_timesteps_match_reference():
    timesteps = [999.0, 850.5, 700.0, 420.0, 200.0, 51.0, 3.0]
    assert_parity(*parity_run("EulerDiscreteScheduler", {}, None,
                              set_timesteps_kwargs={"timesteps": timesteps}))


def test_heun_custom_timesteps_and_exp_schedule_match_reference():
    assert_parity(*parity_run("HeunDiscreteScheduler", {"beta_schedule": "exp"}, 8))
    timesteps = [999.0, 800.0, 600.0, 333.0, 90.0, 10.0]
    assert_parity(*parity_run("HeunDiscreteScheduler", {}, None,
                              set_timesteps_kwargs={"timesteps": timesteps}))


def test_heun_clip_sample_matches_reference():
    config = {"clip_sample": True, "clip_sample_range": 0.5, "prediction_type": "sample"}
    assert_parity(*parity_run("HeunDiscreteScheduler", config, 7))


def test_ancestral_zero_snr_matches_reference():
    config = {"rescale_betas_zero_snr": True, "timestep_spacing": "trailing"}
    assert_parity(*parity_run("EulerAncestralDiscreteScheduler", config, 9))


@pytest.mark.parametrize("order", [1, 2, 3, 4, 5])
def test_lms_orders_match_reference(order):
    assert_parity(*parity_run("LMSDiscreteScheduler", {"beta_schedule": "scaled_linear"}, 11,
                              step_kwargs={"order": order}))


def test_lms_exact_coefficients_equal_reference_quadrature():
    ours, theirs = build_pair("LMSDiscreteScheduler", {"use_karras_sigmas": True})
    ours.set_timesteps(13)
    theirs.set_timesteps(13)
    for t in range(13):
        for k in range(min(t + 1, 4)):
            expected = theirs.get_lms_coefficient(min(t + 1, 4), t, k)
            assert ours.get_lms_coefficient(4, t, k) == pytest.approx(expected, rel=1e-5,
                                                                      abs=1e-7)


@pytest.mark.parametrize("config", [
    {"sigma_schedule": "karras", "prediction_type": "epsilon"},
    {"sigma_schedule": "karras", "prediction_type": "v_prediction", "rho": 5.0},
    {"sigma_schedule": "exponential", "prediction_type": "epsilon"},
    {"sigma_schedule": "karras", "final_sigmas_type": "sigma_min", "sigma_data": 1.0},
    {"sigma_schedule": "exponential", "final_sigmas_type": "sigma_min", "sigma_max": 20.0},
], ids=["karras", "karras-v-rho5", "exponential", "sigma_min", "exponential-sigma_min"])
@pytest.mark.parametrize("steps", [7, 13])
def test_edm_euler_matches_reference(config, steps):
    assert_parity(*parity_run("EDMEulerScheduler", config, steps))


def test_edm_euler_churn_and_custom_ramp_match_reference():
    churn = {"s_churn": 2.0, "s_noise": 1.007}
    assert_parity(*parity_run("EDMEulerScheduler", {}, 9, step_kwargs=churn))
    ramp = torch.tensor([0.0, 0.2, 0.45, 0.7, 0.9, 1.0])
    assert_parity(*parity_run("EDMEulerScheduler", {}, None,
                              set_timesteps_kwargs={"sigmas": ramp}))


STOCHASTIC = [("EulerAncestralDiscreteScheduler", {}, {}),
              ("KDPM2AncestralDiscreteScheduler", {"use_karras_sigmas": True}, {}),
              ("EulerDiscreteScheduler", {}, {"s_churn": 1.0}),
              ("EDMEulerScheduler", {}, {"s_churn": 1.5})]


@pytest.mark.parametrize("name,config,step_kwargs", STOCHASTIC, ids=[s[0] for s in STOCHASTIC])
def test_per_sample_generators_match_reference(name, config, step_kwargs):
    assert_parity(*parity_run(name, config, 7, generator_seeds=[11, 12],
                              step_kwargs=step_kwargs))


@pytest.mark.parametrize("name", ["EulerDiscreteScheduler", "HeunDiscreteScheduler",
                                  "KDPM2DiscreteScheduler", "KDPM2AncestralDiscreteScheduler",
                                  "LMSDiscreteScheduler", "EulerAncestralDiscreteScheduler"])
def test_img2img_begin_index_matches_reference(name):
    init = torch.linspace(-1, 1, 2 * 3 * 8 * 8).reshape(2, 3, 8, 8)
    ours, theirs = build_pair(name, {"beta_schedule": "scaled_linear"})
    begin = 4 * ours.order  # a step boundary: for 2-stage solvers, a first stage
    assert_parity(run_loop(ours, 10, init_sample=init, begin_index=begin),
                  run_loop(theirs, 10, init_sample=init, begin_index=begin))


@pytest.mark.parametrize("name", list(VP_SCHEDULERS) + ["EDMEulerScheduler"])
def test_add_noise_matches_reference(name):
    ours, theirs = build_pair(name, {})
    ours.set_timesteps(9)
    theirs.set_timesteps(9)
    x0 = torch.linspace(-1, 1, 2 * 3 * 4 * 4).reshape(2, 3, 4, 4)
    noise = torch.randn(2, 3, 4, 4, generator=torch.Generator().manual_seed(3))
    t = theirs.timesteps[[2, 5]]
    assert_parity(ours.add_noise(x0, noise, ours.timesteps[[2, 5]]),
                  theirs.add_noise(x0, noise, t))


@pytest.mark.parametrize("name", list(VP_SCHEDULERS) + ["EDMEulerScheduler"])
def test_run_schedule_matches_reference(name):
    config = {"use_karras_sigmas": True} if "karras" in VP_SCHEDULERS.get(name, ((), ()))[1] \
        else {}
    ours, theirs = build_pair(name, config)
    ours.set_timesteps(11)
    theirs.set_timesteps(11)
    torch.testing.assert_close(ours.timesteps, theirs.timesteps.to(torch.float32),
                               rtol=1e-5, atol=1e-4)
    finite = torch.isfinite(theirs.sigmas)
    torch.testing.assert_close(ours.sigmas[finite], theirs.sigmas[finite], rtol=1e-5, atol=1e-7)
    assert float(ours.init_noise_sigma) == pytest.approx(float(theirs.init_noise_sigma),
                                                          rel=1e-6)
