"""The scheduler base: config in and out, and the contract every scheduler keeps.

The contract (diffusers-compatible), for a scheduler ``s``:

- ``s.set_timesteps(num_inference_steps, device=None, timesteps=None, sigmas=None)`` prepares a
  sampling run (calling it again starts a fresh run) and fills ``s.timesteps`` (where the
  diffusers format does, a new scheduler already holds a run over the training timesteps);
- ``s.scale_model_input(sample, t)`` scales the sample before the model sees it (identity for
  most discrete-time schedulers);
- ``s.step(model_output, t, sample, generator=None).prev_sample`` is one solver step;
- ``s.add_noise(x0, noise, t)`` noises clean data (for training and img2img);
- ``s.init_noise_sigma`` scales the initial Gaussian noise; ``s.order`` is the number of model
  evaluations per step (1 for single-step solvers, 2 for Heun...);
- ``s.set_begin_index(i)`` starts the run at ``timesteps[i]`` (img2img).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from .base_output import BaseOutput
from .configuration import ConfigMixin
from .errors import ConfigError, SchedulerError
from .hub import PushToHubMixin


@dataclass
class SchedulerOutput(BaseOutput):
    """What ``step`` returns: the sample at the next (less noisy) timestep and, where the solver
    forms it, its estimate of the clean sample. A read-only dict too (``out["prev_sample"]``,
    ``out[0]``, ``out.to_tuple()``), as every output (``diffusion_kernel.base_output``)."""

    prev_sample: torch.Tensor
    pred_original_sample: torch.Tensor | None = None


class SchedulerMixin(ConfigMixin, PushToHubMixin):
    """Base of every scheduler. Subclasses take their config as constructor arguments."""

    config_name = "scheduler_config.json"
    order: int = 1
    init_noise_sigma: float = 1.0
    # Class names (diffusers format) of schedulers that can take this one's config.
    _compatibles: tuple[str, ...] = ()

    @classmethod
    def from_pretrained(
        cls,
        source: str | os.PathLike,
        subfolder: str | None = None,
        revision: str | None = None,
        cache_dir: str | os.PathLike | None = None,
        local_files_only: bool | None = None,
        token: str | bool | None = None,
        **overrides: Any,
    ):
        """Load ``scheduler_config.json`` from a folder or Hub repo (``subfolder="scheduler"``
        for a pipeline) and build the scheduler; keyword arguments override config values."""
        hub_kwargs = dict(revision=revision, cache_dir=cache_dir,
                          local_files_only=local_files_only, token=token)
        folder = Path(source)
        if (subfolder is None and not (folder / cls.config_name).is_file()
                and (folder / "scheduler" / cls.config_name).is_file()):
            subfolder = "scheduler"  # a pipeline folder: its scheduler lives in scheduler/
        config = cls.load_config(source, subfolder=subfolder, **hub_kwargs)
        target = cls
        if cls is SchedulerMixin:
            from .plugins import registry

            if "_class_name" not in config:
                raise ConfigError(f"the scheduler config in {source} has no _class_name; load "
                                  f"it with the scheduler class, e.g. "
                                  f"DDIMScheduler.from_pretrained")
            target = registry.schedulers.get(config["_class_name"])
        return target.from_config(config, **overrides)

    def save_pretrained(self, save_directory: str | os.PathLike, push_to_hub: bool = False,
                        **push_kwargs: Any) -> None:
        """Write ``scheduler_config.json`` into ``save_directory``; ``push_to_hub=True`` then
        uploads the folder to Hub repo ``repo_id=`` (default: the folder's name)."""
        self.save_config(save_directory)
        if push_to_hub:
            self._push_saved_folder(save_directory, **push_kwargs)

    def _save_for_push(self, folder: str | os.PathLike, variant: str | None = None) -> None:
        self.save_config(folder)

    @classmethod
    def compatible_classes(cls) -> list[type]:
        from .plugins import registry

        names = [n for n in (cls.__name__, *cls._compatibles) if n in registry.schedulers]
        return [registry.schedulers.get(n) for n in dict.fromkeys(names)]

    @property
    def compatibles(self) -> list[type]:
        """Installed scheduler classes that can be built from this one's config."""
        return self.compatible_classes()

    # Helpers every scheduler uses ---------------------------------------------------------
    def scale_model_input(self, sample: torch.Tensor, timestep: Any = None) -> torch.Tensor:
        return sample

    def _require_timesteps(self) -> None:
        if getattr(self, "timesteps", None) is None or getattr(self, "num_inference_steps",
                                                               None) is None:
            raise SchedulerError(
                f"{type(self).__name__}.step() was called before set_timesteps(); call "
                f"scheduler.set_timesteps(num_inference_steps) first"
            )

    @staticmethod
    def _check_model_output(model_output: torch.Tensor, sample: torch.Tensor) -> None:
        if model_output.shape != sample.shape:
            raise SchedulerError(
                f"model_output has shape {tuple(model_output.shape)} but the sample has shape "
                f"{tuple(sample.shape)}; they must match (does the model predict a different "
                f"number of channels, e.g. a learned variance? slice it first)"
            )

    def __len__(self) -> int:
        return self.config.num_train_timesteps

    def __repr__(self) -> str:
        return f"{type(self).__name__}({dict(self.config)})"


def check_option(name: str, value: Any, valid: tuple[str, ...] | Mapping[str, Any],
                 owner: str) -> None:
    """Raise a ``ConfigError`` listing the valid values when an option value is unknown."""
    if value not in valid:
        raise ConfigError(
            f"{owner}: unknown {name} {value!r}; valid values are: "
            f"{', '.join(repr(v) for v in valid)}"
        )


def scheduler_from_name(name: str, config: Mapping[str, Any] | None = None, **overrides: Any):
    """Build a scheduler from a class name or alias (``"dpm++2m-karras"``), starting from another
    scheduler's config (``pipe.scheduler.config``) so the training schedule carries over."""
    from .plugins import registry

    cls = registry.schedulers.get(name)
    preset = dict(registry.schedulers.preset(name))
    # Passed as is: a FrozenConfig names its owner class, so that class's keys are not warned about.
    return cls.from_config(config or {}, **{**preset, **overrides})
