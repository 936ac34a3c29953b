"""The base of the output objects of models, schedulers and pipelines: dataclasses that are also
read-only dicts, as in diffusers (``BaseOutput``).

An output ``out`` of a dataclass with fields ``(prev_sample, pred_original_sample)`` answers
``out.prev_sample``, ``out["prev_sample"]``, ``out[0]`` (position among the fields that are not
``None``), ``out.keys()`` / ``.values()`` / ``.items()`` (the fields that are not ``None``, as a
dict), ``out.to_tuple()`` and ``len(out)``; ``isinstance(out, dict)`` holds, so code that walks
nested dicts (accelerate's ``send_to_device``, ``torch.utils._pytree``) handles it. Iterating
yields the keys, as with any dict: unpack ``out.to_tuple()`` (or call with ``return_dict=False``).

Fields are set as attributes (``out.prev_sample = x`` or ``out["prev_sample"] = x``); the key set
cannot be changed otherwise (no ``pop``, ``update``, ``del``...).
"""

from __future__ import annotations

from dataclasses import fields
from typing import Any

from .errors import OutputError


class BaseOutput(dict):
    """Base of every output dataclass; subclasses are ``@dataclass`` classes of fields."""

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        _register_pytree_node(cls)

    def __post_init__(self) -> None:
        # ``type(out)({"sample": x})`` (how dict-walking code rebuilds a dict) fills the fields
        # from that dict.
        names = [f.name for f in fields(self)]
        first = getattr(self, names[0]) if names else None
        if (isinstance(first, dict) and not isinstance(first, BaseOutput)
                and all(getattr(self, n) is None for n in names[1:]) and set(first) <= set(names)):
            for name in names:
                setattr(self, name, first.get(name))

    def __setattr__(self, name: str, value: Any) -> None:
        if name in self.__dataclass_fields__:  # keep the dict view in step with the fields
            if value is None:
                dict.pop(self, name, None)
            else:
                dict.__setitem__(self, name, value)
        object.__setattr__(self, name, value)

    def __setitem__(self, key: str, value: Any) -> None:
        if key not in self.__dataclass_fields__:
            self._refuse(f"set key {key!r}")
        setattr(self, key, value)

    def __getitem__(self, key: str | int | slice) -> Any:
        if isinstance(key, str):
            return dict.__getitem__(self, key)
        return self.to_tuple()[key]

    def to_tuple(self) -> tuple[Any, ...]:
        """The values of the fields that are not ``None``, in field order."""
        return tuple(v for v in (getattr(self, f.name) for f in fields(self)) if v is not None)

    def __reduce__(self):  # copy and pickle rebuild through the dataclass constructor
        return type(self), tuple(getattr(self, f.name) for f in fields(self))

    def _refuse(self, what: str, *args: Any, **kwargs: Any):
        raise OutputError(
            f"{type(self).__name__} cannot {what}: its keys are its fields "
            f"{[f.name for f in fields(self)]}; set one with out.<field> = value, or build a "
            f"dict of your own with dict(out)")

    def __delitem__(self, key):
        self._refuse(f"delete key {key!r}")

    def pop(self, *args, **kwargs):
        self._refuse("pop")

    def popitem(self):
        self._refuse("popitem")

    def setdefault(self, *args, **kwargs):
        self._refuse("setdefault")

    def update(self, *args, **kwargs):
        self._refuse("update")

    def clear(self):
        self._refuse("clear")

    def __ior__(self, other):
        self._refuse("|=")


def _register_pytree_node(cls: type) -> None:
    """Flatten outputs like dicts (and rebuild them as their class) in ``torch.utils._pytree``:
    DistributedDataParallel with ``static_graph=True`` and ``torch.export`` look inside them."""
    import torch.utils._pytree as pytree

    def flatten(out):
        return list(out.values()), list(out.keys())

    def unflatten(values, keys):
        return cls(**dict(zip(keys, values, strict=True)))

    pytree.register_pytree_node(cls, flatten, unflatten,
                                serialized_type_name=f"{cls.__module__}.{cls.__qualname__}")
