"""Where the reference departs from the papers, our schedulers follow the equations: these tests
compare them with direct float64 transcriptions of the equations (docs/scheduler-differences.md).
"""

import diffusers
import numpy as np
import pytest
import torch
from conftest import (
    assert_parity,
    constant_model,
    fake_model,
    relative_error,
    run_loop,
    run_parity,
)
from diffusion_kernel import registry

SHAPE = (2, 3, 8, 8)


def _alphas_cumprod(**config) -> np.ndarray:
    """alpha_bar from the reference class (an independent oracle for the training schedule)."""
    return diffusers.DDPMScheduler(**config).alphas_cumprod.double().numpy()


def _noise(seed: int) -> torch.Tensor:
    return torch.randn(SHAPE, generator=torch.Generator().manual_seed(seed))


def ddim_eq12(abar, timesteps, x, model, eta=0.0, final=1.0, generator=None):
    """DDIM (Song et al. 2021) eq. 12 with sigma from eq. 16, stepping tau_i -> tau_{i+1}."""
    x = x.double()
    for i, t in enumerate(timesteps):
        a_t = abar[t]
        a_prev = abar[timesteps[i + 1]] if i + 1 < len(timesteps) else final
        eps = model(x.float(), torch.tensor(t)).double()
        x0 = (x - (1 - a_t) ** 0.5 * eps) / a_t**0.5
        sigma = eta * ((1 - a_prev) / (1 - a_t) * (1 - a_t / a_prev)) ** 0.5
        x = a_prev**0.5 * x0 + (1 - a_prev - sigma**2) ** 0.5 * eps
        if eta > 0:
            x = x + sigma * torch.randn(SHAPE, generator=generator).double()
    return x.float()


@pytest.mark.parametrize("n", [7, 13])
@pytest.mark.parametrize("spacing", ["linspace", "trailing"])
@pytest.mark.parametrize("eta", [0.0, 1.0])
def test_ddim_steps_to_the_next_visited_timestep(spacing, n, eta):
    config = {"timestep_spacing": spacing, "clip_sample": False}
    ours = registry.schedulers.get("DDIMScheduler")(**config)
    result = run_loop(ours, n, step_kwargs={"eta": eta})
    expected = ddim_eq12(_alphas_cumprod(), ours.timesteps.tolist(), _noise(0), fake_model,
                         eta=eta, generator=torch.Generator().manual_seed(1))
    assert_parity(result, expected)


def test_ddim_reference_departs_from_eq12_under_linspace():
    # The reference steps to t - T // n, which under linspace is not a visited timestep: this is
    # the documented difference (if the reference ever fixes it, update the docs).
    ours, theirs = run_parity("DDIMScheduler", {"timestep_spacing": "linspace"}, 7)
    assert relative_error(ours, theirs) > 1e-3


def ddpm_posterior(abar, timesteps, x, model, variance, generator):
    """DDPM ancestral sampling (Ho et al. 2020, Algorithm 2 with the posterior of eq. 6-7) over
    the visited timesteps, no noise on the last step; variance "small" or "large"."""
    x = x.double()
    for i, t in enumerate(timesteps):
        last = i + 1 == len(timesteps)
        a_t, a_prev = abar[t], (1.0 if last else abar[timesteps[i + 1]])
        beta = 1 - a_t / a_prev
        eps = model(x.float(), torch.tensor(t)).double()
        x0 = ((x - (1 - a_t) ** 0.5 * eps) / a_t**0.5).clamp(-1, 1)
        mean = (a_prev**0.5 * beta / (1 - a_t)) * x0 + ((1 - beta) ** 0.5 * (1 - a_prev)
                                                        / (1 - a_t)) * x
        var = beta if variance == "large" else (1 - a_prev) / (1 - a_t) * beta
        x = mean if last else mean + var**0.5 * torch.randn(SHAPE, generator=generator).double()
    return x.float()


@pytest.mark.parametrize("variance_type", ["fixed_large", "fixed_large_log"])
@pytest.mark.parametrize("spacing,offset", [("trailing", 0), ("leading", 1)])
def test_ddpm_adds_no_noise_on_the_step_to_x0(variance_type, spacing, offset):
    # the last visited timestep is > 0 here: the reference still adds sqrt(beta) noise there
    config = {"variance_type": variance_type, "timestep_spacing": spacing,
              "steps_offset": offset}
    ours = registry.schedulers.get("DDPMScheduler")(**config)
    result = run_loop(ours, 7)
    expected = ddpm_posterior(_alphas_cumprod(), ours.timesteps.tolist(), _noise(0), fake_model,
                              "large", torch.Generator().manual_seed(1))
    assert_parity(result, expected)


def test_ddpm_fixed_large_log_is_fixed_large_computed_in_log_space():
    cls = registry.schedulers.get("DDPMScheduler")
    log_space = run_loop(cls(variance_type="fixed_large_log"), 7)
    assert torch.isfinite(log_space).all()  # the reference's sqrt(log beta) gives NaN here
    assert_parity(log_space, run_loop(cls(variance_type="fixed_large"), 7))


# constant_model: a noise estimate independent of x and t, so every multistep combination of it
# is itself and PNDM's steps reduce to the transfer function phi = the DDIM step
constant_eps = constant_model


@pytest.mark.parametrize("skip_prk_steps", [False, True])
@pytest.mark.parametrize("spacing", ["linspace", "trailing"])
def test_pndm_transfers_between_visited_timesteps(spacing, skip_prk_steps):
    pndm = registry.schedulers.get("PNDMScheduler")(timestep_spacing=spacing,
                                                    skip_prk_steps=skip_prk_steps)
    ddim = registry.schedulers.get("DDIMScheduler")(timestep_spacing=spacing, clip_sample=False,
                                                    set_alpha_to_one=False)
    assert_parity(run_loop(pndm, 7, model=constant_eps), run_loop(ddim, 7, model=constant_eps))


def _v_model_for(scheduler, eps_model):
    """The v-prediction model equivalent to ``eps_model``: v = (eps - sqrt(1 - abar) x)/sqrt(abar)
    (from eps = sqrt(abar) v + sqrt(1 - abar) x, Salimans & Ho 2022)."""
    abar = scheduler.alphas_cumprod.double()

    def v_model(sample, t):
        a = abar[int(t)]
        return ((eps_model(sample, t).double() - (1 - a).sqrt() * sample.double())
                / a.sqrt()).float()

    return v_model


@pytest.mark.parametrize("skip_prk_steps", [False, True])
def test_pndm_v_prediction_converts_each_output_at_its_own_timestep(skip_prk_steps):
    cls = registry.schedulers.get("PNDMScheduler")
    v_run = cls(prediction_type="v_prediction", skip_prk_steps=skip_prk_steps)
    eps_run = diffusers.PNDMScheduler(skip_prk_steps=skip_prk_steps)  # the reference, with eps
    assert_parity(run_loop(v_run, 13, model=_v_model_for(v_run, fake_model)),
                  run_loop(eps_run, 13))


def ddim_inversion(abar, timesteps, x, model, initial=1.0):
    """Deterministic DDIM run forwards: level tau_{i-1} (clean for i = 0) -> tau_i."""
    x = x.double()
    for i, t in enumerate(timesteps):
        a_cur = abar[timesteps[i - 1]] if i > 0 else initial
        a_next = abar[t]
        eps = model(x.float(), torch.tensor(t)).double()
        x0 = (x - (1 - a_cur) ** 0.5 * eps) / a_cur**0.5
        x = a_next**0.5 * x0 + (1 - a_next) ** 0.5 * eps
    return x.float()


@pytest.mark.parametrize("n", [7, 13])
def test_ddim_inverse_trailing_starts_from_clean_data(n):
    ours = registry.schedulers.get("DDIMInverseScheduler")(timestep_spacing="trailing",
                                                          clip_sample=False)
    result = run_loop(ours, n)
    expected = ddim_inversion(_alphas_cumprod(), ours.timesteps.tolist(), _noise(0), fake_model)
    assert_parity(result, expected)


@pytest.mark.parametrize("spacing", ["leading", "trailing"])
def test_ddim_inversion_then_ddim_sampling_returns_the_input(spacing):
    # with a noise estimate independent of x, inversion and sampling are exact inverses
    inverse = registry.schedulers.get("DDIMInverseScheduler")(timestep_spacing=spacing,
                                                              clip_sample=False)
    ddim = registry.schedulers.get("DDIMScheduler")(timestep_spacing=spacing, clip_sample=False)
    x0 = _noise(3) * 0.5
    inverse.set_timesteps(9)
    ddim.set_timesteps(9)
    x = x0
    for t in inverse.timesteps:
        x = inverse.step(constant_eps(x, t), t, x).prev_sample
    for t in ddim.timesteps:
        x = ddim.step(constant_eps(x, t), t, x).prev_sample
    assert_parity(x, x0)


@pytest.mark.parametrize("skip_prk_steps,begin,ddim_begin", [(True, 1, 1), (False, 3, 1)])
def test_pndm_img2img_start_inside_a_step_restarts_at_the_next_step(skip_prk_steps, begin,
                                                                    ddim_begin):
    # begin lands on a call at the same timestep as the next step's start (the PLMS start's
    # second call; a Runge-Kutta step's last call): the run restarts there, which with a
    # noise estimate independent of x and t is DDIM from that timestep
    init = _noise(5).clamp(-1, 1)
    pndm = registry.schedulers.get("PNDMScheduler")(skip_prk_steps=skip_prk_steps)
    ddim = registry.schedulers.get("DDIMScheduler")(clip_sample=False, set_alpha_to_one=False)
    assert_parity(run_loop(pndm, 6, init_sample=init, begin_index=begin, model=constant_eps),
                  run_loop(ddim, 6, init_sample=init, begin_index=ddim_begin,
                           model=constant_eps))
