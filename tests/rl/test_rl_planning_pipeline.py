"""DiffuserPlanningPipeline: the start and goal are inpainted after every step, plans come back in
the environment's units, per-plan generators, saving and loading, scheduler swaps and errors."""

import numpy as np
import pytest
import torch
from diffusion_kernel import DiffusionPipeline, registry
from diffusion_kernel.errors import ConfigError, PipelineError
from diffusion_kernel.scheduling import scheduler_from_name
from diffusion_kernel_rl.datasets import generate_dataset
from diffusion_kernel_rl.normalization import TrajectoryNormalizer
from diffusion_kernel_rl.pipelines.diffuser_planning import DiffuserPlanningPipeline
from diffusion_kernel_rl.pipelines.plan_selection import (
    denoising_errors,
    likelihood_timesteps,
    medoid_distances,
)
from rl_helpers import UNET

START = np.array([[1.0, 1.0, 0.0, 0.0], [6.0, 6.0, 0.5, -0.5]])
GOAL = np.array([[6.0, 6.0], [3.0, 2.0]])


@pytest.fixture(scope="module")
def pipe():
    torch.manual_seed(0)
    unet = registry.models.get("UNet1DModel")(**UNET).eval()
    scheduler = registry.schedulers.get("DDPMScheduler")(
        num_train_timesteps=8, beta_schedule="squaredcos_cap_v2", prediction_type="sample")
    normalizer = TrajectoryNormalizer.fit(generate_dataset("medium", 2_000, num_streams=4),
                                          "limits")
    pipeline = DiffuserPlanningPipeline(unet=unet, scheduler=scheduler, normalizer=normalizer)
    pipeline.set_progress_bar_config(disable=True)
    return pipeline


def test_plans_start_at_the_start_and_end_at_rest_on_the_goal(pipe):
    out = pipe(START, GOAL, generator=torch.Generator().manual_seed(0))
    assert out.states.shape == (2, 16, 4) and out.actions.shape == (2, 16, 2)
    np.testing.assert_allclose(out.states[:, 0], START, atol=1e-5)
    np.testing.assert_allclose(out.states[:, -1], np.concatenate([GOAL, np.zeros((2, 2))], 1),
                               atol=1e-5)
    free = pipe(START, None, generator=torch.Generator().manual_seed(0))
    np.testing.assert_allclose(free.states[:, 0], START, atol=1e-5)
    assert np.abs(free.states[:, -1, :2] - GOAL).max() > 0.1  # nothing pins the end


def test_one_start_plans_a_batch_and_generators_make_plans_batch_independent(pipe):
    several = pipe(START[0], GOAL[0], batch_size=3,
                   generator=[torch.Generator().manual_seed(s) for s in (4, 5, 6)]).states
    assert several.shape == (3, 16, 4)
    for i, s in enumerate((4, 5, 6)):
        alone = pipe(START[0], GOAL[0], generator=torch.Generator().manual_seed(s)).states
        np.testing.assert_allclose(several[i], alone[0], atol=1e-4)  # batched conv round-off
    assert np.abs(several[0] - several[1]).max() > 1e-2


def test_a_saved_planner_loads_and_plans_the_same(pipe, tmp_path):
    pipe.save_pretrained(tmp_path / "planner")
    files = {p.relative_to(tmp_path / "planner").as_posix()
             for p in (tmp_path / "planner").rglob("*") if p.is_file()}
    assert files == {"model_index.json", "unet/config.json",
                     "unet/diffusion_pytorch_model.safetensors",
                     "scheduler/scheduler_config.json", "normalizer/processor_config.json",
                     "SHA256SUMS", "unet/SHA256SUMS"}  # the records of every save
    loaded = DiffusionPipeline.from_pretrained(tmp_path / "planner")
    loaded.set_progress_bar_config(disable=True)
    assert type(loaded) is DiffuserPlanningPipeline
    same = [p(START, GOAL, generator=torch.Generator().manual_seed(1)).states
            for p in (pipe, loaded)]
    np.testing.assert_array_equal(*same)


def test_another_scheduler_with_fewer_steps_keeps_the_conditions(pipe):
    ddim = DiffuserPlanningPipeline(unet=pipe.unet, normalizer=pipe.normalizer,
                                    scheduler=scheduler_from_name("ddim", pipe.scheduler.config))
    ddim.set_progress_bar_config(disable=True)
    out = ddim(START, GOAL, num_inference_steps=4, output_type="pt")
    assert isinstance(out.states, torch.Tensor)
    torch.testing.assert_close(out.states[:, 0], torch.as_tensor(START, dtype=torch.float32),
                               atol=1e-5, rtol=0)


def test_one_candidate_is_the_plain_planner(pipe):
    plain = pipe(START, GOAL, generator=[torch.Generator().manual_seed(s) for s in (2, 3)])
    one = pipe(START, GOAL, generator=[torch.Generator().manual_seed(s) for s in (2, 3)],
               num_candidates=1)
    np.testing.assert_array_equal(plain.states, one.states)
    assert one.candidate_scores is None and one.chosen is None


@pytest.mark.parametrize("selection", ["likelihood", "medoid"])
def test_candidates_are_sampled_from_each_plans_generator_and_the_best_scored_is_kept(
        pipe, selection):
    out = pipe(START, GOAL, generator=[torch.Generator().manual_seed(s) for s in (2, 3)],
               num_candidates=3, selection=selection, output_type="pt")
    assert out.states.shape == (2, 16, 4) and out.candidate_scores.shape == (2, 3)
    np.testing.assert_array_equal(out.chosen, out.candidate_scores.argmin(1))
    # the candidates are the plans of a 6-plan batch whose rows 0-2 draw from plan 0's generator
    first, second = torch.Generator().manual_seed(2), torch.Generator().manual_seed(3)
    each = pipe(np.repeat(START, 3, 0), np.repeat(GOAL, 3, 0), output_type="pt",
                generator=[first] * 3 + [second] * 3)
    candidates = torch.cat([each.actions, each.states], -1)
    torch.testing.assert_close(out.states, each.states[out.chosen + np.array([0, 3])])
    assert len({round(float(v), 6) for v in out.candidate_scores.ravel()}) == 6
    x = pipe.normalizer.normalize(candidates)
    if selection == "likelihood":  # the score is the re-noised denoising error, fixed noise
        conditions = {0: x[:, 0, 2:], 15: x[:, 15, 2:]}
        expected = denoising_errors(pipe.unet, pipe.scheduler, x, conditions, 2,
                                    likelihood_timesteps(pipe.scheduler))
        assert likelihood_timesteps(pipe.scheduler) == [1, 3, 5, 7]  # of 8 training steps
    else:
        expected = medoid_distances(x, 3, 2)
    np.testing.assert_allclose(out.candidate_scores.ravel(), expected.numpy(), rtol=1e-4)


def test_the_medoid_is_the_candidate_the_others_agree_with():
    x = torch.zeros(1, 4, 16, 6)
    x[0, 1, :, 2:] = 1.0  # candidates 0, 2 and 3 agree, 1 is apart; 3 a little off
    x[0, 3, :, 2:] = 0.1
    distances = medoid_distances(x.reshape(4, 16, 6), 4, 2)
    assert distances.argmin() == 0 and distances.argmax() == 1
    torch.testing.assert_close(distances[1], torch.tensor((2.0 + 2.0 + 1.8) / 3))


def test_a_folder_recommends_its_number_of_candidates(pipe, tmp_path):
    several = DiffuserPlanningPipeline(pipe.unet, pipe.scheduler, pipe.normalizer,
                                       num_candidates=3)
    several.save_pretrained(tmp_path / "planner")
    assert '"num_candidates": 3' in (tmp_path / "planner/model_index.json").read_text()
    loaded = DiffusionPipeline.from_pretrained(tmp_path / "planner")
    loaded.set_progress_bar_config(disable=True)
    assert loaded.num_candidates == 3
    out = loaded(START, GOAL, generator=torch.Generator().manual_seed(0))
    assert out.candidate_scores.shape == (2, 3)
    assert loaded(START, GOAL, num_candidates=1).candidate_scores is None


def test_bad_input_gets_clear_errors(pipe):
    with pytest.raises(PipelineError, match=r"num_candidates must be a positive integer"):
        pipe(START, GOAL, num_candidates=0)
    with pytest.raises(PipelineError, match=r"num_candidates must be a positive integer"):
        DiffuserPlanningPipeline(pipe.unet, pipe.scheduler, num_candidates=2.5)
    with pytest.raises(PipelineError, match=r"selection must be one of \('likelihood', "):
        pipe(START, GOAL, num_candidates=2, selection="best")
    with pytest.raises(PipelineError, match=r"start must hold observations of size 4"):
        pipe(np.zeros(3), GOAL[0])
    with pytest.raises(PipelineError, match="multiple of 2; got 15"):
        pipe(START, GOAL, planning_horizon=15)
    with pytest.raises(PipelineError, match=r"goal must be \(4,\) or \(batch, 4\)"):
        pipe(START, np.zeros((3, 2)))
    with pytest.raises(PipelineError, match="got 3 generators for 2 plans"):
        pipe(START, GOAL, generator=[torch.Generator() for _ in range(3)])
    in_maze = DiffuserPlanningPipeline(pipe.unet, pipe.scheduler, pipe.normalizer,
                                       environment="maze2d-medium")
    with pytest.raises(ConfigError, match=r"the goal \(3.0, 1.0\) lies in a wall"):
        in_maze(START, np.array([[6.0, 6.0], [3.0, 1.0]]))
    small = TrajectoryNormalizer(action_dim=1, shift=[0.0] * 5, scale=[1.0] * 5)
    with pytest.raises(PipelineError, match="normalizer covers 5 values per step but the unet "
                                            "takes 6"):
        DiffuserPlanningPipeline(pipe.unet, pipe.scheduler, small)(START, GOAL)
