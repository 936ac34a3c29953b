"""diffusion-kernel: a small plugin kernel for diffusion models.

Everything here is looked up lazily: ``import diffusion_kernel`` imports neither torch nor any
plugin. ``diffusion_kernel.DDIMScheduler`` resolves through the registry once a plugin provides it.
"""

__version__ = "0.1.0"

from .errors import (  # noqa: E402
    CheckpointError,
    ConfigError,
    DiffusionKernelError,
    FileAccessError,
    ModelInputError,
    NotRegisteredError,
    OutputError,
    PipelineError,
    PluginError,
    RemoteCodeError,
    SchedulerError,
    UnsafeCheckpointError,
)
from .hookspecs import hookimpl  # noqa: E402
from .plugins import plugin_manager, registry  # noqa: E402

# Kernel classes, imported on first access (most of them import torch).
_KERNEL_NAMES = {
    "ConfigMixin": "configuration",
    "FrozenConfig": "configuration",
    "ModelMixin": "modeling",
    "BaseOutput": "base_output",
    "SchedulerMixin": "scheduling",
    "SchedulerOutput": "scheduling",
    "DiffusionPipeline": "pipelines",
    "PipelineOutput": "pipelines",
    "ImagePipelineOutput": "pipelines",
    "ProcessorMixin": "processing",
}

__all__ = [
    "__version__", "registry", "plugin_manager", "hookimpl",
    "DiffusionKernelError", "NotRegisteredError", "PluginError", "ConfigError", "CheckpointError",
    "UnsafeCheckpointError", "FileAccessError", "SchedulerError", "PipelineError",
    "RemoteCodeError", "ModelInputError", "OutputError", *_KERNEL_NAMES,
]


def __getattr__(name: str):
    if name in _KERNEL_NAMES:
        import importlib

        return getattr(importlib.import_module(f".{_KERNEL_NAMES[name]}", __name__), name)
    if name.startswith("__"):
        raise AttributeError(name)
    try:
        return registry.find(name).load()
    except NotRegisteredError as exc:
        raise AttributeError(f"module 'diffusion_kernel' has no attribute {name!r}: {exc}") \
            from None


def __dir__():
    return sorted(set(globals()) | set(__all__) | {n for reg in registry for n in reg.names()})
