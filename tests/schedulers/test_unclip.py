"""UnCLIPScheduler: the unCLIP loop (each step told the next visited timestep) gives the
reference's samples for both variance types and both prediction types; the registry finds it by
name and alias; bad values fail clearly."""

import pytest
import torch
from diffusers import UnCLIPScheduler as Reference
from diffusion_kernel import registry
from diffusion_kernel.errors import ConfigError, SchedulerError


def unclip_loop(scheduler, steps, learned_variance: bool, seed: int = 0):
    """The reference pipeline's loop: step(output, t, x, prev_timestep=next t or None)."""
    scheduler.set_timesteps(steps)
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(2, 3, 8, 8, generator=generator)
    timesteps = scheduler.timesteps
    for i, t in enumerate(timesteps):
        out = torch.sin(x * 1.3 + 0.01 * float(t))
        if learned_variance:
            out = torch.cat([out, torch.tanh(x)], dim=1)
        prev = timesteps[i + 1] if i + 1 < len(timesteps) else None
        x = scheduler.step(out, t, x, prev_timestep=prev, generator=generator).prev_sample
    return x


@pytest.mark.parametrize("steps", [2, 7, 25])
@pytest.mark.parametrize("prediction_type", ["epsilon", "sample"])
@pytest.mark.parametrize("variance_type", ["fixed_small_log", "learned_range"])
def test_loop_matches_reference(variance_type, prediction_type, steps):
    config = dict(variance_type=variance_type, prediction_type=prediction_type,
                  clip_sample_range=5.0 if prediction_type == "sample" else 1.0)
    ours = registry.schedulers.get("unclip").from_config(config)
    reference = Reference(**config)
    learned = variance_type == "learned_range"
    mine, theirs = unclip_loop(ours, steps, learned), unclip_loop(reference, steps, learned)
    assert torch.equal(ours.timesteps, reference.timesteps)
    assert theirs.abs().mean() > 0.1  # a real sample, not zeros
    assert torch.equal(mine, theirs)  # the reference's float32 arithmetic, bit for bit


def test_step_without_prev_timestep_is_one_training_step_as_in_the_reference():
    ours, reference = registry.schedulers.get("UnCLIPScheduler")(), Reference()
    x, out = torch.randn(1, 3, 4, 4), torch.randn(1, 3, 4, 4)
    for t in (500, 1, 0):
        mine = ours.step(out, t, x, generator=torch.Generator().manual_seed(t)).prev_sample
        theirs = reference.step(out, t, x, generator=torch.Generator().manual_seed(t)).prev_sample
        assert torch.equal(mine, theirs)


def test_add_noise_matches_reference():
    ours, reference = registry.schedulers.get("unclip")(), Reference()
    x, noise, t = torch.randn(3, 3, 4, 4), torch.randn(3, 3, 4, 4), torch.tensor([0, 400, 999])
    torch.testing.assert_close(ours.add_noise(x, noise, t), reference.add_noise(x, noise, t))


@pytest.mark.parametrize("field,value", [("variance_type", "fixed_large"),
                                         ("prediction_type", "v_prediction"),
                                         ("beta_schedule", "linear")])
def test_unsupported_options_name_the_valid_values(field, value):
    with pytest.raises(ConfigError, match=f"unknown {field}"):
        registry.schedulers.get("unclip")(**{field: value})


def test_bad_steps_and_timesteps_fail_clearly():
    scheduler = registry.schedulers.get("unclip")()
    with pytest.raises(SchedulerError, match="at least 2 steps"):
        scheduler.set_timesteps(1)
    x = torch.randn(1, 3, 4, 4)
    with pytest.raises(SchedulerError, match="prev_timestep < timestep"):
        scheduler.step(x, 10, x, prev_timestep=20)
    learned = registry.schedulers.get("unclip")(variance_type="learned_range")
    with pytest.raises(SchedulerError, match="twice the sample's channels"):
        learned.step(x, 10, x)
