"""Behaviour of the multistep exponential-integrator schedulers (DPM-Solver(++) multistep and
singlestep, UniPC, DEIS) beyond parity: clear errors, no hidden state across runs, per-sample
randomness, config files, and the places where we deliberately differ from diffusers."""

from __future__ import annotations

import pytest
import torch
from conftest import diffusers_scheduler_class, fake_model, run_loop
from diffusion_kernel import registry
from diffusion_kernel.errors import ConfigError, SchedulerError
from diffusion_kernel.scheduling import scheduler_from_name

NAMES = ["DPMSolverMultistepScheduler", "DPMSolverSinglestepScheduler",
         "UniPCMultistepScheduler", "DEISMultistepScheduler"]


def make(name: str, **config):
    return registry.schedulers.get(name).from_config(config)


@pytest.mark.parametrize("name", NAMES)
def test_step_before_set_timesteps_raises_scheduler_error(name):
    scheduler = make(name)
    x = torch.zeros(1, 3, 4, 4)
    with pytest.raises(SchedulerError, match="set_timesteps"):
        scheduler.step(x, 999, x)


@pytest.mark.parametrize("name,option,value", [
    ("DPMSolverMultistepScheduler", "algorithm_type", "dpm"),
    ("DPMSolverMultistepScheduler", "solver_type", "rk4"),
    ("DPMSolverMultistepScheduler", "timestep_spacing", "uniform"),
    ("DPMSolverMultistepScheduler", "final_sigmas_type", "none"),
    ("DPMSolverMultistepScheduler", "prediction_type", "velocity"),
    ("UniPCMultistepScheduler", "time_shift_type", "cosine"),
    ("DPMSolverMultistepScheduler", "beta_schedule", "cubic"),
    ("DPMSolverMultistepScheduler", "variance_type", "fixed"),  # DDPM's values are accepted
    ("DPMSolverSinglestepScheduler", "algorithm_type", "sde-dpmsolver"),
    ("UniPCMultistepScheduler", "solver_type", "bh3"),
    ("DEISMultistepScheduler", "algorithm_type", "ddim"),
    ("DEISMultistepScheduler", "solver_type", "rk4"),
])
def test_unknown_option_value_raises_config_error_listing_the_valid_ones(name, option, value):
    with pytest.raises(ConfigError, match=f"unknown {option} '{value}'; valid values are"):
        make(name, **{option: value})


@pytest.mark.parametrize("config,message", [
    ({"solver_order": 4}, "solver_order must be 1, 2 or 3"),
    ({"algorithm_type": "dpmsolver"}, "final_sigmas_type='sigma_min'"),
    ({"algorithm_type": "sde-dpmsolver", "solver_order": 3, "final_sigmas_type": "sigma_min"},
     "no third-order update"),
    ({"use_karras_sigmas": True, "use_exponential_sigmas": True}, "mutually exclusive"),
    ({"use_karras_sigmas": True, "use_lu_lambdas": True}, "use_lu_lambdas cannot be combined"),
    ({"use_beta_sigmas": True, "use_exponential_sigmas": True}, "mutually exclusive"),
    ({"use_flow_sigmas": True, "use_karras_sigmas": True}, "cannot be combined with karras"),
    ({"use_dynamic_shifting": True}, "set use_flow_sigmas=True"),
    ({"prediction_type": "flow_prediction", "algorithm_type": "dpmsolver",
      "final_sigmas_type": "sigma_min"}, "needs the data-prediction form"),
])
def test_contradictory_or_unsupported_config_raises_config_error(config, message):
    with pytest.raises(ConfigError, match=message):
        make("DPMSolverMultistepScheduler", **config)


def test_unipc_shift_terminal_needs_flow_sigmas():
    with pytest.raises(ConfigError, match="shift_terminal is only supported"):
        make("UniPCMultistepScheduler", shift_terminal=0.1)


def test_unipc_noise_prediction_cannot_end_at_sigma_zero():
    with pytest.raises(ConfigError, match="final_sigmas_type='sigma_min'"):
        make("UniPCMultistepScheduler", predict_x0=False)


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("steps", [0, -3, 2.5, True, 1001, "10"])
def test_bad_step_count_raises_scheduler_error(name, steps):
    message = r"num_inference_steps must be an integer in \[1, 1000\]"
    with pytest.raises(SchedulerError, match=message):
        make(name).set_timesteps(steps)


@pytest.mark.parametrize("name", NAMES)
def test_set_timesteps_needs_exactly_one_of_steps_or_timesteps(name):
    with pytest.raises(SchedulerError, match="exactly one"):
        make(name).set_timesteps()
    with pytest.raises(SchedulerError, match="exactly one"):
        make(name).set_timesteps(5, timesteps=[900, 500, 100])


@pytest.mark.parametrize("config,kwargs,message", [
    ({}, {"num_inference_steps": 5, "mu": 0.5}, "mu is needed exactly when"),
    ({"use_flow_sigmas": True, "use_dynamic_shifting": True}, {"num_inference_steps": 5},
     "mu is needed exactly when"),
    ({}, {"sigmas": [0.9, 0.5]}, "custom sigmas need use_flow_sigmas=True"),
    ({"use_flow_sigmas": True}, {"timesteps": [900, 500]}, "takes custom sigmas, not timesteps"),
    ({"use_flow_sigmas": True}, {"sigmas": [0.9, 1.5]}, r"values in \(0, 1\]"),
])
def test_flow_matching_run_arguments_are_checked(config, kwargs, message):
    with pytest.raises(SchedulerError, match=message):
        make("UniPCMultistepScheduler", **config).set_timesteps(**kwargs)


@pytest.mark.parametrize("timesteps", [[100, 500, 900], [900, 900, 100], [1000, 10], [-1]])
def test_custom_timesteps_must_be_descending_training_steps(timesteps):
    with pytest.raises(SchedulerError, match="strictly descending"):
        make("DPMSolverMultistepScheduler").set_timesteps(timesteps=timesteps)


def test_custom_timesteps_cannot_combine_with_karras_sigmas():
    with pytest.raises(SchedulerError, match="use_karras_sigmas"):
        make("DPMSolverMultistepScheduler", use_karras_sigmas=True).set_timesteps(
            timesteps=[900, 500, 100])


@pytest.mark.parametrize("name", NAMES)
def test_model_output_of_the_wrong_shape_raises_scheduler_error(name):
    scheduler = make(name)
    scheduler.set_timesteps(5)
    sample = torch.zeros(1, 3, 4, 4)
    with pytest.raises(SchedulerError, match=r"model_output has shape \(1, 4, 4, 4\)"):
        scheduler.step(torch.zeros(1, 4, 4, 4), scheduler.timesteps[0], sample)


@pytest.mark.parametrize("name", NAMES)
def test_step_past_the_last_timestep_raises_scheduler_error(name):
    scheduler = make(name)
    scheduler.set_timesteps(3)
    x = torch.ones(1, 3, 4, 4)
    for t in scheduler.timesteps:
        x = scheduler.step(fake_model(x, t), t, x).prev_sample
    with pytest.raises(SchedulerError, match="after the last of the 3 timesteps"):
        scheduler.step(fake_model(x, 0), scheduler.timesteps[-1], x)


@pytest.mark.parametrize("name", NAMES)
def test_set_timesteps_again_starts_a_clean_run(name):
    config = {"solver_order": 3}
    fresh = run_loop(make(name, **config), 9)
    reused = make(name, **config)
    reused.set_timesteps(9)
    x = torch.randn(2, 3, 8, 8)
    for t in reused.timesteps[:4]:  # an abandoned run leaves history behind...
        x = reused.step(fake_model(x, t), t, x).prev_sample
    assert torch.equal(run_loop(reused, 9), fresh)  # ...which set_timesteps clears


@pytest.mark.parametrize("name,config", [
    ("DPMSolverMultistepScheduler", {"algorithm_type": "sde-dpmsolver++", "solver_order": 3}),
    ("DPMSolverSinglestepScheduler", {"algorithm_type": "sde-dpmsolver++"}),
])
def test_per_sample_generators_make_a_batch_equal_to_single_runs(name, config):
    batch = run_loop(make(name, **config), 7, shape=(2, 3, 8, 8), generator_seeds=[5, 9])
    first = run_loop(make(name, **config), 7, shape=(1, 3, 8, 8), generator_seeds=[5])
    second = run_loop(make(name, **config), 7, shape=(1, 3, 8, 8), generator_seeds=[9])
    torch.testing.assert_close(batch, torch.cat([first, second]), rtol=0, atol=1e-6)


def test_sde_variance_noise_can_be_passed_explicitly():
    scheduler = make("DPMSolverMultistepScheduler", algorithm_type="sde-dpmsolver++")
    scheduler.set_timesteps(5)
    x, t = torch.randn(1, 3, 4, 4), scheduler.timesteps[0]
    noise = torch.randn(1, 3, 4, 4)
    a = scheduler.step(fake_model(x, t), t, x, variance_noise=noise).prev_sample
    scheduler.set_timesteps(5)
    b = scheduler.step(fake_model(x, t), t, x, variance_noise=noise).prev_sample
    c = scheduler.step(fake_model(x, t), scheduler.timesteps[1], x,
                       variance_noise=torch.zeros_like(noise)).prev_sample
    assert torch.equal(a, b) and not torch.allclose(b, c)


@pytest.mark.parametrize("name", NAMES)
def test_diffusers_saved_config_loads_and_gives_the_same_samples(tmp_path, name):
    config = {"beta_schedule": "scaled_linear", "beta_start": 0.00085, "beta_end": 0.012,
              "solver_order": 1, "timestep_spacing": "leading", "steps_offset": 1}
    # (order 1, not 3: DPM-Solver++ 3M deliberately differs from diffusers, see
    # test_multistep_third_order.py)
    reference = diffusers_scheduler_class(name).from_config(config)
    reference.save_config(tmp_path)
    ours = registry.schedulers.get(name).from_pretrained(tmp_path)
    assert ours.config.solver_order == 1 and ours.config.steps_offset == 1
    torch.testing.assert_close(run_loop(ours, 7), run_loop(reference, 7), rtol=0, atol=1e-5)


@pytest.mark.parametrize("name", NAMES)
def test_save_and_load_round_trip_keeps_config_and_samples(tmp_path, name):
    scheduler = make(name, solver_order=3, use_karras_sigmas=True)
    scheduler.save_pretrained(tmp_path)
    loaded = registry.schedulers.get(name).from_pretrained(tmp_path)
    assert loaded.config == scheduler.config
    assert torch.equal(run_loop(loaded, 7), run_loop(scheduler, 7))


@pytest.mark.parametrize("source", NAMES)
@pytest.mark.parametrize("target", NAMES)
def test_swapping_between_the_solvers_keeps_the_training_schedule(source, target):
    """A config saved by one solver builds any other: solver-specific option values map onto the
    target's defaults (a DEIS algorithm_type 'deis' means dpmsolver++ to DPM-Solver, ...)."""
    original = make(source, beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012)
    swapped = registry.schedulers.get(target).from_config(original.config)
    assert torch.equal(swapped.alphas_cumprod, original.alphas_cumprod)
    assert torch.isfinite(run_loop(swapped, 7)).all()


def test_presets_build_the_named_sampler():
    scheduler = scheduler_from_name("dpm++2m-sde-karras")
    assert type(scheduler).__name__ == "DPMSolverMultistepScheduler"
    assert scheduler.config.algorithm_type == "sde-dpmsolver++"
    assert scheduler.config.use_karras_sigmas is True


@pytest.mark.parametrize("name", NAMES)
def test_add_noise_matches_diffusers(name):
    ours, theirs = make(name), diffusers_scheduler_class(name)()
    ours.set_timesteps(10)
    theirs.set_timesteps(10)
    x0, noise = torch.randn(3, 3, 4, 4), torch.randn(3, 3, 4, 4)
    t = ours.timesteps[[0, 4, 9]]
    torch.testing.assert_close(ours.add_noise(x0, noise, t), theirs.add_noise(x0, noise, t),
                               rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", NAMES)
def test_half_precision_samples_stay_half_and_close_to_float32(name):
    full = run_loop(make(name), 7)
    scheduler = make(name)
    scheduler.set_timesteps(7)
    x = (torch.randn((2, 3, 8, 8), generator=torch.Generator().manual_seed(0))).half()
    for t in scheduler.timesteps:
        x = scheduler.step(fake_model(x.float(), t).half(), t, x).prev_sample
    assert x.dtype == torch.float16
    torch.testing.assert_close(x.float(), full, rtol=0, atol=2e-2)


# Deliberate deviations from diffusers (which returns NaN/inf or crashes in these cases) ----------


@pytest.mark.parametrize("name", ["DPMSolverMultistepScheduler", "UniPCMultistepScheduler"])
def test_a_repeated_final_sigma_is_an_identity_step_not_nan(name):
    """Karras sigmas with final_sigmas_type='sigma_min' repeat the last sigma: h = 0. The
    diffusers format's third-order update divides by h there (NaN)."""
    config = {"use_karras_sigmas": True, "final_sigmas_type": "sigma_min", "solver_order": 3,
              "lower_order_final": False}
    assert torch.isfinite(run_loop(make(name, **config), 20)).all()


def test_unipc_without_lower_order_final_still_ends_finite_at_sigma_zero():
    """A step to sigma = 0 has h = inf; only its first-order form is finite (diffusers: inf)."""
    out = run_loop(make("UniPCMultistepScheduler", lower_order_final=False), 7)
    assert torch.isfinite(out).all()


def test_karras_run_on_the_cosine_schedule_with_repeated_first_timesteps_completes():
    """Karras sigmas on the cosine schedule round the first sigmas to one timestep (998 three
    times); a run from its first timestep starts at index 0 (diffusers skips ahead and raises
    IndexError at the end)."""
    scheduler = make("DPMSolverMultistepScheduler", beta_schedule="squaredcos_cap_v2",
                     use_karras_sigmas=True)
    scheduler.set_timesteps(7)
    assert scheduler.timesteps[0] == scheduler.timesteps[1]
    assert torch.isfinite(run_loop(scheduler, 7)).all()


def test_singlestep_uneven_step_count_does_not_change_the_config():
    scheduler = make("DPMSolverSinglestepScheduler", final_sigmas_type="sigma_min")
    scheduler.set_timesteps(7)
    assert scheduler.order_list == [1, 2, 1, 2, 1, 2, 1]
    assert scheduler.config.lower_order_final is False
    scheduler.set_timesteps(8)
    assert scheduler.order_list == [1, 2] * 4
