"""Model outputs: dataclasses whose fields are also reachable by position, like the tuples that
``return_dict=False`` gives."""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any


@dataclass
class ModelOutput:
    """Base of model outputs: ``out.sample``, ``out["sample"]`` and ``out[0]`` all work; fields
    left at ``None`` are skipped in positional access and ``to_tuple()``, as in diffusers."""

    def to_tuple(self) -> tuple[Any, ...]:
        return tuple(getattr(self, f.name) for f in fields(self)
                     if getattr(self, f.name) is not None)

    def __getitem__(self, key: int | str | slice) -> Any:
        if isinstance(key, str):
            return getattr(self, key)
        return self.to_tuple()[key]

    def __iter__(self):
        return iter(self.to_tuple())

    def __len__(self) -> int:
        return len(self.to_tuple())
