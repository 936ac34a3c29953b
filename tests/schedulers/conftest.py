"""Parity harness for scheduler tests: run the same sampling loop on our scheduler and on the
diffusers class of the same name (the reference oracle, imported only here, in tests).

Interface (stable; every scheduler test file may use it):

``fake_model(sample, t) -> Tensor``
    A deterministic, nonlinear stand-in for a denoiser: a fixed function of the sample and the
    timestep, same shape and dtype as ``sample``. Each sample of a batch is processed on its own
    (so batching never mixes samples). ``learned_variance_model`` returns twice the channels
    (prediction, variance values in (0.05, 0.55): a valid variance for DDPM's ``learned`` and an
    interpolation value for ``learned_range``).

``constant_model(sample, t) -> Tensor``
    A noise estimate that depends on neither the sample nor t (a fixed ramp): every multistep
    combination of it is itself, which makes multistep methods comparable with one-step ones.

``run_loop(scheduler, num_inference_steps, *, shape=(2, 3, 8, 8), seed=0, generator_seeds=None,
           set_timesteps_kwargs=None, step_kwargs=None, model=fake_model, init_sample=None,
           begin_index=None) -> Tensor``
    Drives one sampling run and returns the final sample:
    ``set_timesteps`` (``num_inference_steps=None`` omits it, for custom ``timesteps``/``sigmas``
    passed in ``set_timesteps_kwargs``), initial noise times ``init_noise_sigma``, then for every
    timestep ``scale_model_input`` -> ``model`` -> ``step(...)``, with ``generator=`` only when
    the class's ``step`` takes one (deterministic solvers' steps do not).
    Randomness: with ``generator_seeds=None`` the initial noise comes from a generator seeded
    ``seed`` and the step noise from one seeded ``seed + 1``; with ``generator_seeds=[s1, ...]``
    (one per sample) sample i's initial noise and step noise both come from a generator seeded
    ``s_i`` (so a batch with seeds s1..s4 must equal four batch-1 runs).
    img2img: with ``init_sample`` and ``begin_index``, the run calls ``set_begin_index``, noises
    ``init_sample`` to ``timesteps[begin_index]`` with ``add_noise`` (``scale_noise`` for flow
    matching) and loops over ``timesteps[begin_index:]``.
    Classes whose loop differs are driven the way their reference pipeline drives them:
    score-SDE VE (``step_correct`` x ``correct_steps`` then ``step_pred``; the score fed to them
    is ``-model(x / sigma, sigma) / sigma``, a noise prediction turned into a score) and
    score-SDE VP (``step_pred(model(x, 1000 t), x, t)``, t the continuous time in (0, 1]).

``run_parity(name, config=None, num_inference_steps=10, **run_loop_kwargs) -> (ours, theirs)``
    Builds our class ``registry.schedulers.get(name)`` and ``diffusers``' class of the same name
    from the same config dict, runs ``run_loop`` on both with identical seeds and returns both
    final samples.

``assert_parity(ours, theirs, rtol=1e-5)``
    Asserts ``max|ours - theirs| <= rtol * max(max|theirs|, 1)`` (relative to the output's scale,
    float32), with a message giving the measured error.

``diffusers_scheduler_class(name)``
    The reference class for a scheduler name (also the deprecated ones, e.g. ScoreSdeVpScheduler).
"""

from __future__ import annotations

import inspect
import math

import pytest
import torch
from diffusion_kernel import registry

# ------------------------------------------------------------------------------------ models


def _timestep_feature(t, sample: torch.Tensor) -> torch.Tensor:
    t = torch.as_tensor(t, dtype=torch.float64).to(torch.float32).flatten()
    if t.numel() == 1:
        t = t.expand(sample.shape[0])
    return t.reshape(-1, *([1] * (sample.ndim - 1)))


def fake_model(sample: torch.Tensor, t) -> torch.Tensor:
    """A fixed nonlinear function of (sample, t), sample-wise. Like a real noise predictor it is
    close to its (unit-variance) input, so sampling runs stay in a realistic range."""
    tf = _timestep_feature(t, sample).to(sample.dtype)
    gate = 0.6 + 0.4 * torch.cos(0.0123 * tf)
    shifted = torch.roll(sample, shifts=1, dims=-1)  # mixes pixels within one sample only
    return (0.8 * sample + 0.2 * gate * torch.tanh(2.0 * sample + 0.2)
            + 0.05 * shifted * torch.sin(0.007 * tf + 1.0))


def learned_variance_model(sample: torch.Tensor, t) -> torch.Tensor:
    """``fake_model`` plus a second block of channels in (0.05, 0.55) (DDPM learned variance)."""
    tf = _timestep_feature(t, sample).to(sample.dtype)
    variance_values = 0.3 + 0.25 * torch.tanh(0.5 * sample - 0.1) * torch.cos(0.003 * tf)
    return torch.cat([fake_model(sample, t), variance_values], dim=1)


def constant_model(sample: torch.Tensor, t) -> torch.Tensor:
    """The same fixed ramp for every sample and timestep."""
    ramp = torch.linspace(-1, 1, sample[0].numel(), dtype=sample.dtype)
    return ramp.reshape(sample.shape[1:]).expand_as(sample)


# ------------------------------------------------------------------------------------ driver


def _generators(seeds, offset: int = 0):
    return [torch.Generator().manual_seed(int(s) + offset) for s in seeds]


def _initial_noise(shape, seed, generator_seeds) -> tuple[torch.Tensor, object]:
    """Initial noise and the generator(s) the steps draw from afterwards."""
    if generator_seeds is None:
        noise = torch.randn(shape, generator=torch.Generator().manual_seed(seed))
        return noise, torch.Generator().manual_seed(seed + 1)
    if len(generator_seeds) != shape[0]:
        raise ValueError("generator_seeds needs one seed per sample")
    gens = _generators(generator_seeds)
    noise = torch.cat([torch.randn((1, *shape[1:]), generator=g) for g in gens])
    return noise, gens


def _kind(scheduler) -> str:
    name = type(scheduler).__name__
    if name == "ScoreSdeVeScheduler":
        return "sde_ve"
    if name == "ScoreSdeVpScheduler":
        return "sde_vp"
    return "discrete"


def run_loop(
    scheduler,
    num_inference_steps: int | None = 10,
    *,
    shape=(2, 3, 8, 8),
    seed: int = 0,
    generator_seeds=None,
    set_timesteps_kwargs=None,
    step_kwargs=None,
    model=fake_model,
    init_sample: torch.Tensor | None = None,
    begin_index: int | None = None,
) -> torch.Tensor:
    """One full sampling run (see the module docstring); returns the final sample."""
    kind = _kind(scheduler)
    ts_kwargs = dict(set_timesteps_kwargs or {})
    if num_inference_steps is not None:
        ts_kwargs["num_inference_steps"] = num_inference_steps
    scheduler.set_timesteps(**ts_kwargs)
    noise, generator = _initial_noise(tuple(shape), seed, generator_seeds)
    step_kwargs = dict(step_kwargs or {})
    if kind == "sde_ve":
        return _run_sde_ve(scheduler, noise, generator, model, ts_kwargs)
    if kind == "sde_vp":
        return _run_sde_vp(scheduler, noise, generator, model)

    timesteps = scheduler.timesteps
    if init_sample is not None:
        begin_index = begin_index or 0
        if hasattr(scheduler, "set_begin_index"):  # diffusers' DDPM/DDIM/PNDM have none
            scheduler.set_begin_index(begin_index)
        t0 = timesteps[begin_index: begin_index + 1]
        if hasattr(scheduler, "scale_noise"):  # flow matching noises by interpolation
            sample = scheduler.scale_noise(init_sample, t0, noise)
        else:
            sample = scheduler.add_noise(init_sample, noise, t0)
        timesteps = timesteps[begin_index:]
    else:  # diffusers' flow-matching classes have no init_noise_sigma: theirs is 1
        sample = noise * getattr(scheduler, "init_noise_sigma", 1.0)
    # diffusers' flow-matching classes have no scale_model_input (ours: the identity)
    scale_input = getattr(scheduler, "scale_model_input", lambda x, t: x)
    if "generator" in inspect.signature(scheduler.step).parameters:  # deterministic ones lack it
        step_kwargs["generator"] = generator
    for t in timesteps:
        model_input = scale_input(sample, t)
        model_output = model(model_input, t)
        sample = scheduler.step(model_output, t, sample, **step_kwargs).prev_sample
    return sample


def _run_sde_ve(scheduler, noise, generator, model, ts_kwargs):
    """The predictor-corrector loop of Song et al. 2021, Algorithm 2 (as the VE pipeline runs
    it)."""
    scheduler.set_sigmas(ts_kwargs["num_inference_steps"])
    sample = noise * scheduler.init_noise_sigma
    batch = sample.shape[0]
    for i, t in enumerate(scheduler.timesteps):
        sigma_t = scheduler.sigmas[i] * torch.ones(batch)
        for _ in range(scheduler.config.correct_steps):
            sample = scheduler.step_correct(_score(model, sample, sigma_t), sample,
                                            generator=generator).prev_sample
        sample = scheduler.step_pred(_score(model, sample, sigma_t), t, sample,
                                     generator=generator).prev_sample
    return sample


def _score(model, sample, sigma_t):
    """s(x, sigma) = -eps(x / sigma, sigma) / sigma: a noise prediction turned into a score."""
    sigma = sigma_t.reshape(-1, *([1] * (sample.ndim - 1)))
    return -model(sample / sigma, sigma_t) / sigma


def _run_sde_vp(scheduler, noise, generator, model):
    """Euler-Maruyama on the reverse VP SDE: ``step_pred`` returns (x, x_mean)."""
    sample = noise * getattr(scheduler, "init_noise_sigma", 1.0)  # diffusers' VP has none: 1
    batch = sample.shape[0]
    for t in scheduler.timesteps:
        t_batch = t * torch.ones(batch)
        sample, _ = scheduler.step_pred(model(sample, t_batch * 1000), sample, t_batch,
                                        generator=generator)
    return sample


# ------------------------------------------------------------------------------------ parity


def diffusers_scheduler_class(name: str):
    """The diffusers class named ``name`` (deprecated ones too)."""
    import diffusers
    import diffusers.schedulers as reference

    for module in (diffusers, reference):
        try:
            return getattr(module, name)
        except AttributeError:
            continue
    raise LookupError(f"diffusers has no scheduler class {name}")


def build_pair(name: str, config: dict | None = None):
    """Our scheduler and the diffusers one, both built from ``config`` (a plain dict)."""
    ours = registry.schedulers.get(name).from_config(dict(config or {}))
    theirs = diffusers_scheduler_class(name).from_config(dict(config or {}))
    return ours, theirs


def run_parity(name: str, config: dict | None = None, num_inference_steps: int | None = 10,
               **run_loop_kwargs):
    """Final samples of the same run on ours and on diffusers' ``name``: ``(ours, theirs)``."""
    ours, theirs = build_pair(name, config)
    return (run_loop(ours, num_inference_steps, **run_loop_kwargs),
            run_loop(theirs, num_inference_steps, **run_loop_kwargs))


def relative_error(ours: torch.Tensor, theirs: torch.Tensor) -> float:
    scale = max(theirs.abs().max().item(), 1.0)
    return (ours.double() - theirs.double()).abs().max().item() / scale


def assert_parity(ours: torch.Tensor, theirs: torch.Tensor, rtol: float = 1e-5) -> None:
    """``max|ours - theirs| <= rtol * max(max|theirs|, 1)``; shapes and finiteness must agree."""
    assert ours.shape == theirs.shape, f"shape {tuple(ours.shape)} != {tuple(theirs.shape)}"
    assert torch.isfinite(theirs).all(), "the reference produced non-finite values"
    assert torch.isfinite(ours).all(), "our scheduler produced non-finite values"
    err = relative_error(ours, theirs)
    assert err <= rtol and not math.isnan(err), (
        f"relative max error {err:.3e} > {rtol:.0e} (max|ours|={ours.abs().max().item():.4g}, "
        f"max|theirs|={theirs.abs().max().item():.4g})"
    )


@pytest.fixture
def parity():
    """The harness as a fixture: ``parity.run(name, config, n, ...)``, ``parity.check(a, b)``."""

    class _Parity:
        run = staticmethod(run_parity)
        check = staticmethod(assert_parity)
        loop = staticmethod(run_loop)

    return _Parity()
