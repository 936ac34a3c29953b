"""The networks shipped inside the RL plugin: the medium-maze planner solves the maze offline
(Diffuser's Maze2D protocol on 100 fixed start/goal pairs: plan once, follow the plan for 300
steps) well above the straight-line controller, and the value function steers value-guided
planning to its goal clearly more often than unguided planning on the same seeds.

The planner is run as its folder recommends: the most likely of 4 candidate plans per pair
(``num_candidates=4``, chosen on other pairs, docs/rl.md). The bounds are the figures measured for
docs/rl.md less two points (another thread count may move a borderline plan): 98 % success and a
normalised score of 95.2 (the issue asks for 90 % and 90; one plan per pair: 92 % and 89.1)."""

import json

import numpy as np
import pytest
import torch
from diffusion_kernel import DiffusionPipeline, registry
from diffusion_kernel_rl.commands import PLANNER, VALUE_FUNCTION
from diffusion_kernel_rl.env import PointMazeEnv
from diffusion_kernel_rl.evaluation import (
    evaluation_pairs,
    guidance_report,
    plan_and_follow,
    references,
    rollout,
    summary,
)
from diffusion_kernel_rl.mazes import Maze
from diffusion_kernel_rl.policies import StraightLinePolicy


@pytest.fixture(scope="module")
def planner():
    pipe = DiffusionPipeline.from_pretrained(PLANNER)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def test_the_shipped_networks_are_small_folders_in_the_diffusers_layout():
    files = {p.relative_to(PLANNER).as_posix() for p in PLANNER.rglob("*") if p.is_file()}
    assert files == {"model_index.json", "unet/config.json",
                     "unet/diffusion_pytorch_model.safetensors",
                     "scheduler/scheduler_config.json", "normalizer/processor_config.json",
                     "SHA256SUMS"}
    assert (PLANNER / "unet/diffusion_pytorch_model.safetensors").stat().st_size < 5_000_000
    index = json.loads((PLANNER / "model_index.json").read_text())
    assert index["environment"] == "maze2d-medium" and index["num_candidates"] == 4
    assert json.loads((VALUE_FUNCTION / "config.json").read_text())["out_block_type"] == \
        "ValueFunction"
    assert (VALUE_FUNCTION / "diffusion_pytorch_model.safetensors").stat().st_size < 5_000_000


def test_the_planner_solves_the_medium_maze(planner):
    maze = Maze("medium")
    starts, goals = evaluation_pairs(maze, 100, seed=0)
    refs = references(maze, starts, goals)
    planned = summary(plan_and_follow(planner, maze, starts, goals)[0], refs)
    straight = summary(rollout(maze, StraightLinePolicy(), starts, goals), refs)
    assert planner.num_candidates == 4
    assert planned["success_rate"] >= 96, planned
    assert planned["normalized_score"] >= 93, planned
    assert planned["success_rate"] >= straight["success_rate"] + 20, (planned, straight)


def test_the_model_finds_plans_through_walls_less_likely(planner):
    """The likelihood score sees no map, yet within the candidates of one pair, those whose states
    enter a wall mostly score worse (a higher denoising error) than those that keep to the
    corridors, and fewer of the chosen plans enter walls (48 pairs of another seed, 6 candidates
    each; here 64 % of the comparisons and 19 % of the chosen plans against 28 % of all. On the
    439 calibration pairs with 16 candidates: 70 % of the comparisons, docs/rl.md)."""
    maze = Maze("medium")
    starts, goals = evaluation_pairs(maze, 48, seed=7)
    observations = np.concatenate([starts, np.zeros_like(starts)], axis=1)
    out = planner(observations, goals, num_candidates=6,
                  generator=[torch.Generator().manual_seed(i) for i in range(48)])
    # every candidate again: rows 6i..6i+5 draw from pair i's generator, as the candidates did
    each = planner(np.repeat(observations, 6, 0), np.repeat(goals, 6, 0), num_candidates=1,
                   generator=[g for i in range(48) for g in [torch.Generator().manual_seed(i)] * 6])
    np.testing.assert_allclose(each.states.reshape(48, 6, 64, 4)[np.arange(48), out.chosen],
                               out.states, atol=1e-4)
    through_walls = maze.is_wall(each.states[..., :2]).any(-1).reshape(48, 6)
    assert 0.1 < through_walls.mean() < 0.5, through_walls.mean()
    worse = [(bad[:, None] > clear[None]).ravel() for bad, clear in
             ((s[w], s[~w]) for s, w in zip(out.candidate_scores, through_walls))]
    worse = np.concatenate(worse)
    assert worse.mean() > 0.6, (worse.mean(), len(worse))
    assert through_walls[np.arange(48), out.chosen].mean() < through_walls.mean() - 0.05


def test_value_guidance_reaches_the_goal_more_often_than_unguided_planning(planner):
    value = registry.models.get("UNet1DModel").from_pretrained(VALUE_FUNCTION)
    env = PointMazeEnv("medium", goal=(6, 6), reward_type="geodesic")
    pipe = registry.pipelines.get("ValueGuidedRLPipeline")(
        value_function=value, unet=planner.unet, scheduler=planner.scheduler, env=env,
        normalizer=planner.normalizer)
    pipe.set_progress_bar_config(disable=True)
    report = guidance_report(pipe, Maze("medium"), (6, 6), num_starts=8, batch_size=4)
    guided, unguided = (report["policies"][k]["success_rate"] for k in ("guided", "unguided"))
    assert guided >= unguided + 60, report  # measured: 100 % against 0 %
    torch.manual_seed(0)
    out = pipe(np.array([1.0, 6.0, 0.0, 0.0], dtype=np.float32), batch_size=4,
               planning_horizon=64, return_dict=True)
    assert np.all(np.diff(out.trajectory_values) <= 0) and out.chosen == 0
