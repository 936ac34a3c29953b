"""IPNDMScheduler: the run's schedule and every step of its trajectories equal diffusers' within
1e-6; the v-diffusion process it samples (add_noise, get_velocity) is the one its steps assume."""

import math

import pytest
import torch
from conftest import assert_parity, build_pair, fake_model, run_loop
from diffusion_kernel import registry
from diffusion_kernel.errors import SchedulerError

IPNDM = registry.schedulers.get("IPNDMScheduler")
SHAPE = (2, 2, 64)


def test_found_by_alias():
    assert registry.schedulers.get("ipndm") is IPNDM


@pytest.mark.parametrize("steps", [1, 2, 3, 4, 10, 50])
def test_run_schedule_equals_the_reference(steps):
    ours, theirs = build_pair("IPNDMScheduler")
    ours.set_timesteps(steps)
    theirs.set_timesteps(steps)
    for name in ("timesteps", "betas", "alphas"):
        torch.testing.assert_close(getattr(ours, name), getattr(theirs, name), rtol=0, atol=0)
    if steps == 4:  # the crash schedule's times (research notes, checked against diffusers)
        expected = torch.tensor([1.0, 0.6511, 0.3333, 0.0936])
        torch.testing.assert_close(ours.timesteps, expected, rtol=0, atol=1e-4)


@pytest.mark.parametrize("steps", [1, 2, 3, 4, 5, 10])
def test_every_step_of_a_run_equals_the_reference(steps):
    ours, theirs = build_pair("IPNDMScheduler")
    ours.set_timesteps(steps)
    theirs.set_timesteps(steps)
    x_ours = x_theirs = torch.randn(SHAPE, generator=torch.Generator().manual_seed(3))
    for t in ours.timesteps:
        x_ours = ours.step(fake_model(x_ours, t), t, x_ours).prev_sample
        x_theirs = theirs.step(fake_model(x_theirs, t), t, x_theirs).prev_sample
        assert_parity(x_ours, x_theirs, rtol=1e-6)


def test_a_run_from_a_begin_index_equals_the_reference():
    ours, theirs = build_pair("IPNDMScheduler")
    theirs.add_noise = ours.add_noise  # the reference has none
    init = torch.rand(SHAPE, generator=torch.Generator().manual_seed(4)) * 2 - 1
    assert_parity(run_loop(ours, 8, shape=SHAPE, init_sample=init, begin_index=3),
                  run_loop(theirs, 8, shape=SHAPE, init_sample=init, begin_index=3), rtol=1e-6)


def test_noising_and_velocity_follow_the_v_diffusion_process():
    scheduler = IPNDM()
    x0, noise = torch.randn(3, 2, 16), torch.randn(3, 2, 16)
    t = torch.tensor([0.0, 0.5, 1.0])
    noisy = scheduler.add_noise(x0, noise, t)
    torch.testing.assert_close(noisy[0], x0[0])
    torch.testing.assert_close(noisy[1], (x0[1] + noise[1]) / math.sqrt(2))
    torch.testing.assert_close(noisy[2], noise[2], atol=1e-6, rtol=0)
    v = scheduler.get_velocity(x0, noise, t)
    # x_0 = alpha x_t - sigma v and eps = sigma x_t + alpha v (Salimans & Ho 2022, sec. 4)
    alpha, sigma = torch.cos(t * math.pi / 2)[:, None, None], torch.sin(t * math.pi / 2)[:, None,
                                                                                       None]
    torch.testing.assert_close(alpha * noisy - sigma * v, x0, atol=1e-6, rtol=0)
    torch.testing.assert_close(sigma * noisy + alpha * v, noise, atol=1e-6, rtol=0)


@pytest.mark.parametrize("steps", [2, 4, 25])
def test_the_exact_velocity_of_a_point_mass_lands_on_it(steps):
    """With data = one point x*, the exact v-model is v = alpha eps - sigma x* with
    eps = (x - alpha x*) / sigma, and the ODE path keeps eps constant: every Adams-Bashforth
    combination is that eps, every step predicts x_0 = x*, and the run ends there. (The run's
    first time, t = 1, has alpha = 0 and sees nothing of x*: start after it.)"""
    target = torch.linspace(-1, 1, 32).reshape(1, 2, 16)
    scheduler = IPNDM()
    scheduler.set_timesteps(steps)
    scheduler.set_begin_index(1)
    noise = torch.randn(1, 2, 16, generator=torch.Generator().manual_seed(0))
    x = scheduler.add_noise(target, noise, scheduler.timesteps[1:2])
    for t in scheduler.timesteps[1:]:
        alpha, sigma = math.cos(float(t) * math.pi / 2), math.sin(float(t) * math.pi / 2)
        eps = (x - alpha * target) / sigma
        x = scheduler.step(alpha * eps - sigma * target, t, x).prev_sample
    torch.testing.assert_close(x, target, atol=1e-5, rtol=0)


def test_trained_betas_must_hold_one_level_per_step_and_the_end():
    scheduler = IPNDM(trained_betas=[1.0, 0.5, 0.0])
    scheduler.set_timesteps(2)
    assert torch.allclose(scheduler.timesteps, torch.tensor([1.0, 1 / 3]))
    with pytest.raises(SchedulerError, match="num_inference_steps=2 or drop trained_betas"):
        scheduler.set_timesteps(5)


def test_a_timestep_outside_the_run_and_a_finished_run_are_errors():
    scheduler = IPNDM()
    scheduler.set_timesteps(2)
    x = torch.randn(SHAPE)
    with pytest.raises(SchedulerError, match="not in this run's timesteps"):
        scheduler.step(x, 0.123, x)
    for t in scheduler.timesteps:
        x = scheduler.step(x, t, x).prev_sample
    with pytest.raises(SchedulerError, match="finished"):
        scheduler.step(x, scheduler.timesteps[-1], x)
