"""Entry point of the RL plugin: registers the planning pipelines and the trajectory normaliser by
module path (imported on first use), and the ``diffusion-kernel rl`` commands."""

from diffusion_kernel import hookimpl
from diffusion_kernel.plugins import lazy_hook

_PKG = "diffusion_kernel_rl"

PIPELINES = [
    ("ValueGuidedRLPipeline", "pipelines.value_guided", ("value-guided-rl",)),
    ("DiffuserPlanningPipeline", "pipelines.diffuser_planning", ("diffuser-planning",)),
]
PROCESSORS = [
    ("TrajectoryNormalizer", "normalization", ("trajectory-normalizer",)),
]

register_pipelines = lazy_hook(_PKG, PIPELINES)
register_processors = lazy_hook(_PKG, PROCESSORS)


@hookimpl
def register_train_kinds(register):
    register("planner", f"{_PKG}.cli_runs:run_train_planner",
             arguments=f"{_PKG}.commands:add_train_planner_arguments",
             help="a goal-conditioned Diffuser planner (UNet1DModel) on a point maze's data")
    register("value-function", f"{_PKG}.cli_runs:run_train_value",
             arguments=f"{_PKG}.commands:add_train_value_arguments",
             help="a value function (UNet1DModel) for value-guided planning to a fixed goal")


@hookimpl
def register_evaluate_kinds(register):
    register("planner", f"{_PKG}.cli_runs:run_evaluate_planner",
             arguments=f"{_PKG}.commands:add_evaluate_planner_arguments",
             help="success rate and D4RL normalised score of a maze planner, with baselines")
    register("value-guidance", f"{_PKG}.cli_runs:run_evaluate_guidance",
             arguments=f"{_PKG}.commands:add_evaluate_guidance_arguments",
             help="value-guided against unguided planning to a fixed goal")


@hookimpl
def register_output_writers(register):
    register("plans", f"{_PKG}.plan_writer:PlanWriter")


@hookimpl
def register_shipped_models(register):
    from pathlib import Path

    register("maze2d-medium-planner",
             str(Path(__file__).parent / "shipped" / "maze2d-medium-planner"),
             summary="a Diffuser planner for the medium point maze (docs/rl.md)")


@hookimpl
def register_commands(subparsers):
    from .commands import add_rl_commands

    add_rl_commands(subparsers)
