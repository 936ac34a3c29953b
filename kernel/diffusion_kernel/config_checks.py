"""Config values checked against what the constructor declares, for every class with a config.

A constructor says what each config field takes in its signature: the annotation gives the type
(``int``, ``float | None``, ``tuple[int, ...]``, ``Literal["conv", "resnet"]``) and
``Annotated[..., Range(...)]`` the numbers it accepts::

    def __init__(self, norm_eps: Annotated[float, Range(gt=0)] = 1e-5,
                 block_out_channels: tuple[Annotated[int, Range(ge=1)], ...] = (64, 128)):

``check_config_values`` runs on every construction, direct or from a config file, for the values
given explicitly (defaults are the class's own business, checked by the test suite): a value of
the wrong type or out of range is a ``ConfigError`` naming the field, what it takes and what it
got, before the constructor runs. JSON lists stand for tuples. Annotations this module cannot
read (a class it cannot import, a ``Callable``) are not checked; a parameter without an
annotation is checked against the kind of its default (bool, number, string).
"""

from __future__ import annotations

import collections.abc
import inspect
import numbers
import types
import typing
import weakref
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Annotated, Any, Literal

from .errors import ConfigError

__all__ = ["Annotated", "PositiveFloat", "PositiveInt", "Range", "check_config_values"]


@dataclass(frozen=True)
class Range:
    """The numbers a field takes: ``Range(gt=0)`` is > 0, ``Range(ge=0, lt=1)`` is [0, 1)."""

    ge: float | None = None
    gt: float | None = None
    le: float | None = None
    lt: float | None = None

    def __call__(self, value: Any) -> bool:
        return ((self.ge is None or value >= self.ge) and (self.gt is None or value > self.gt)
                and (self.le is None or value <= self.le) and (self.lt is None or value < self.lt))

    def __str__(self) -> str:
        bounds = [(">=", self.ge), (">", self.gt), ("<=", self.le), ("<", self.lt)]
        return " and ".join(f"{op} {bound:g}" for op, bound in bounds if bound is not None)


# The two ranges most fields need, as types for signatures: a channel or layer count, an epsilon.
PositiveInt = Annotated[int, Range(ge=1)]
PositiveFloat = Annotated[float, Range(gt=0)]

_UNCHECKED = object()  # an annotation that could not be read
_hints_cache: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def check_config_values(cls: type, values: Mapping[str, Any],
                        functions: list[Callable]) -> None:
    """Raise ``ConfigError`` for the first value in ``values`` that its declaration refuses.
    ``functions`` are the constructors whose parameters make up the config, most derived first
    (a parameter is declared by the first that names it)."""
    declared = _declarations(cls, functions)
    for name, value in values.items():
        hint = declared.get(name, _UNCHECKED)
        if hint is _UNCHECKED or _accepts(hint, value):
            continue
        raise ConfigError(
            f"{cls.__name__} config field {name!r} must be {describe(hint)}, got "
            f"{_what(value)}; fix {name!r} in the config file (or the argument you passed)")


def _declarations(cls: type, functions: list[Callable]) -> dict[str, Any]:
    cached = _hints_cache.get(cls)
    if cached is None:
        cached = {}
        for function in functions:
            for name, hint in _hints(function).items():
                cached.setdefault(name, hint)
        _hints_cache[cls] = cached
    return cached


def _hints(function: Callable) -> dict[str, Any]:
    """Each parameter's annotation, evaluated (``from __future__ import annotations`` makes them
    strings); one that cannot be evaluated is left unchecked, an absent one falls back to the
    kind of the default."""
    function = inspect.unwrap(function)
    try:
        hints = typing.get_type_hints(function, include_extras=True)
    except Exception:  # a name only imported for type checkers: evaluate one by one
        hints = {name: _evaluate(text, function.__globals__)
                 for name, text in getattr(function, "__annotations__", {}).items()}
    out = {}
    for name, param in inspect.signature(function).parameters.items():
        if name in hints:
            out[name] = hints[name]
        elif param.default is not param.empty and _kind(param.default) is not None:
            out[name] = _kind(param.default)
    return out


def _evaluate(annotation: Any, namespace: dict[str, Any]) -> Any:
    if not isinstance(annotation, str):
        return annotation
    try:
        return eval(annotation, namespace)  # what get_type_hints does, one name at a time
    except Exception:
        return _UNCHECKED


def _kind(default: Any) -> type | None:
    if isinstance(default, bool):
        return bool
    if isinstance(default, numbers.Real):
        return float
    if isinstance(default, str):
        return str
    return None


# Matching a value against a type ----------------------------------------------------------------
def _accepts(hint: Any, value: Any) -> bool:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint in (Any, object, _UNCHECKED, inspect.Parameter.empty):
        return True
    if hint is None or hint is type(None):
        return value is None
    if origin is Annotated:
        return _accepts(args[0], value) and all(
            check(value) for check in hint.__metadata__ if isinstance(check, Range))
    if origin in (typing.Union, types.UnionType):
        return any(_accepts(arg, value) for arg in args)
    if origin is Literal:
        return any(value == arg and type(value) is type(arg) for arg in args)
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return isinstance(value, numbers.Integral) and not isinstance(value, bool)
    if hint is float:
        return isinstance(value, numbers.Real) and not isinstance(value, bool)
    if hint is str:
        return isinstance(value, str)
    if hint is tuple or origin is tuple:
        return _accepts_items(args, value)
    if origin in (list, collections.abc.Sequence) or hint in (list, collections.abc.Sequence):
        return _accepts_items((*args, ...) if args else (), value)
    if origin in (dict, collections.abc.Mapping) or hint in (dict, collections.abc.Mapping):
        return isinstance(value, Mapping)
    if isinstance(hint, type):
        return isinstance(value, hint)
    return True  # a TypeVar, a Callable, ...: not checked


def _accepts_items(args: tuple, value: Any) -> bool:
    """``tuple[X, ...]`` (any length), ``tuple[X, Y]`` (exactly these) or a bare tuple; a JSON
    list stands for a tuple, and a numpy array or tensor for a list of its values."""
    if hasattr(value, "tolist") and not isinstance(value, str):
        value = value.tolist()
    if not isinstance(value, list | tuple):
        return False
    if not args:
        return True
    if len(args) == 2 and args[1] is Ellipsis:
        return all(_accepts(args[0], item) for item in value)
    return len(value) == len(args) and all(map(_accepts, args, value))


# Saying what a type takes ---------------------------------------------------------------------
def describe(hint: Any) -> str:
    """``int | tuple[int, int] | None`` -> "an int, a list of 2 values (an int, an int) or None"."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is None or hint is type(None):
        return "None"
    if origin is Annotated:
        ranges = [str(r) for r in hint.__metadata__ if isinstance(r, Range)]
        return " ".join([describe(args[0]), *ranges])
    if origin in (typing.Union, types.UnionType):
        parts = [describe(a) for a in args]
        return parts[0] if len(parts) == 1 else f"{', '.join(parts[:-1])} or {parts[-1]}"
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in args)
    names = {bool: "true or false", int: "an int", float: "a number", str: "a string"}
    if hint in names:
        return names[hint]
    if origin is tuple and args and not (len(args) == 2 and args[1] is Ellipsis):
        return f"a list of {len(args)} values ({', '.join(describe(a) for a in args)})"
    if origin in (tuple, list, collections.abc.Sequence):
        return f"a list of values that are each {describe(args[0])}" if args else "a list"
    if hint in (tuple, list, collections.abc.Sequence):
        return "a list"
    if origin in (dict, collections.abc.Mapping) or hint in (dict, collections.abc.Mapping):
        return "a mapping"
    return getattr(hint, "__name__", str(hint))


def _what(value: Any) -> str:
    text = repr(value)
    return f"{type(value).__name__} {text if len(text) <= 80 else text[:80] + '...'}"
