"""What the RL commands run (their options are in ``commands.py``)."""

from __future__ import annotations

import argparse
import json

from diffusion_kernel.cli_extensions import config_from_args
from diffusion_kernel.errors import ConfigError

COLUMNS = (("success_rate", "success %"), ("normalized_score", "score"),
           ("mean_return", "return"), ("mean_arrival_step", "arrival"))


def run_train_planner(args: argparse.Namespace) -> int:
    from .training import PlannerTrainConfig, train_planner

    train_planner(config_from_args(PlannerTrainConfig, args))
    return 0


def run_train_value(args: argparse.Namespace) -> int:
    from .training import ValueTrainConfig, train_value_function

    train_value_function(config_from_args(ValueTrainConfig, args))
    return 0


def run_dataset(args: argparse.Namespace) -> int:
    from .datasets import generate_dataset, save_dataset

    if not str(args.out).endswith(".npz"):
        raise ConfigError(f"--out {args.out}: the dataset is written as an .npz; end the name "
                          f"with .npz")
    data = generate_dataset(args.maze, args.steps, seed=args.seed, num_streams=args.streams,
                            action_noise=args.action_noise, episode_steps=args.episode_steps)
    path = save_dataset(data, args.out)
    print(f"wrote {len(data['observations']):,} transitions of the {args.maze} maze to {path}")
    return 0


def _planner(model: str):
    from diffusion_kernel.cli_extensions import resolve_model
    from diffusion_kernel.pipelines import DiffusionPipeline

    from .pipelines.diffuser_planning import DiffuserPlanningPipeline

    pipe = DiffusionPipeline.from_pretrained(resolve_model(model))
    if not isinstance(pipe, DiffuserPlanningPipeline):
        raise ConfigError(f"{model} holds a {type(pipe).__name__}; evaluate planner needs a "
                          f"DiffuserPlanningPipeline folder")
    maze = pipe._maze()
    if maze is None:
        raise ConfigError(f"{model} names no maze (environment={pipe.environment!r}) to "
                          f"evaluate it in")
    pipe.set_progress_bar_config(disable=True)
    return pipe, maze


def run_evaluate_planner(args: argparse.Namespace) -> int:
    from .evaluation import planner_report
    from .training import maze_data

    if args.pairs < 1 or args.max_steps < 1:
        raise ConfigError("--pairs and --max-steps must be positive")
    if args.num_candidates is not None and args.num_candidates < 1:
        raise ConfigError(f"--candidates must be at least 1, got {args.num_candidates}")
    pipe, maze = _planner(args.model)
    data = maze_data(maze.name, None, 400_000, 0) if args.baselines and \
        args.behaviour_cloning_steps > 0 else None
    report = planner_report(pipe, maze, args.pairs, args.seed, args.max_steps, args.steps,
                            args.baselines, args.behaviour_cloning_steps, data,
                            args.num_candidates, args.selection)
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    chosen = "one plan per pair" if report["num_candidates"] == 1 else \
        f"the best of {report['num_candidates']} plans per pair by {report['selection']}"
    print(f"{args.pairs} start/goal pairs of the {maze.name} maze (>= 3 cells apart), "
          f"{args.max_steps} steps each, {chosen}; R_random {report['R_random']:.1f}, "
          f"R_expert {report['R_expert']:.1f}")
    print(f"{'policy':<22}" + "".join(f"{title:>11}" for _, title in COLUMNS))
    for name, row in report["policies"].items():
        print(f"{name:<22}" + "".join(f"{row[key]:>11.1f}" for key, _ in COLUMNS))
    return 0


def run_evaluate_guidance(args: argparse.Namespace) -> int:
    from diffusion_kernel import registry

    from .env import PointMazeEnv
    from .evaluation import guidance_report

    planner, maze = _planner(args.model)
    value = registry.models.get("UNet1DModel").from_pretrained(args.value_function)
    env = PointMazeEnv(maze, goal=args.goal, reward_type="geodesic")
    pipe = registry.pipelines.get("ValueGuidedRLPipeline")(
        value_function=value, unet=planner.unet, scheduler=planner.scheduler, env=env,
        normalizer=planner.normalizer)  # the statistics the networks were trained with
    pipe.set_progress_bar_config(disable=True)
    report = guidance_report(pipe, maze, args.goal, args.starts, args.seed,
                             batch_size=args.batch_size, n_guide_steps=args.n_guide_steps,
                             scale=args.scale, num_inference_steps=args.steps)
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    print(f"goal {tuple(args.goal)} of the {maze.name} maze from {args.starts} starts, "
          f"{args.batch_size} trajectories per plan, scale {args.scale}")
    for name, row in report["policies"].items():
        print(f"{name:<10} success {row['success_rate']:5.1f} %, mean arrival step "
              f"{row['mean_arrival_step']:.1f}")
    return 0
