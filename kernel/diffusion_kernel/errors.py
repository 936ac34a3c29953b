"""The exception family: every error a user can cause is one of these, and its message names the
problem and the fix."""


class DiffusionKernelError(Exception):
    """Base of every error raised by diffusion-kernel and its plugins."""


class NotRegisteredError(DiffusionKernelError, LookupError):
    """A name was looked up in a registry and is not there."""


class PluginError(DiffusionKernelError):
    """A plugin could not be loaded or broke a registration rule."""


class ConfigError(DiffusionKernelError, ValueError):
    """A configuration is unreadable, has wrong values, or was modified after creation."""


class CheckpointError(DiffusionKernelError, ValueError):
    """Weights on disk do not match the model: missing, unexpected, mis-shaped, truncated or
    corrupt."""


class UnsafeCheckpointError(CheckpointError):
    """A pickle checkpoint was found and loading it was not explicitly allowed."""


class FileAccessError(DiffusionKernelError, OSError):
    """A file, folder, repository or revision could not be found or fetched."""


class SchedulerError(DiffusionKernelError, ValueError):
    """A scheduler was used out of order or given values it cannot work with."""


class PipelineError(DiffusionKernelError, ValueError):
    """A pipeline was given arguments it cannot work with, or its components do not fit together."""


class RemoteCodeError(DiffusionKernelError):
    """Code from the Hub would run, and `trust_remote_code=True` was not given."""


class ModelInputError(DiffusionKernelError, ValueError):
    """A model was called with inputs that do not fit its config (channels, shapes, missing
    conditioning)."""


class OutputError(DiffusionKernelError, TypeError):
    """An output object (``.prev_sample``, ``.sample``, ``.images``...) was used as a mutable dict:
    its keys are its fields."""
