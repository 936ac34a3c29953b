"""The "sigmoid" beta schedule (GeoDiff, Xu et al. 2022): beta_t = sigmoid(linspace(-6, 6, T)) *
(beta_end - beta_start) + beta_start. diffusers 0.42.1 has it in DDPMScheduler only; there the
betas, the cumulative products and full sampling runs must equal the reference's. The other
schedulers that take ``beta_schedule`` accept it too; they are checked against the reference
class given the same betas as ``trained_betas`` (its own constructors refuse "sigmoid")."""

import math

import pytest
import torch
from conftest import assert_parity, build_pair, diffusers_scheduler_class, run_loop
from diffusion_kernel import registry
from diffusion_kernel.errors import ConfigError

GEODIFF = {"beta_schedule": "sigmoid", "beta_start": 1e-7, "beta_end": 2e-3,
           "num_train_timesteps": 1000}


@pytest.mark.parametrize("config", [GEODIFF, {"beta_schedule": "sigmoid"},
                                    {**GEODIFF, "num_train_timesteps": 5000}],
                         ids=["geodiff-1000", "defaults", "geodiff-5000"])
def test_ddpm_sigmoid_betas_and_alphas_cumprod_equal_reference(config):
    ours, theirs = build_pair("DDPMScheduler", config)
    assert ours.betas.dtype == torch.float32
    assert torch.equal(ours.betas, theirs.betas)
    assert torch.equal(ours.alphas_cumprod, theirs.alphas_cumprod)


def test_sigmoid_betas_follow_the_geodiff_formula():
    ours, _ = build_pair("DDPMScheduler", GEODIFF)
    betas = ours.betas.double()
    for i in (0, 250, 500, 999):  # x_i = -6 + 12 i / (T - 1)
        x = -6 + 12 * i / 999
        assert betas[i].item() == pytest.approx(1e-7 + (2e-3 - 1e-7) / (1 + math.exp(-x)),
                                                rel=1e-5)
    assert bool((betas.diff() > 0).all())


@pytest.mark.parametrize("variance_type", ["fixed_small", "fixed_large"])
@pytest.mark.parametrize("n", [50, 13])
def test_ddpm_sigmoid_trajectory_matches_reference(variance_type, n):
    ours, theirs = build_pair("DDPMScheduler", {**GEODIFF, "clip_sample": False,
                                                  "variance_type": variance_type})
    assert_parity(run_loop(ours, n), run_loop(theirs, n))


@pytest.mark.parametrize("name", ["DDIMScheduler", "EulerDiscreteScheduler",
                                  "DPMSolverMultistepScheduler", "PNDMScheduler"])
def test_other_schedulers_take_sigmoid_like_its_trained_betas(name):
    ours = registry.schedulers.get(name).from_config(GEODIFF)
    ddpm, _ = build_pair("DDPMScheduler", GEODIFF)
    trained = {**GEODIFF, "beta_schedule": "linear", "trained_betas": ddpm.betas.tolist()}
    theirs = diffusers_scheduler_class(name).from_config(trained)
    assert_parity(run_loop(ours, 20), run_loop(theirs, 20))


def test_unknown_beta_schedule_lists_sigmoid():
    with pytest.raises(ConfigError, match="sigmoid"):
        registry.schedulers.get("DDPMScheduler")(beta_schedule="sigmoidal")
