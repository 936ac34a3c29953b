"""DDPMScheduler._get_variance equals the reference's helper (which diffusers'
ValueGuidedRLPipeline calls) for every variance type, before and after set_timesteps."""

import diffusers
import pytest
import torch
from diffusion_kernel import DDPMScheduler
from diffusion_kernel.errors import SchedulerError

CONFIG = {"num_train_timesteps": 20, "beta_schedule": "squaredcos_cap_v2", "clip_sample": False}
FIXED = ("fixed_small", "fixed_small_log", "fixed_large", "fixed_large_log")


def _pair(variance_type, steps=None):
    ours = DDPMScheduler(**CONFIG, variance_type=variance_type)
    theirs = diffusers.DDPMScheduler(**CONFIG, variance_type=variance_type)
    if steps is not None:
        ours.set_timesteps(steps)
        theirs.set_timesteps(steps)
    return ours, theirs


@pytest.mark.parametrize("steps", [None, 20, 7])
@pytest.mark.parametrize("variance_type", FIXED)
def test_fixed_variances_equal_the_reference_at_every_timestep(variance_type, steps):
    ours, theirs = _pair(variance_type, steps)
    for t in theirs.timesteps:
        expected = theirs._get_variance(t)
        got = ours._get_variance(t)
        assert got.dtype == torch.float32
        torch.testing.assert_close(got, expected, rtol=1e-6, atol=0)


def test_fixed_small_log_is_the_standard_deviation_as_in_the_reference():
    ours, _ = _pair("fixed_small_log")
    # at t = 5 of a 20-step cosine chain, sqrt(beta_tilde) = 0.2257 (a log would be negative)
    assert ours._get_variance(5).item() == pytest.approx(0.2257, abs=1e-4)
    assert ours._get_variance(5) ** 2 == pytest.approx(ours._get_variance(5, variance_type=
                                                                          "fixed_small").item())


@pytest.mark.parametrize("variance_type", ["learned", "learned_range"])
def test_learned_variances_equal_the_reference(variance_type):
    ours, theirs = _pair(variance_type, 10)
    predicted = torch.rand(2, 3, 4) * 0.5 + 0.05
    for t in theirs.timesteps:
        torch.testing.assert_close(ours._get_variance(t, predicted),
                                   theirs._get_variance(t, predicted), rtol=1e-6, atol=1e-7)


def test_learned_types_without_a_prediction_are_refused():
    ours, _ = _pair("learned_range")
    with pytest.raises(SchedulerError, match="needs predicted_variance"):
        ours._get_variance(3)
