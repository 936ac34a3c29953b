"""The processor base: turns user data (images, waveforms, molecules) into model tensors and back.

A processor has a config like a scheduler (its constructor arguments) and no weights.
"""

from __future__ import annotations

import os
from typing import Any

from .configuration import ConfigMixin


class ProcessorMixin(ConfigMixin):
    """Base of every processor: ``preprocess(data) -> tensor`` and
    ``postprocess(tensor) -> data``."""

    config_name = "processor_config.json"

    def preprocess(self, data: Any, **kwargs: Any) -> Any:
        raise NotImplementedError(f"{type(self).__name__} does not implement preprocess")

    def postprocess(self, tensor: Any, **kwargs: Any) -> Any:
        raise NotImplementedError(f"{type(self).__name__} does not implement postprocess")

    def save_pretrained(self, save_directory: str | os.PathLike) -> None:
        self.save_config(save_directory)

    @classmethod
    def from_pretrained(cls, source: str | os.PathLike, subfolder: str | None = None, **hub_kwargs):
        return cls.from_config(cls.load_config(source, subfolder=subfolder, **hub_kwargs))
