"""The hooks a plugin implements. Each receives a ``register`` callback rather than returning
values.

``register(target, name=None, aliases=(), presets=None, summary=None)`` takes a class or a
``"module:attr"`` string (imported on first use).
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
