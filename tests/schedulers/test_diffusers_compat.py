"""What code written for diffusers reads and calls on a scheduler behaves as it does there (the
reference is diffusers 0.42.1): the run a new scheduler holds, stepping before set_timesteps,
integer timesteps, init_noise_sigma's type, previous_timestep, PNDM's step_prk / step_plms, the
score-SDE VE run after set_sigmas, DDIM inversion's extra keyword arguments, dict-like step
outputs, diffusers classes built from our configs, and quiet sampler swaps."""

from __future__ import annotations

import copy
import functools
import logging
import warnings

import pytest
import torch
from conftest import diffusers_scheduler_class, fake_model
from diffusion_kernel import registry
from diffusion_kernel.errors import SchedulerError

SIGMA_SCHEDULERS = ("EulerDiscreteScheduler", "EulerAncestralDiscreteScheduler",
                    "EDMEulerScheduler", "HeunDiscreteScheduler", "KDPM2DiscreteScheduler",
                    "KDPM2AncestralDiscreteScheduler", "LMSDiscreteScheduler")
IN_DIFFUSERS = [n for n in registry.schedulers.names() if n != "ScoreSdeVpScheduler"]
SHAPE = (2, 3, 4, 4)


def _pair(name, **config):
    ours = registry.schedulers.get(name).from_config(config)
    return ours, copy.deepcopy(_reference(name, tuple(sorted(config.items()))))


@functools.cache
def _reference(name, config):
    # built once per config: the reference's DPM2 constructors take seconds (an O(T^2) lookup)
    return diffusers_scheduler_class(name).from_config(dict(config))


def _close(a, b, rtol=1e-5):
    """Equal shapes and max|a - b| <= rtol * max(max|b|, 1) (float32 round-off)."""
    a, b = torch.as_tensor(a).double(), torch.as_tensor(b).double()
    return a.shape == b.shape and bool((a - b).abs().max() <= rtol * max(b.abs().max(), 1))


def _noise(seed=0):
    return torch.randn(SHAPE, generator=torch.Generator().manual_seed(seed))


# ------------------------------------------------------------------ the run a new scheduler holds

CONSTRUCTOR_CASES = [(name, {}) for name in SIGMA_SCHEDULERS] + [
    ("EulerDiscreteScheduler", dict(prediction_type="v_prediction", timestep_type="continuous")),
    ("EulerDiscreteScheduler", dict(timestep_spacing="leading", beta_schedule="scaled_linear")),
    ("HeunDiscreteScheduler", dict(use_karras_sigmas=True)),
    ("KDPM2DiscreteScheduler", dict(timestep_spacing="trailing", num_train_timesteps=200)),
    ("KDPM2AncestralDiscreteScheduler", dict(use_karras_sigmas=True, num_train_timesteps=100)),
    ("LMSDiscreteScheduler", dict(use_exponential_sigmas=True, num_train_timesteps=300)),
    ("EDMEulerScheduler", dict(sigma_schedule="exponential", final_sigmas_type="sigma_min")),
    ("FlowMatchEulerDiscreteScheduler", dict(shift=3.0)),
] + [(name, dict(beta_schedule="scaled_linear")) for name in (  # listed; step needs a run
    "DPMSolverMultistepScheduler", "DPMSolverSinglestepScheduler", "UniPCMultistepScheduler",
    "DEISMultistepScheduler")]


@pytest.mark.parametrize("name, config", CONSTRUCTOR_CASES)
def test_a_new_scheduler_holds_the_references_run(name, config):
    ours, theirs = _pair(name, **config)
    assert _close(ours.timesteps, theirs.timesteps)
    assert _close(ours.sigmas, theirs.sigmas)
    assert ours.num_inference_steps == getattr(theirs, "num_inference_steps", None)
    if hasattr(theirs, "init_noise_sigma"):  # flow matching has none there
        assert type(ours.init_noise_sigma) is type(theirs.init_noise_sigma)
        assert _close(ours.init_noise_sigma, theirs.init_noise_sigma)


@pytest.mark.parametrize("name", ["EulerDiscreteScheduler", "EulerAncestralDiscreteScheduler",
                                  "HeunDiscreteScheduler", "KDPM2DiscreteScheduler",
                                  "KDPM2AncestralDiscreteScheduler", "LMSDiscreteScheduler",
                                  "EDMEulerScheduler", "DDPMScheduler",
                                  "FlowMatchEulerDiscreteScheduler"])
def test_steps_before_set_timesteps_follow_the_reference(name):
    """The first calls of a loop over the timesteps a new scheduler holds (the training chain
    for DDPM) give the reference's samples."""
    results = []
    for scheduler in _pair(name):
        generator = torch.Generator().manual_seed(1)
        kwargs = {"generator": generator} if name not in (
            "HeunDiscreteScheduler", "KDPM2DiscreteScheduler", "LMSDiscreteScheduler") else {}
        x = _noise() * getattr(scheduler, "init_noise_sigma", 1.0)
        scale = getattr(scheduler, "scale_model_input", lambda x, t: x)
        for t in scheduler.timesteps[:5]:
            x = scheduler.step(fake_model(scale(x, t), t), t, x, **kwargs).prev_sample
        results.append(x)
    assert _close(*results)


def test_ddpm_steps_anywhere_on_the_training_chain_before_set_timesteps():
    ours, theirs = _pair("DDPMScheduler", variance_type="fixed_large")
    x = _noise()
    for t in (500, 37, 0):  # each lands on t - 1, as the training chain does
        out = [s.step(fake_model(x, t), t, x, generator=torch.Generator().manual_seed(t))
               for s in (ours, theirs)]
        assert _close(out[0].prev_sample, out[1].prev_sample)
        assert _close(out[0].pred_original_sample, out[1].pred_original_sample)


def test_score_sde_ve_holds_the_references_run_and_steps_on_it():
    ours, theirs = _pair("ScoreSdeVeScheduler")
    for attribute in ("timesteps", "sigmas", "discrete_sigmas"):
        assert _close(getattr(ours, attribute), getattr(theirs, attribute))
    x = _noise() * 30
    t = ours.timesteps[1500]
    got, expected = (s.step_pred(-fake_model(x, t), t, x, generator=torch.Generator()
                                 .manual_seed(2)) for s in (ours, theirs))
    assert _close(got.prev_sample, expected.prev_sample)
    assert _close(got.prev_sample_mean, expected.prev_sample_mean)


@pytest.mark.parametrize("calls", [
    [("set_timesteps", 10), ("set_sigmas", 10, 0.1, 50.0)],  # the reference pipeline's order
    [("set_timesteps", 10), ("set_sigmas", 10, 0.1, 50.0), ("set_timesteps", 10)],
])
def test_score_sde_ve_sigmas_after_set_sigmas_then_set_timesteps_match(calls):
    ours, theirs = _pair("ScoreSdeVeScheduler")
    for scheduler in (ours, theirs):
        for method, *args in calls:
            getattr(scheduler, method)(*args)
    for attribute in ("timesteps", "sigmas", "discrete_sigmas"):
        assert _close(getattr(ours, attribute), getattr(theirs, attribute))


def test_score_sde_ve_sigmas_always_belong_to_the_timesteps():
    """Where the reference keeps sigmas of other timesteps (set_sigmas(10) on a new scheduler
    computes them at its 2000 starting timesteps; set_timesteps(7) keeps them), ours are
    sigma(t) of the current timesteps, with the set_sigmas bounds
    (docs/scheduler-differences.md)."""
    ours, theirs = _pair("ScoreSdeVeScheduler")
    for scheduler in (ours, theirs):
        scheduler.set_sigmas(10, 0.1, 50.0)  # the reference: sigmas of its 2000 old timesteps
        scheduler.set_timesteps(7)
    assert len(theirs.timesteps) == 7 and len(theirs.sigmas) == 2000
    assert len(ours.sigmas) == len(ours.discrete_sigmas) == 7
    assert _close(ours.sigmas, 0.1 * (50.0 / 0.1) ** ours.timesteps)


# ---------------------------------------------------------------------------- integer timesteps

@pytest.mark.parametrize("name", ["HeunDiscreteScheduler", "KDPM2DiscreteScheduler",
                                  "KDPM2AncestralDiscreteScheduler", "LMSDiscreteScheduler"])
def test_integer_timesteps_are_taken_where_the_reference_takes_them(name):
    config = dict(timestep_spacing="leading", num_train_timesteps=200)  # integer timesteps
    ours, theirs = _pair(name, **config)
    ours_with_floats = registry.schedulers.get(name)(**config)
    results = []
    for scheduler, as_int in [(ours, True), (theirs, True), (ours_with_floats, False)]:
        scheduler.set_timesteps(6)
        kwargs = {"generator": torch.Generator().manual_seed(4)} if "Ancestral" in name else {}
        x = _noise() * scheduler.init_noise_sigma
        for t in scheduler.timesteps:  # DPM2's midpoint timesteps are fractional
            t = int(t) if as_int and float(t).is_integer() else t
            x = scheduler.step(fake_model(scheduler.scale_model_input(x, t), t), t, x,
                               **kwargs).prev_sample
        results.append(x)
    assert _close(results[0], results[1]) and _close(results[0], results[2])


@pytest.mark.parametrize("name", ["EulerDiscreteScheduler", "EulerAncestralDiscreteScheduler",
                                  "EDMEulerScheduler"])
def test_euler_steps_refuse_an_integer_timestep_as_the_reference_does(name):
    ours, theirs = _pair(name)
    for scheduler in (ours, theirs):
        scheduler.set_timesteps(4)
    x = _noise()
    with pytest.raises(ValueError, match="Passing integer indices"):
        theirs.step(x, 0, x)
    with pytest.raises(SchedulerError, match="integer timestep 0.*not the loop index"):
        ours.step(x, 0, x)


# ------------------------------------------------------------------ attributes code reads

@pytest.mark.parametrize("name", IN_DIFFUSERS)
def test_init_noise_sigma_has_the_references_type(name):
    ours, theirs = _pair(name)
    if not hasattr(theirs, "init_noise_sigma"):
        pytest.skip("the reference has no init_noise_sigma here (docs/scheduler-differences.md)")
    assert type(ours.init_noise_sigma) is type(theirs.init_noise_sigma)
    for scheduler in (ours, theirs):
        scheduler.set_timesteps(10)
    assert type(ours.init_noise_sigma) is type(theirs.init_noise_sigma)
    assert _close(ours.init_noise_sigma, theirs.init_noise_sigma)


@pytest.mark.parametrize("name", ["DDPMScheduler", "LCMScheduler"])
def test_previous_timestep_is_the_references(name):
    ours, theirs = _pair(name)
    assert ours.previous_timestep(500) == theirs.previous_timestep(500) == 499  # no run yet
    for scheduler in (ours, theirs):
        scheduler.set_timesteps(4)
    for t in ours.timesteps:
        got, expected = ours.previous_timestep(t), theirs.previous_timestep(t)
        assert isinstance(got, torch.Tensor) and isinstance(expected, torch.Tensor)
        assert int(got) == int(expected)
    assert int(ours.previous_timestep(ours.timesteps[-1])) == -1


def test_pndm_lists_its_prk_and_plms_timesteps_and_steps_through_them():
    for skip_prk_steps in (False, True):
        ours, theirs = _pair("PNDMScheduler", skip_prk_steps=skip_prk_steps)
        assert ours.prk_timesteps is None and ours.plms_timesteps is None
        results = []
        for scheduler in (ours, theirs):
            scheduler.set_timesteps(10)  # an even step ratio: see scheduler-differences.md
            x = _noise()
            prk = len(scheduler.prk_timesteps)
            for i, t in enumerate(scheduler.timesteps):
                step = scheduler.step_prk if i < prk else scheduler.step_plms
                x = step(fake_model(x, t), t, x).prev_sample
            results.append(x)
        assert ours.prk_timesteps.tolist() == theirs.prk_timesteps.tolist()
        assert ours.plms_timesteps.tolist() == theirs.plms_timesteps.tolist()
        assert _close(*results)
    ours.set_timesteps(10)
    with pytest.raises(SchedulerError, match="linear multistep call; use step_plms"):
        ours.step_prk(x, ours.timesteps[0], x)


def test_ddim_inverse_takes_the_references_extra_keyword_arguments():
    """Unknown keywords are ignored (kept in the config); set_alpha_to_zero, the old name of
    set_alpha_to_one, sets it, in the constructor and from a config."""
    from diffusers import DDIMInverseScheduler as Reference

    ours_cls = registry.schedulers.get("DDIMInverseScheduler")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # the reference's deprecation notice
        pairs = [(ours_cls(set_alpha_to_zero=False, unused_option=3),
                  Reference(set_alpha_to_zero=False, unused_option=3)),
                 (ours_cls.from_config({"set_alpha_to_zero": False}),
                  Reference.from_config({"set_alpha_to_zero": False}))]
    for ours, theirs in pairs:
        assert ours.config.set_alpha_to_one is False
        results = []
        for scheduler in (ours, theirs):
            scheduler.set_timesteps(5)
            x = _noise()
            for t in scheduler.timesteps:
                x = scheduler.step(fake_model(x, t), t, x).prev_sample
            results.append(x)
        assert _close(*results)
    assert pairs[0][0].config.unused_option == 3


# ---------------------------------------------------------------------------------- step outputs

@pytest.mark.parametrize("name", IN_DIFFUSERS)
def test_step_outputs_are_dicts_with_the_references_keys(name):
    outputs = []
    for scheduler in _pair(name):
        scheduler.set_timesteps(4)
        t, x = scheduler.timesteps[0], _noise()
        step = scheduler.step_pred if name == "ScoreSdeVeScheduler" else scheduler.step
        outputs.append(step(fake_model(x, t), t, x))
    ours, theirs = outputs
    # the reference's keys, in its order; some of ours add pred_original_sample after them
    assert isinstance(ours, dict) and list(ours)[:len(theirs)] == list(theirs.keys())
    assert set(ours) - set(theirs) <= {"pred_original_sample"}
    assert ours["prev_sample"] is ours.prev_sample is ours[0]
    assert list(ours.values()) == list(ours.to_tuple()) and len(ours) == len(ours.to_tuple())
    assert dict(ours.items()).keys() == set(ours.keys())


# ------------------------------------------------------------------------- configs and swaps

@pytest.mark.parametrize("name", IN_DIFFUSERS)
def test_the_reference_builds_its_class_from_our_config(name):
    ours = registry.schedulers.get(name)(num_train_timesteps=100)
    theirs = diffusers_scheduler_class(name).from_config(ours.config)
    assert theirs.config.num_train_timesteps == 100
    shared = set(ours.config) & set(theirs.config)
    assert {k: tuple(v) if isinstance(v, list) else v for k, v in theirs.config.items()
            if k in shared} == {k: ours.config[k] for k in shared}


def test_a_config_moves_to_a_scheduler_only_the_reference_has():
    from diffusers import EDMDPMSolverMultistepScheduler

    ours = registry.schedulers.get("DDIMScheduler")(num_train_timesteps=400)
    other = EDMDPMSolverMultistepScheduler.from_config(ours.config)
    assert other.config.num_train_timesteps == 400


COMPATIBLE = ("DDIMScheduler", "DDPMScheduler", "PNDMScheduler", "LMSDiscreteScheduler",
              "EulerDiscreteScheduler", "HeunDiscreteScheduler", "DPMSolverMultistepScheduler",
              "UniPCMultistepScheduler", "KDPM2AncestralDiscreteScheduler")


@pytest.mark.parametrize("source", COMPATIBLE)
def test_swapping_samplers_is_quiet(source, caplog):
    """``X.from_config(pipe.scheduler.config)``, from our config, a plain dict copy of it or a
    diffusers config: no Python warning, nothing logged above info level."""
    ours = registry.schedulers.get(source)()
    configs = [ours.config, dict(ours.config), _reference(source, ()).config]
    with warnings.catch_warnings(), caplog.at_level(logging.INFO):
        warnings.simplefilter("error")
        for target in COMPATIBLE:
            for config in configs:
                registry.schedulers.get(target).from_config(config)
    assert not [r for r in caplog.records if r.levelno > logging.INFO]
    if source == "DPMSolverMultistepScheduler":  # its solver keys are kept, and said so
        assert "does not take config keys" in caplog.text and "solver_order" in caplog.text


def test_register_to_config_changes_what_set_timesteps_reads_as_in_the_reference():
    """The classic diffusers fix-up of an old config: a new frozen config, not a mutation."""
    ours, theirs = _pair("DDIMScheduler")
    before = ours.config
    for scheduler in (ours, theirs):
        scheduler.register_to_config(steps_offset=1)
        scheduler.set_timesteps(5)
    assert ours.timesteps.tolist() == theirs.timesteps.tolist() == [801, 601, 401, 201, 1]
    assert before.steps_offset == 0 and ours.config.steps_offset == 1
    assert ours.config is not before


def test_pndm_runge_kutta_midpoint_is_the_timestep_the_model_is_called_at():
    """With an odd step ratio (8 steps of 1000: 125) the first PRK stage moves x_875 to the
    midpoint level where the model is called next, 812, by the transfer of Liu et al. 2022,
    eq. 11; the reference moves it to 813 (docs/scheduler-differences.md)."""
    ours, theirs = _pair("PNDMScheduler")
    abar = ours.alphas_cumprod.double()

    def phi(x, e, t, t_next):  # eq. 11
        a, b = abar[t], abar[t_next]
        return ((b / a) ** 0.5 * x - (b - a) * e / (a * (1 - b) ** 0.5 + (a * (1 - a) * b) ** 0.5))

    x = _noise().double()
    e = fake_model(x, 875)
    for scheduler in (ours, theirs):
        scheduler.set_timesteps(8)
    assert ours.timesteps[:2].tolist() == theirs.timesteps[:2].tolist() == [875, 812]
    got = ours.step(e.float(), 875, x.float()).prev_sample
    expected = theirs.step(e.float(), 875, x.float()).prev_sample
    assert _close(got, phi(x, e, 875, 812)) and _close(expected, phi(x, e, 875, 813))
    assert not _close(got, expected)
