"""Clear errors from the DDPM-family, LCM, flow-matching and score-SDE schedulers: each names the
problem and the fix (diffusion_kernel.errors types, never a bare torch/numpy error)."""

import pytest
import torch
from diffusion_kernel import registry
from diffusion_kernel.errors import ConfigError, SchedulerError

X = torch.zeros(2, 3, 8, 8)


def make(name, **config):
    return registry.schedulers.get(name)(**config)


def prepared(name, steps=5, **config):
    scheduler = make(name, **config)
    scheduler.set_timesteps(steps)
    return scheduler


def test_ddpm_unknown_variance_type_lists_the_valid_ones():
    with pytest.raises(ConfigError, match="variance_type 'fixed'.*'fixed_small'.*'learned_range'"):
        make("DDPMScheduler", variance_type="fixed")


def test_pndm_rejects_sample_prediction():
    with pytest.raises(ConfigError, match="prediction_type 'sample'.*'epsilon', 'v_prediction'"):
        make("PNDMScheduler", prediction_type="sample")


def test_ddim_inverse_rejects_linspace_spacing():
    with pytest.raises(ConfigError, match="timestep_spacing 'linspace'.*'leading', 'trailing'"):
        make("DDIMInverseScheduler", timestep_spacing="linspace")


@pytest.mark.parametrize("name", ["DDPMScheduler", "DDIMScheduler"])
@pytest.mark.parametrize("timesteps,message", [
    ([500, 700, 100], "strictly descending"),
    ([1000, 500], r"\[0, 999\]"),
    ([], "empty"),
])
def test_custom_timesteps_are_checked(name, timesteps, message):
    with pytest.raises(SchedulerError, match=message):
        make(name).set_timesteps(timesteps=timesteps)


def test_steps_and_custom_timesteps_together_are_refused():
    with pytest.raises(SchedulerError, match="exactly one of num_inference_steps or timesteps"):
        make("DDPMScheduler").set_timesteps(5, timesteps=[999, 500])


def test_steps_offset_past_the_last_training_timestep_is_refused():
    with pytest.raises(SchedulerError, match="steps_offset=5"):
        make("DDIMScheduler", steps_offset=5).set_timesteps(1000)  # would visit t = 1004


def test_ddpm_learned_variance_needs_twice_the_channels():
    scheduler = prepared("DDPMScheduler", variance_type="learned_range")
    with pytest.raises(SchedulerError, match="twice the sample's 3 channels"):
        scheduler.step(X, scheduler.timesteps[0], X)


@pytest.mark.parametrize("name", ["DDPMScheduler", "DDIMScheduler", "LCMScheduler",
                                  "FlowMatchEulerDiscreteScheduler"])
def test_a_timestep_outside_the_run_is_named(name):
    scheduler = prepared(name)
    with pytest.raises(SchedulerError, match="not one of this run's timesteps"):
        scheduler.step(X, 3.5 if "Flow" in name else 3, X)


def test_ddim_refuses_both_generator_and_variance_noise():
    scheduler = prepared("DDIMScheduler")
    with pytest.raises(SchedulerError, match="either generator or variance_noise"):
        scheduler.step(X, scheduler.timesteps[0], X, eta=1.0, generator=torch.Generator(),
                       variance_noise=X)


def test_one_generator_per_sample_or_one_for_all():
    scheduler = prepared("DDPMScheduler")
    generators = [torch.Generator() for _ in range(3)]
    with pytest.raises(SchedulerError, match="3 generators for a batch of 2"):
        scheduler.step(X, scheduler.timesteps[0], X, generator=generators)


def test_pndm_must_be_stepped_in_order():
    scheduler = prepared("PNDMScheduler", skip_prk_steps=True)
    assert scheduler.timesteps.tolist() == [800, 600, 600, 400, 200, 0]
    with pytest.raises(SchedulerError, match="in order: expected timestep 800 .call 0., got 600"):
        scheduler.step(X, 600, X)  # skipped the first call

def test_pndm_refuses_to_step_past_the_end_of_a_run():
    scheduler = prepared("PNDMScheduler", steps=2, skip_prk_steps=True)
    for t in scheduler.timesteps:
        scheduler.step(X, t, X)
    with pytest.raises(SchedulerError, match="finished; call set_timesteps"):
        scheduler.step(X, scheduler.timesteps[-1], X)


def test_lcm_steps_cannot_exceed_the_distillation_schedule():
    with pytest.raises(SchedulerError, match="original_inference_steps=50"):
        make("LCMScheduler").set_timesteps(51)


def test_flow_match_dynamic_shifting_needs_mu():
    with pytest.raises(SchedulerError, match="mu="):
        make("FlowMatchEulerDiscreteScheduler", use_dynamic_shifting=True).set_timesteps(5)


def test_flow_match_sigmas_must_match_the_step_count():
    with pytest.raises(SchedulerError, match="3 sigmas for num_inference_steps=4"):
        make("FlowMatchEulerDiscreteScheduler").set_timesteps(4, sigmas=[1.0, 0.5, 0.1])


def test_flow_match_sigma_discretisations_are_exclusive():
    with pytest.raises(ConfigError, match="mutually exclusive"):
        make("FlowMatchEulerDiscreteScheduler", use_karras_sigmas=True,
             use_exponential_sigmas=True)


def test_score_sde_ve_needs_ordered_sigma_range():
    with pytest.raises(ConfigError, match="0 < sigma_min < sigma_max"):
        make("ScoreSdeVeScheduler", sigma_min=2.0, sigma_max=1.0)


def test_score_sde_ve_rejects_a_time_outside_the_run():
    scheduler = prepared("ScoreSdeVeScheduler")
    with pytest.raises(SchedulerError, match="not a time of this run"):
        scheduler.step_pred(X, torch.tensor(1.5), X)


def test_config_is_read_only():
    with pytest.raises(ConfigError, match="read-only"):
        make("DDIMScheduler").config.num_train_timesteps = 10
