"""The conformance suite every registered scheduler runs: the public contract of a scheduler
(diffusers format), checked class by class over ``registry.schedulers``.

Classes whose contract legitimately differs are handled explicitly, each with its reason:
- score-SDE VE / VP sample with ``step_pred`` (VE also ``step_correct``), not ``step``, and take
  continuous times: the loop driver (conftest.run_loop) drives them like their papers' samplers;
  the VE corrector's step size is shared by the batch (batch-mean norms, as in the paper's code),
  so per-sample independence is checked with ``correct_steps=0``;
- flow matching noises with ``scale_noise`` for img2img; its ``add_noise`` is the same path at
  sigma = t / T (the reference class has no ``add_noise``: we compare with ``scale_noise``);
- the VP class has no ``add_noise`` in the reference: it is checked against the paper's
  perturbation kernel (Song et al. 2021, eq. 33);
- IPNDM has no ``add_noise`` in the reference either: it is checked against the v-diffusion
  process x_t = cos(pi t / 2) x_0 + sin(pi t / 2) eps it samples; it takes no option-valued
  fields; and its reference builds a 1000-step run in its constructor, ours has none until
  ``set_timesteps`` (so ``step`` before it raises, as for every other class).
"""

from __future__ import annotations

import inspect
import json
import math
import warnings

import pytest
import torch
from conftest import (
    assert_parity,
    constant_model,
    diffusers_scheduler_class,
    run_loop,
    run_parity,
)
from diffusion_kernel import registry
from diffusion_kernel.configuration import config_parameters
from diffusion_kernel.errors import DiffusionKernelError, SchedulerError
from diffusion_kernel.scheduling import SchedulerMixin

NAMES = registry.schedulers.names()
SDE = ("ScoreSdeVeScheduler", "ScoreSdeVpScheduler")
FLOW = ("FlowMatchEulerDiscreteScheduler",)
IPNDM = "IPNDMScheduler"
STEPS = 6
SHAPE = (2, 3, 8, 8)


def _class(name):
    return registry.schedulers.get(name)


def _make(name, **config):
    return _class(name).from_config(config)


def _sample_step(scheduler):
    """The method that takes a model output and a sample: ``step`` or the SDE ``step_pred``."""
    return scheduler.step_pred if type(scheduler).__name__ in SDE else scheduler.step


def _call_step(scheduler, model_output, t, sample):
    if type(scheduler).__name__ == "ScoreSdeVpScheduler":  # step_pred(score, x, t)
        return scheduler.step_pred(model_output, sample, t)
    return _sample_step(scheduler)(model_output, t, sample)


def test_every_scheduler_of_the_format_is_registered():
    assert len(NAMES) == 21, NAMES


# --------------------------------------------------------------------------- format and config
@pytest.mark.parametrize("name", NAMES)
def test_config_has_the_reference_fields_and_defaults(name):
    reference = dict(diffusers_scheduler_class(name)().config)
    ours = _make(name).config
    for key, value in reference.items():
        if key.startswith("_"):
            continue
        assert key in ours, f"{name} config lacks field {key!r}"
        mine = ours[key]
        if isinstance(value, float) or isinstance(mine, float):
            assert value is not None and mine is not None and math.isclose(mine, value), key
        else:
            assert json.loads(json.dumps(mine)) == json.loads(json.dumps(value)), key


@pytest.mark.parametrize("name", NAMES)
def test_order_and_compatibles_follow_the_format(name):
    ours, reference = _make(name), diffusers_scheduler_class(name)()
    assert ours.order == getattr(reference, "order", 1)  # the reference's unCLIP has none: 1
    expected = {n for n in getattr(reference, "_compatibles", ()) if n in NAMES}
    assert expected <= set(ours._compatibles)
    assert type(ours) in ours.compatibles


@pytest.mark.parametrize("name", NAMES)
def test_save_and_load_round_trip(name, tmp_path):
    original = _make(name)
    original.save_pretrained(tmp_path)
    for loaded in (_class(name).from_pretrained(tmp_path),
                   SchedulerMixin.from_pretrained(tmp_path)):
        assert type(loaded) is type(original)
        assert loaded.config == original.config
        assert torch.equal(run_loop(loaded, STEPS), run_loop(original, STEPS))


@pytest.mark.parametrize("name", NAMES)
def test_saved_config_loads_in_the_reference_and_back(name, tmp_path):
    _make(name).save_pretrained(tmp_path / "ours")
    reference = diffusers_scheduler_class(name).from_pretrained(tmp_path / "ours")
    reference.save_pretrained(tmp_path / "theirs")
    assert _class(name).from_pretrained(tmp_path / "theirs").config == _make(name).config


@pytest.mark.parametrize("name", NAMES)
def test_swap_via_from_config_among_compatibles(name):
    original = _make(name)
    for other in original.compatibles:
        swapped = other.from_config(original.config)
        assert torch.isfinite(run_loop(swapped, STEPS)).all(), other.__name__
        back = type(original).from_config(swapped.config)
        # every field of the original survives the round trip (the other class's own fields
        # ride along as hidden keys)
        for key, value in original.config.items():
            assert back.config[key] == value, f"swap {name} -> {other.__name__} -> back: {key}"


# Options some scheduler takes, each set to a value that changes that scheduler's samples.
FOREIGN_OPTIONS = {"rescale_betas_zero_snr": True, "thresholding": True, "sample_max_value": 0.5,
                   "clip_sample": True, "clip_sample_range": 0.1, "timestep_spacing": "trailing",
                   "steps_offset": 1, "prediction_type": "v_prediction", "use_karras_sigmas": True,
                   "use_exponential_sigmas": True, "solver_order": 3, "lower_order_final": False,
                   "final_sigmas_type": "zero", "set_alpha_to_one": True, "skip_prk_steps": True,
                   "eta": 1.0}


@pytest.mark.parametrize("name", NAMES)
def test_options_the_class_does_not_take_change_nothing(name):
    """A config swapped in from another scheduler keeps that scheduler's keys (saved again), but
    they are not this class's options: its samples are those of its defaults (e.g. a DDIM
    config's rescale_betas_zero_snr=True on PNDM, or thresholding=True on DDIM inversion). The
    keys are logged (``logging``), never raised as a Python warning: a swap is quiet."""
    foreign = {k: v for k, v in FOREIGN_OPTIONS.items() if k not in config_parameters(_class(name))}
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        swapped = _class(name).from_config(foreign)
    assert set(swapped.config) >= set(foreign)
    assert torch.equal(run_loop(swapped, STEPS), run_loop(_make(name), STEPS))


@pytest.mark.parametrize("name", NAMES)
def test_unknown_option_value_raises_config_error_listing_valid_values(name):
    options = {"prediction_type": "eps", "timestep_spacing": "uniform",
               "beta_schedule": "quadratic", "time_shift_type": "cubic"}
    params = inspect.signature(_class(name).__init__).parameters
    checked = [(k, v) for k, v in options.items() if k in params]
    for key, bad in checked:
        with pytest.raises(DiffusionKernelError, match=f"(?s){bad}.*valid"):
            _make(name, **{key: bad})
    if not checked:  # the SDE classes and IPNDM have no option-valued fields
        assert name in (*SDE, IPNDM)


# ------------------------------------------------------------------------------------- noising
@pytest.mark.parametrize("name", NAMES)
def test_add_noise_at_every_timestep_matches_the_reference(name):
    ours, reference = _make(name), diffusers_scheduler_class(name)()
    x0 = torch.randn(SHAPE, generator=torch.Generator().manual_seed(1))
    noise = torch.randn(SHAPE, generator=torch.Generator().manual_seed(2))
    ours.set_timesteps(STEPS)
    reference.set_timesteps(STEPS)
    if name == "ScoreSdeVeScheduler":  # timesteps of add_noise index the discrete levels
        reference.set_sigmas(STEPS)
        points = [torch.tensor([i]) for i in range(STEPS)]
    else:
        # every step's start (order-2 runs interleave their second evaluations in timesteps:
        # img2img starts at timesteps[k * order])
        points = [t.reshape(1) for t in ours.timesteps[:: ours.order]]
    for t in points:
        mine = ours.add_noise(x0, noise, t)
        if name == "ScoreSdeVpScheduler":  # no reference add_noise: the paper's kernel (eq. 33)
            log_m = -0.25 * t**2 * (20 - 0.1) - 0.5 * t * 0.1
            expected = log_m.exp() * x0 + (1 - (2 * log_m).exp()).sqrt() * noise
        elif name in FLOW:  # no reference add_noise: its scale_noise is the same path
            expected = reference.scale_noise(x0, t, noise)
        elif name == IPNDM:  # no reference add_noise: the v-diffusion process it samples
            expected = torch.cos(t * math.pi / 2) * x0 + torch.sin(t * math.pi / 2) * noise
        elif name == "DDIMInverseScheduler":  # no reference add_noise: DDIM's, same chain
            expected = diffusers_scheduler_class("DDIMScheduler")().add_noise(x0, noise, t)
        else:
            expected = reference.add_noise(x0, noise, t)
        assert_parity(mine, expected)


@pytest.mark.parametrize("name", NAMES)
def test_add_noise_takes_one_timestep_per_sample(name):
    scheduler = _make(name)
    scheduler.set_timesteps(STEPS)
    x0, noise = torch.randn(SHAPE), torch.randn(SHAPE)
    ts = (torch.tensor([0, STEPS - 1]) if name == "ScoreSdeVeScheduler"
          else scheduler.timesteps[[0, STEPS - 1]])
    together = scheduler.add_noise(x0, noise, ts)
    apart = torch.cat([scheduler.add_noise(x0[i:i + 1], noise[i:i + 1], ts[i:i + 1])
                       for i in range(2)])
    assert_parity(together, apart)


# ------------------------------------------------------------------------------------ the run
@pytest.mark.parametrize("name", NAMES)
def test_init_noise_sigma_and_timesteps_after_set_timesteps(name):
    scheduler = _make(name)
    scheduler.set_timesteps(STEPS)
    assert float(scheduler.init_noise_sigma) > 0
    assert len(scheduler.timesteps) >= STEPS
    assert scheduler.timesteps.ndim == 1


@pytest.mark.parametrize("name", NAMES)
def test_set_timesteps_again_starts_a_clean_run(name):
    scheduler = _make(name)
    first = run_loop(scheduler, STEPS)
    scheduler.set_timesteps(3)  # an abandoned run must leave nothing behind
    if name not in SDE:
        t = scheduler.timesteps[0]
        _sample_step(scheduler)(torch.randn(SHAPE), t, torch.randn(SHAPE))
    assert torch.equal(run_loop(scheduler, STEPS), first)
    assert torch.equal(run_loop(_make(name), STEPS), first)


@pytest.mark.parametrize("prediction_type", ["epsilon", "sample", "v_prediction"])
@pytest.mark.parametrize("name", NAMES)
def test_steps_never_write_into_the_model_output_or_the_sample(name, prediction_type):
    # Steps update fresh tensors in place to save allocations; whatever they were given (the
    # model's output, the sample it saw) must come back untouched, through a whole stochastic run.
    options = config_parameters(_class(name))
    if "prediction_type" not in options and prediction_type != "epsilon":
        pytest.skip("the class takes no prediction_type")
    config = {"prediction_type": prediction_type} if "prediction_type" in options else {}
    if prediction_type not in getattr(_class(name), "prediction_types", [prediction_type]):
        pytest.skip(f"the class takes no prediction_type={prediction_type!r}")
    if "clip_sample" in options:
        config["clip_sample"] = True
    seen = []

    def recording_model(x, t):
        out = torch.sin(x + 0.1) * 1.5  # beyond the clip range, so clipping must copy
        seen.extend([(x, x.clone()), (out, out.clone())])
        return out

    run_loop(_make(name, **config), STEPS, model=recording_model, generator_seeds=[1, 2])
    assert len(seen) >= 2 * STEPS
    for given, before in seen:  # this fake model drives some runs to inf or nan: equal too
        torch.testing.assert_close(given, before, rtol=0, atol=0, equal_nan=True)


@pytest.mark.parametrize("name", NAMES)
def test_batch_of_four_with_seeds_equals_four_runs_of_one(name):
    # the VE corrector's step size is a batch mean (see module docstring): correct_steps=0
    config = {"correct_steps": 0} if name == "ScoreSdeVeScheduler" else {}
    shape = (4, 3, 8, 8)
    seeds = [11, 22, 33, 44]
    batch = run_loop(_make(name, **config), STEPS, shape=shape, generator_seeds=seeds)
    single = torch.cat([run_loop(_make(name, **config), STEPS, shape=(1, *shape[1:]),
                                 generator_seeds=[s]) for s in seeds])
    assert_parity(batch, single, rtol=1e-6)


@pytest.mark.parametrize("name", NAMES)
def test_img2img_from_a_begin_index(name):
    scheduler = _make(name)
    scheduler.set_timesteps(STEPS)
    if name in SDE or name == "DDIMInverseScheduler":
        # SDE: step_pred takes its time explicitly; inversion runs clean -> noise, so there is
        # no noised input to start from: set_begin_index only records and validates
        scheduler.set_begin_index(2)
        assert scheduler.begin_index == 2
        with pytest.raises(SchedulerError):
            scheduler.set_begin_index(len(scheduler.timesteps))
        return
    begin = 2 * scheduler.order
    init = torch.randn(SHAPE, generator=torch.Generator().manual_seed(5)).clamp(-1, 1)
    if name == "PNDMScheduler":
        # The reference ignores the begin index (its step counter starts a PRK warm-up mid-run).
        # Ours restarts the multistep history there. With a noise estimate that depends on
        # neither x nor t every multistep combination is that estimate and each PNDM step is
        # the DDIM step (the transfer function, eq. 11), so img2img from t_1 must equal DDIM's.
        pndm = _make(name, skip_prk_steps=True)  # call 2 is the first PLMS call, at t_1
        ddim = _make("DDIMScheduler", clip_sample=False, set_alpha_to_one=False)
        assert_parity(run_loop(pndm, STEPS, init_sample=init, begin_index=2, model=constant_model),
                      run_loop(ddim, STEPS, init_sample=init, begin_index=1, model=constant_model))
        with pytest.raises(SchedulerError, match="Valid indices"):
            prk = _make(name)
            prk.set_timesteps(STEPS)
            prk.set_begin_index(1)  # inside the first Runge-Kutta step
        return
    ours = run_loop(scheduler, STEPS, init_sample=init, begin_index=begin)
    assert torch.isfinite(ours).all()
    reference = diffusers_scheduler_class(name)()
    if name == IPNDM:  # the reference has no add_noise: lend it ours (checked above)
        reference.add_noise = _make(name).add_noise
    assert_parity(ours, run_loop(reference, STEPS, init_sample=init, begin_index=begin))


def _takes(cls, argument):
    return argument in inspect.signature(cls.set_timesteps).parameters


@pytest.mark.parametrize("name", NAMES)
def test_custom_timesteps_where_supported(name):
    """Where the reference takes ``timesteps=``, the same custom run agrees with it; where only
    ours does, the spaced run's timesteps given explicitly reproduce it."""
    reference_cls = diffusers_scheduler_class(name)
    if _takes(reference_cls, "timesteps"):
        reference = reference_cls()
        reference.set_timesteps(STEPS)
        timesteps = reference.timesteps[:: reference.order].tolist()[:-1]  # a custom subset
        kwargs = {"set_timesteps_kwargs": {"timesteps": timesteps}}
        assert_parity(*run_parity(name, {}, None, **kwargs))
    elif _takes(_class(name), "timesteps"):
        scheduler = _make(name)
        scheduler.set_timesteps(STEPS)
        timesteps = scheduler.timesteps[:: scheduler.order].tolist()
        custom = run_loop(_make(name), None, set_timesteps_kwargs={"timesteps": timesteps})
        assert_parity(custom, run_loop(_make(name), STEPS))
    else:
        pytest.skip(f"{name}.set_timesteps takes no custom timesteps (nor does the reference's)")


@pytest.mark.parametrize("name", NAMES)
def test_custom_sigmas_where_the_reference_takes_them(name):
    reference_cls = diffusers_scheduler_class(name)
    if not _takes(reference_cls, "sigmas"):
        pytest.skip(f"the reference {name}.set_timesteps takes no custom sigmas")
    # UniPC takes custom sigmas only for flow models, in the reference too
    config = {"use_flow_sigmas": True} if "use_flow_sigmas" in reference_cls().config else {}
    reference = reference_cls(**config)
    reference.set_timesteps(STEPS)
    sigmas = reference.sigmas[: STEPS - 1].numpy()  # a custom, shorter schedule
    if name == "EDMEulerScheduler":  # its sigmas= are ramp positions (0: sigma_max, 1: min)
        sigmas = torch.linspace(0.0, 1.0, STEPS - 1) ** 1.5  # (a tensor, as the reference needs)
    assert_parity(*run_parity(name, config, None, set_timesteps_kwargs={"sigmas": sigmas}))


# ------------------------------------------------------------------------------------- errors
# Schedulers that hold a run from the start, as in the diffusers format (the training timesteps,
# or set_timesteps(num_train_timesteps)); the others refuse to step before set_timesteps.
HOLD_A_RUN = ("EulerDiscreteScheduler", "EulerAncestralDiscreteScheduler", "EDMEulerScheduler",
              "HeunDiscreteScheduler", "KDPM2DiscreteScheduler", "KDPM2AncestralDiscreteScheduler",
              "LMSDiscreteScheduler", "DDPMScheduler", "ScoreSdeVeScheduler",
              "FlowMatchEulerDiscreteScheduler")


@pytest.mark.parametrize("name", [n for n in NAMES if n not in HOLD_A_RUN])
def test_step_before_set_timesteps_raises(name):
    if name == "UnCLIPScheduler":
        pytest.skip("its step names both of its timesteps (prev_timestep, default t - 1), so it "
                    "needs no run, as in the reference")
    scheduler = _make(name)
    x = torch.randn(SHAPE)
    with pytest.raises(SchedulerError, match="set_timesteps"):
        _call_step(scheduler, x, torch.tensor(1.0) if name in SDE else 999, x)


@pytest.mark.parametrize("bad", [0, -3, "too_many", 2.5])
@pytest.mark.parametrize("name", NAMES)
def test_bad_num_inference_steps_raises(name, bad):
    scheduler = _make(name)
    if bad == "too_many":  # more steps than the model was trained with
        bad = scheduler.config.num_train_timesteps + 1
    with pytest.raises(DiffusionKernelError, match="num_inference_steps"):
        scheduler.set_timesteps(bad)


@pytest.mark.parametrize("name", NAMES)
def test_wrong_shape_model_output_raises(name):
    scheduler = _make(name)
    scheduler.set_timesteps(STEPS)
    sample = torch.randn(SHAPE)
    wrong = torch.randn(2, 3, 8, 4)
    with pytest.raises(SchedulerError, match="shape"):
        _call_step(scheduler, wrong, scheduler.timesteps[0], sample)
