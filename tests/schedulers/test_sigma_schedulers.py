"""Behaviour of the sigma-space schedulers beyond parity: clean re-runs, per-sample generators,
presets, and the errors a user can cause (each a SchedulerError / ConfigError naming the fix)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import fake_model, run_loop
from diffusion_kernel import registry
from diffusion_kernel.errors import ConfigError, SchedulerError
from diffusion_kernel.scheduling import scheduler_from_name

NAMES = ["EulerDiscreteScheduler", "EulerAncestralDiscreteScheduler", "HeunDiscreteScheduler",
         "KDPM2DiscreteScheduler", "KDPM2AncestralDiscreteScheduler", "LMSDiscreteScheduler",
         "EDMEulerScheduler"]
VP_NAMES = NAMES[:-1]
KARRAS_CAPABLE = ["EulerDiscreteScheduler", "HeunDiscreteScheduler", "KDPM2DiscreteScheduler",
                  "KDPM2AncestralDiscreteScheduler", "LMSDiscreteScheduler"]


def make(name: str, **config):
    return registry.schedulers.get(name).from_config(config)


def _deterministic_kwargs(scheduler) -> dict:
    import inspect

    accepts = "generator" in inspect.signature(scheduler.step).parameters
    return {"generator": torch.Generator().manual_seed(5)} if accepts else {}


@pytest.mark.parametrize("name", NAMES)
def test_a_timestep_outside_the_run_a_new_scheduler_holds_raises_scheduler_error(name):
    """A new scheduler holds a run (as in diffusers; test_diffusers_compat.py) and says which
    timesteps it takes."""
    scheduler = make(name)
    x = torch.zeros(1, 2, 4, 4)
    with pytest.raises(SchedulerError, match="is not in this run's timesteps"):
        scheduler.step(x, 1234.5, x)


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("steps", [0, -3, 2.5, True])
def test_bad_step_count_raises_scheduler_error(name, steps):
    with pytest.raises(SchedulerError, match="num_inference_steps must be an integer >= 1"):
        make(name).set_timesteps(steps)


@pytest.mark.parametrize("name", NAMES)
def test_more_steps_than_training_timesteps_raises_scheduler_error(name):
    with pytest.raises(SchedulerError, match="more than the 1000 timesteps"):
        make(name).set_timesteps(1001)


@pytest.mark.parametrize("name", NAMES)
def test_begin_index_outside_the_run_raises_scheduler_error(name):
    scheduler = make(name)
    scheduler.set_timesteps(4)
    with pytest.raises(SchedulerError, match="outside this run"):
        scheduler.set_begin_index(len(scheduler.timesteps))


def test_edm_custom_positions_outside_unit_interval_are_refused():
    with pytest.raises(SchedulerError, match=r"positions along the schedule in \[0, 1\]"):
        make("EDMEulerScheduler").set_timesteps(sigmas=[80.0, 10.0, 0.5])


def test_edm_built_from_an_euler_config_uses_the_paper_sigma_range():
    edm = registry.schedulers.get("EDMEulerScheduler").from_config(
        make("EulerDiscreteScheduler").config)
    edm.set_timesteps(5)
    assert edm.sigmas[0].item() == pytest.approx(80.0)
    assert edm.sigmas[-2].item() == pytest.approx(0.002)


@pytest.mark.parametrize("name", NAMES)
def test_wrong_shape_model_output_raises_scheduler_error(name):
    scheduler = make(name)
    scheduler.set_timesteps(5)
    sample = torch.zeros(1, 4, 8, 8)
    with pytest.raises(SchedulerError, match=r"model_output has shape \(1, 8, 8, 8\)"):
        scheduler.step(torch.zeros(1, 8, 8, 8), scheduler.timesteps[0], sample)


@pytest.mark.parametrize("name", NAMES)
def test_stepping_past_the_end_of_a_run_raises(name):
    scheduler = make(name)
    scheduler.set_timesteps(3)
    x = torch.randn(1, 2, 4, 4)
    for t in scheduler.timesteps:
        x = scheduler.step(fake_model(x, t), t, x, **_deterministic_kwargs(scheduler)).prev_sample
    with pytest.raises(SchedulerError, match="finished; call set_timesteps"):
        scheduler.step(x, scheduler.timesteps[-1], x)


@pytest.mark.parametrize("name", ["EulerDiscreteScheduler", "EulerAncestralDiscreteScheduler",
                                  "EDMEulerScheduler"])
def test_integer_loop_index_as_timestep_is_refused(name):
    scheduler = make(name)
    scheduler.set_timesteps(4)
    x = torch.zeros(1, 2, 4, 4)
    with pytest.raises(SchedulerError, match="not the loop index"):
        scheduler.step(x, 0, x)


@pytest.mark.parametrize("name,option,value", [
    (name, option, "nonsense") for name in VP_NAMES
    for option in ("prediction_type", "timestep_spacing", "beta_schedule")
] + [
    ("EulerDiscreteScheduler", "interpolation_type", "cubic"),
    ("EulerDiscreteScheduler", "final_sigmas_type", "one"),
    ("EulerDiscreteScheduler", "timestep_type", "fractional"),
    ("EDMEulerScheduler", "sigma_schedule", "linear"),
    ("EDMEulerScheduler", "prediction_type", "sample"),
    ("EDMEulerScheduler", "final_sigmas_type", "one"),
])
def test_unknown_option_value_raises_config_error_listing_valid_values(name, option, value):
    with pytest.raises(ConfigError, match=f"unknown {option} '{value}'; valid values are: '"):
        make(name, **{option: value})


@pytest.mark.parametrize("name", KARRAS_CAPABLE)
def test_karras_and_exponential_together_raise_config_error(name):
    with pytest.raises(ConfigError, match="mutually exclusive"):
        make(name, use_karras_sigmas=True, use_exponential_sigmas=True)


@pytest.mark.parametrize("name", KARRAS_CAPABLE)
def test_beta_and_karras_sigmas_together_raise_config_error(name):
    with pytest.raises(ConfigError, match="mutually exclusive"):
        make(name, use_karras_sigmas=True, use_beta_sigmas=True)


def test_beta_sigmas_follow_the_beta_quantiles():
    # Beta(0.6, 0.6) quantiles (scipy.stats.beta.ppf as the oracle), scaled to the sigma range
    from diffusion_kernel_schedulers.schedules import beta_sigmas
    from scipy import stats

    n, lo, hi = 9, 0.03, 14.6
    expected = lo + stats.beta.ppf(1 - np.linspace(0, 1, n), 0.6, 0.6) * (hi - lo)
    np.testing.assert_allclose(beta_sigmas(lo, hi, n), expected, rtol=1e-12, atol=1e-12)
    for a, b in [(2.0, 5.0), (0.5, 3.0)]:
        np.testing.assert_allclose(beta_sigmas(0.0, 1.0, 13, a, b),
                                   stats.beta.ppf(1 - np.linspace(0, 1, 13), a, b), atol=1e-12)


def test_euler_custom_timesteps_with_karras_sigmas_are_refused():
    with pytest.raises(SchedulerError, match="custom timesteps cannot be combined"):
        make("EulerDiscreteScheduler", use_karras_sigmas=True).set_timesteps(
            timesteps=[900.0, 500.0, 100.0])


def test_euler_set_timesteps_needs_exactly_one_source():
    with pytest.raises(SchedulerError, match="exactly one of"):
        make("EulerDiscreteScheduler").set_timesteps(5, sigmas=[3.0, 1.0, 0.0])
    with pytest.raises(SchedulerError, match="exactly one of"):
        make("EulerDiscreteScheduler").set_timesteps()


@pytest.mark.parametrize("name", NAMES)
def test_set_timesteps_again_starts_a_clean_run(name):
    """A run abandoned half-way (Heun's pending stage, LMS's slope history, the step index)
    leaves nothing behind: the next run equals a run on a fresh scheduler."""
    used = make(name)
    used.set_timesteps(6)
    x = torch.randn(2, 2, 4, 4, generator=torch.Generator().manual_seed(1))
    for t in used.timesteps[:3]:
        x = used.step(fake_model(used.scale_model_input(x, t), t), t, x,
                      **_deterministic_kwargs(used)).prev_sample
    used.set_begin_index(1)
    torch.testing.assert_close(run_loop(used, 6, shape=(2, 2, 4, 4)),
                               run_loop(make(name), 6, shape=(2, 2, 4, 4)), rtol=0, atol=0)


STOCHASTIC = [("EulerAncestralDiscreteScheduler", {}),
              ("KDPM2AncestralDiscreteScheduler", {}),
              ("EulerDiscreteScheduler", {"s_churn": 1.0}),
              ("EDMEulerScheduler", {"s_churn": 1.0})]


@pytest.mark.parametrize("name,step_kwargs", STOCHASTIC, ids=[s[0] for s in STOCHASTIC])
def test_batch_with_per_sample_seeds_equals_single_runs(name, step_kwargs):
    seeds = [101, 202, 303, 404]
    batch = run_loop(make(name), 5, shape=(4, 2, 4, 4), generator_seeds=seeds,
                     step_kwargs=step_kwargs)
    singles = [run_loop(make(name), 5, shape=(1, 2, 4, 4), generator_seeds=[s],
                        step_kwargs=step_kwargs) for s in seeds]
    torch.testing.assert_close(batch, torch.cat(singles), rtol=1e-6, atol=1e-6)


def test_wrong_number_of_generators_raises_scheduler_error():
    scheduler = make("EulerAncestralDiscreteScheduler")
    scheduler.set_timesteps(3)
    x = torch.zeros(3, 2, 4, 4)
    gens = [torch.Generator().manual_seed(i) for i in range(2)]
    with pytest.raises(SchedulerError, match="2 generators for a batch of 3"):
        scheduler.step(x, scheduler.timesteps[0], x, generator=gens)


@pytest.mark.parametrize("alias,name,flag", [
    ("euler-karras", "EulerDiscreteScheduler", "use_karras_sigmas"),
    ("heun-karras", "HeunDiscreteScheduler", "use_karras_sigmas"),
    ("dpm2-karras", "KDPM2DiscreteScheduler", "use_karras_sigmas"),
    ("dpm2-a-karras", "KDPM2AncestralDiscreteScheduler", "use_karras_sigmas"),
    ("lms-karras", "LMSDiscreteScheduler", "use_karras_sigmas"),
])
def test_karras_presets_swap_in_from_another_schedulers_config(alias, name, flag):
    base = make("EulerAncestralDiscreteScheduler", beta_schedule="scaled_linear",
                beta_start=0.00085, beta_end=0.012)
    swapped = scheduler_from_name(alias, base.config)
    assert type(swapped).__name__ == name
    assert swapped.config[flag] is True
    assert swapped.config.beta_schedule == "scaled_linear"
    swapped.set_timesteps(10)
    assert float(swapped.sigmas[0]) == pytest.approx(14.6146, rel=1e-4)  # SD's sigma_max


def test_lms_coefficients_are_integrated_once_per_run(monkeypatch):
    from diffusion_kernel_schedulers import lms

    calls = []
    original = lms.lms_coefficients
    monkeypatch.setattr(lms, "lms_coefficients",
                        lambda *a: calls.append(a) or original(*a))
    scheduler = make("LMSDiscreteScheduler")
    run_loop(scheduler, 12, shape=(1, 2, 4, 4))
    assert len(calls) == 12  # one per step, all inside set_timesteps


def test_lms_first_order_coefficient_is_the_step_size():
    scheduler = make("LMSDiscreteScheduler")
    scheduler.set_timesteps(5)
    sigmas = scheduler.sigmas.double()
    assert scheduler.get_lms_coefficient(1, 2, 0) == pytest.approx(float(sigmas[3] - sigmas[2]))


def test_edm_timesteps_are_the_noise_conditioning_of_their_sigmas():
    scheduler = make("EDMEulerScheduler")
    scheduler.set_timesteps(6)
    torch.testing.assert_close(scheduler.timesteps, 0.25 * scheduler.sigmas[:-1].log())
    assert scheduler.sigmas[0].item() == pytest.approx(80.0)
    assert scheduler.sigmas[-2].item() == pytest.approx(0.002)
