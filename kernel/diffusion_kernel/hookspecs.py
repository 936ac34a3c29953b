"""The hooks a plugin implements. Each receives a ``register`` callback rather than returning
values.

For the four registries, ``register(target, name=None, aliases=(), presets=None, summary=None)``
takes a class or a ``"module:attr"`` string (imported on first use). The command-line hooks'
``register`` callbacks are described on each hook and in docs/plugins.md.
"""

import pluggy

hookspec = pluggy.HookspecMarker("diffusion_kernel")
hookimpl = pluggy.HookimplMarker("diffusion_kernel")


@hookspec
def register_models(register):
    """Register model classes (``torch.nn.Module`` subclasses built on ``ModelMixin``)."""


@hookspec
def register_schedulers(register):
    """Register scheduler classes; ``presets`` maps alias names to config values."""


@hookspec
def register_pipelines(register):
    """Register pipeline classes (``DiffusionPipeline`` subclasses)."""


@hookspec
def register_processors(register):
    """Register processor classes (data to and from tensors)."""


@hookspec
def register_commands(subparsers):
    """Add subcommands to the ``diffusion-kernel`` command line (an ``argparse`` subparsers
    object)."""


@hookspec
def register_train_kinds(register):
    """Add kinds to ``diffusion-kernel train KIND``:
    ``register(name, run, arguments=None, help="")``, ``run(args) -> int`` and
    ``arguments(parser)`` as callables or ``"module:attr"`` strings."""


@hookspec
def register_evaluate_kinds(register):
    """Add kinds to ``diffusion-kernel evaluate KIND``; ``register`` as for train kinds."""


@hookspec
def register_output_writers(register):
    """Say how ``diffusion-kernel generate`` saves an output field:
    ``register(field, target)``, target an ``outputs.OutputWriter`` subclass or its
    ``"module:attr"``."""


@hookspec
def register_shipped_models(register):
    """Name pipeline folders installed with the plugin, for ``generate --model NAME``:
    ``register(name, source, summary="", default=False)``."""
