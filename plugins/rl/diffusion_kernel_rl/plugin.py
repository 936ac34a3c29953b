"""Entry point of the RL plugin: registers the planning pipelines and the trajectory normaliser by
module path (imported on first use), and the ``diffusion-kernel rl`` commands."""

from diffusion_kernel import hookimpl

_PKG = "diffusion_kernel_rl"

PIPELINES = [
    ("ValueGuidedRLPipeline", "pipelines.value_guided", ("value-guided-rl",)),
    ("DiffuserPlanningPipeline", "pipelines.diffuser_planning", ("diffuser-planning",)),
]
PROCESSORS = [
    ("TrajectoryNormalizer", "normalization", ("trajectory-normalizer",)),
]


def _register_all(register, table):
    for name, module, aliases in table:
        register(f"{_PKG}.{module}:{name}", name=name, aliases=aliases)


@hookimpl
def register_pipelines(register):
    _register_all(register, PIPELINES)


@hookimpl
def register_processors(register):
    _register_all(register, PROCESSORS)
