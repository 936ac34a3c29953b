"""ValueGuidedRLPipeline against the reference, diffusers 0.42.1's experimental one (test-only):
the same tiny random networks (this project's UNet1DModel with the reference's weights), a stub
environment, the same seeds: the same actions; folders load both ways; the original Diffuser's
options and the errors.

The chain is 5 steps long: over 20 guided steps a random value network's gradient field amplifies
float32 round-off (a 1e-6 change of the initial noise moves the reference's own trajectories by up
to 7e-4, measured), so longer chains would compare the networks' chaos, not the code.
"""

import diffusers
import numpy as np
import pytest
import torch
from diffusers.experimental import ValueGuidedRLPipeline as ReferencePipeline
from diffusers.utils.torch_utils import randn_tensor
from diffusion_kernel import DiffusionPipeline, registry
from diffusion_kernel.errors import PipelineError
from rl_helpers import SCHEDULER, StubEnv, copy_weights, tiny_networks

OBS = np.array([0.5, -1.0, 0.2, 0.3], dtype=np.float32)
BATCH, HORIZON = 8, 16


@pytest.fixture(scope="module")
def pipelines():
    """(ours, reference) on the same weights; ours runs this project's UNet1DModel."""
    ref_value, ref_unet = tiny_networks(diffusers.UNet1DModel)
    value, unet = tiny_networks(registry.models.get("UNet1DModel"), seed=1)
    copy_weights(ref_value, value)
    copy_weights(ref_unet, unet)
    ours_cls = registry.pipelines.get("ValueGuidedRLPipeline")
    ours = ours_cls(value_function=value, unet=unet,
                    scheduler=registry.schedulers.get("DDPMScheduler")(**SCHEDULER),
                    env=StubEnv())
    reference = ReferencePipeline(value_function=ref_value, unet=ref_unet,
                                  scheduler=diffusers.DDPMScheduler(**SCHEDULER), env=StubEnv())
    for pipe in (ours, reference):
        pipe.set_progress_bar_config(disable=True)
    return ours, reference


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_guided_actions_equal_the_reference(pipelines, seed):
    ours, reference = pipelines
    torch.manual_seed(seed)
    expected = reference(OBS, batch_size=BATCH, planning_horizon=HORIZON, n_guide_steps=2)
    torch.manual_seed(seed)
    got = ours(OBS, batch_size=BATCH, planning_horizon=HORIZON, n_guide_steps=2)
    assert got.shape == (2,)
    np.testing.assert_allclose(got, expected, atol=1e-5, rtol=0)


def test_guidance_computes_no_weight_gradients_and_restores_the_parameters(pipelines):
    """Guidance needs the gradient with respect to the trajectory only: the value function's
    parameters are frozen for the call and left as they were (a frozen one stays frozen)."""
    ours, _ = pipelines
    params = list(ours.value_function.parameters())
    params[0].requires_grad_(False)
    try:
        ours(OBS, batch_size=BATCH, planning_horizon=HORIZON, n_guide_steps=2)
        assert [p.requires_grad for p in params] == [False] + [True] * (len(params) - 1)
        assert all(p.grad is None for p in params)
    finally:
        params[0].requires_grad_(True)


def _reference_unguided(reference, seed):
    """The reference's __call__ up to its sort (which fails without guidance: y is None), then
    the random pick it means to make."""
    torch.manual_seed(seed)
    start = torch.as_tensor(reference.normalize(OBS, "observations")[None].repeat(BATCH, 0))
    conditions = {0: start}
    x = reference.reset_x0(randn_tensor((BATCH, HORIZON, 6)), conditions, 2)
    x, _ = reference.run_diffusion(x, conditions, 0, 0.1)
    np.random.seed(seed)
    chosen = np.random.randint(0, BATCH)
    trajectories = x.detach().numpy()
    return reference.de_normalize(trajectories[chosen, 0, :2], "actions"), trajectories


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_unguided_actions_and_trajectories_equal_the_reference(pipelines, seed):
    ours, reference = pipelines
    expected_action, expected = _reference_unguided(reference, seed)
    torch.manual_seed(seed)
    np.random.seed(seed)
    out = ours(OBS, batch_size=BATCH, planning_horizon=HORIZON, n_guide_steps=0,
               return_dict=True)
    assert out.trajectory_values is None
    np.testing.assert_allclose(ours.normalizer.normalize(out.trajectories), expected, atol=1e-5)
    np.testing.assert_allclose(out.action, expected_action, atol=1e-5)


def test_the_reference_itself_fails_without_guidance(pipelines):
    _, reference = pipelines
    with pytest.raises(AttributeError, match="argsort"):
        reference(OBS, batch_size=BATCH, planning_horizon=HORIZON, n_guide_steps=0)


def test_folders_load_both_ways(pipelines, tmp_path):
    ours, reference = pipelines
    ours.save_pretrained(tmp_path / "ours")
    index = (tmp_path / "ours" / "model_index.json").read_text()
    assert '"env": [\n    null,\n    null\n  ]' in index
    loaded_by_reference = ReferencePipeline.from_pretrained(tmp_path / "ours", env=StubEnv())
    reference.save_pretrained(tmp_path / "reference")
    loaded_by_us = DiffusionPipeline.from_pretrained(tmp_path / "reference", env=StubEnv())
    assert type(loaded_by_us) is type(ours)
    assert type(loaded_by_us.unet) is registry.models.get("UNet1DModel")
    for pipe in (loaded_by_reference, loaded_by_us):
        pipe.set_progress_bar_config(disable=True)
    torch.manual_seed(5)
    expected = reference(OBS, batch_size=BATCH, planning_horizon=HORIZON)
    for pipe in (loaded_by_reference, loaded_by_us):
        torch.manual_seed(5)
        np.testing.assert_allclose(pipe(OBS, batch_size=BATCH, planning_horizon=HORIZON),
                                   expected, atol=1e-5)
    with pytest.raises(PipelineError, match=r"ValueGuidedRLPipeline needs it: .*pass env="):
        DiffusionPipeline.from_pretrained(tmp_path / "ours")


def test_a_generator_makes_runs_repeatable_and_per_plan_generators_batch_independent(pipelines):
    ours, _ = pipelines
    run = lambda g, n: ours(OBS, batch_size=n, planning_horizon=HORIZON, n_guide_steps=0,
                            generator=g, return_dict=True).trajectories
    first = run(torch.Generator().manual_seed(3), 4)
    np.testing.assert_array_equal(first, run(torch.Generator().manual_seed(3), 4))
    batch = run([torch.Generator().manual_seed(s) for s in (7, 8, 9)], 3)
    for i, s in enumerate((7, 8, 9)):
        np.testing.assert_allclose(batch[i], run([torch.Generator().manual_seed(s)], 1)[0],
                                   atol=1e-5)


@pytest.mark.parametrize("normalization", ["global", "gaussian", "limits"])
def test_every_normalisation_keeps_the_start_state(pipelines, normalization):
    ours, _ = pipelines
    pipe = type(ours)(**ours.components, normalization=normalization)
    out = pipe(OBS, batch_size=4, planning_horizon=HORIZON, return_dict=True)
    np.testing.assert_allclose(out.trajectories[:, 0, 2:], np.tile(OBS, (4, 1)), atol=1e-5)
    values = out.trajectory_values
    assert values.shape == (4,) and np.all(np.diff(values) <= 0)  # best first


def test_gradient_scales_of_the_reference_and_of_diffuser(pipelines):
    ours, _ = pipelines
    scheduler = ours.scheduler
    ours(OBS, batch_size=2, planning_horizon=HORIZON)  # sets the scheduler's run
    a = scheduler.alphas_cumprod
    t = 3
    beta_tilde = (1 - a[t - 1]) / (1 - a[t]) * (1 - a[t] / a[t - 1])
    assert float(ours._guidance_weight(t, "diffusers")) == pytest.approx(
        float(torch.exp(0.5 * beta_tilde.sqrt())), rel=1e-6)  # exp(0.5 * std), as there
    assert float(ours._guidance_weight(t, "posterior_variance")) == pytest.approx(
        float(beta_tilde), rel=1e-6)  # Diffuser's model_var
    assert ours._guidance_weight(t, "none") == 1.0


def test_bad_input_gets_clear_errors(pipelines):
    ours, _ = pipelines
    with pytest.raises(PipelineError, match=r"obs must be one observation of shape \(4,\)"):
        ours(np.zeros(3), planning_horizon=HORIZON)
    with pytest.raises(PipelineError, match="multiple of 2; got 15"):
        ours(OBS, planning_horizon=15)
    with pytest.raises(PipelineError, match="value function.*at most 16; got planning_horizon=32"):
        ours(OBS, planning_horizon=32)
    with pytest.raises(PipelineError, match="got 2 generators for 8 trajectories"):
        ours(OBS, planning_horizon=HORIZON, batch_size=8, generator=[torch.Generator()] * 2)
    with pytest.raises(PipelineError, match="unknown grad_scale 'std'"):
        ours(OBS, planning_horizon=HORIZON, grad_scale="std")
    with pytest.raises(PipelineError, match="needs env="):
        type(ours)(value_function=ours.value_function, unet=ours.unet,
                   scheduler=ours.scheduler, env=None)
