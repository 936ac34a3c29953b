"""The RL plugin's command-line options (argparse only: this module is imported when the command
line is built). The runners live in ``cli_runs.py``.

- ``diffusion-kernel train planner`` / ``train value-function``;
- ``diffusion-kernel evaluate planner`` (success rate and normalised score, ``--json``) and
  ``evaluate value-guidance`` (guided against unguided planning on a fixed goal);
- ``diffusion-kernel rl dataset`` (the offline data as an .npz).

``generate --model maze2d-medium-planner "1,1:6,6"`` plans with the kernel's ``generate``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

SHIPPED = Path(__file__).parent / "shipped"
PLANNER = SHIPPED / "maze2d-medium-planner"
VALUE_FUNCTION = SHIPPED / "maze2d-medium-value"
MAZES = ("umaze", "medium")


def _ints(text: str) -> tuple[int, ...]:
    return tuple(int(v) for v in text.split(",") if v.strip())


def _point(text: str) -> tuple[float, float]:
    try:
        x, y = (float(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a point: write x,y") from None
    return x, y


def _episode_steps(text: str) -> int | None:
    return int(text) or None


def _data_arguments(p) -> None:
    p.add_argument("--maze", choices=MAZES, default="medium")
    p.add_argument("--dataset", help="an .npz from `diffusion-kernel rl dataset` (default: the "
                                     "environment's own data, generated)")
    p.add_argument("--dataset-size", type=int, default=400_000)
    p.add_argument("--dataset-seed", type=int, default=0)
    p.add_argument("--episode-steps", type=_episode_steps, default=72,
                   help="steps per generated episode (0: D4RL-style long runs)")


def _loop_arguments(p, steps: int, learning_rate: float) -> None:
    p.add_argument("--output-dir", required=True, help="the folder to write")
    p.add_argument("--horizon", type=int, default=64)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--learning-rate", type=float, default=learning_rate)
    p.add_argument("--max-steps", type=int, default=steps)
    p.add_argument("--max-minutes", type=float, help="stop (and save) after this much time")
    p.add_argument("--seed", type=int, default=0)


def add_train_planner_arguments(p) -> None:
    _data_arguments(p)
    _loop_arguments(p, 10_000, 1e-3)
    p.add_argument("--num-train-timesteps", type=int, default=32)
    p.add_argument("--block-out-channels", type=_ints, default=(32, 64, 128))
    p.add_argument("--init-from", help="a planner folder to go on training from (its weights "
                                       "and normaliser)")
    p.add_argument("--goal-rate", type=float, default=0.8,
                   help="share of training windows whose last state is given, as a goal")


def add_train_value_arguments(p) -> None:
    _data_arguments(p)
    _loop_arguments(p, 3_000, 1e-3)
    p.add_argument("--planner", default=str(PLANNER),
                   help="the planner whose normaliser and scheduler the value function shares")
    p.add_argument("--goal", type=_point, default=(6.0, 6.0))
    p.add_argument("--discount", type=float, default=0.97)
    p.add_argument("--block-out-channels", type=_ints, default=(16, 32, 64, 128))


def add_evaluate_planner_arguments(p) -> None:
    p.add_argument("--model", default=str(PLANNER),
                   help="a planner folder (DiffuserPlanningPipeline) or a shipped model's name")
    p.add_argument("--pairs", type=int, default=100, help="start/goal pairs to plan between")
    p.add_argument("--seed", type=int, default=0, help="seed of the pairs and of the plans")
    p.add_argument("--max-steps", type=int, default=300, help="steps of each episode")
    p.add_argument("--steps", type=int, help="denoising steps (default: the whole chain)")
    p.add_argument("--candidates", type=int, dest="num_candidates",
                   help="plans sampled per pair, the one the model finds most likely kept "
                        "(default: the planner folder's recommended number; 1: one plan)")
    p.add_argument("--selection", choices=("likelihood", "medoid"), default="likelihood",
                   help="how one of the candidates is kept: the lowest denoising error "
                        "(likelihood) or the one closest to the others (medoid)")
    p.add_argument("--no-baselines", dest="baselines", action="store_false",
                   help="skip the straight-line, unconditional and behaviour-cloning rows")
    p.add_argument("--behaviour-cloning-steps", type=int, default=3000,
                   help="training steps of the behaviour-cloning baseline (0: skip it)")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")


def add_evaluate_guidance_arguments(p) -> None:
    p.add_argument("--model", default=str(PLANNER), help="the planner folder (its unet)")
    p.add_argument("--value-function", default=str(VALUE_FUNCTION),
                   help="a value-function folder (UNet1DModel) trained for --goal")
    p.add_argument("--goal", type=_point, default=(6.0, 6.0))
    p.add_argument("--starts", type=int, default=50, help="start cells (seeded) to plan from")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch-size", type=int, default=16, help="trajectories per plan")
    p.add_argument("--scale", type=float, default=1.0,
                   help="guidance step size (1.0 suits the shipped value function, trained on "
                        "standardised returns; diffusers' hopper setting is 0.1)")
    p.add_argument("--n-guide-steps", type=int, default=2)
    p.add_argument("--steps", type=int, help="denoising steps (default: the whole chain)")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")


def add_rl_commands(subparsers) -> None:
    rl = subparsers.add_parser("rl", help="reinforcement-learning data: the point maze's dataset")
    sub = rl.add_subparsers(dest="rl_command", metavar="COMMAND", required=True)
    d = sub.add_parser("dataset", help="generate the offline data of a point maze as an .npz",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    d.add_argument("--maze", choices=MAZES, default="medium")
    d.add_argument("--steps", type=int, default=400_000, help="transitions to generate")
    d.add_argument("--episode-steps", type=_episode_steps, default=72,
                   help="steps per episode (0: D4RL-style long runs from goal to goal)")
    d.add_argument("--seed", type=int, default=0)
    d.add_argument("--streams", type=int, default=100, help="trajectories run side by side")
    d.add_argument("--action-noise", type=float, default=0.3)
    d.add_argument("--out", required=True, help="the .npz file to write")
    d.set_defaults(func=_lazy("run_dataset"))


def _lazy(name: str):
    def run(args):
        from . import cli_runs

        return getattr(cli_runs, name)(args)

    return run
