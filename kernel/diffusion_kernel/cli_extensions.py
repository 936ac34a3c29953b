"""What plugins add to the kernel's command verbs, collected from four hooks: the kinds of
``train`` and ``evaluate``, the writers ``generate`` saves outputs with, and the models shipped
inside plugins that ``generate --model NAME`` finds.

Everything is lazy: a registration records names and ``"module:attr"`` strings; a runner or a
writer is imported only when its command runs. Argument functions are imported when the parser is
built, so their modules must be light (argparse only: no torch).
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import sys
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

from .errors import NotRegisteredError, PluginError
from .plugins import plugin_manager

Target = str | Callable[..., Any]


def positive_int(text: str) -> int:
    """An ``argparse`` type: a whole number above zero."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"{value} is not positive")
    return value


def config_from_args(cls: type, args: argparse.Namespace, **values: Any) -> Any:
    """The dataclass ``cls`` (a ``train`` or ``evaluate`` kind's config) built from the parsed
    options named like its fields; ``values`` are given instead of the options of those names."""
    names = {f.name for f in dataclasses.fields(cls)} - set(values)
    return cls(**{k: v for k, v in vars(args).items() if k in names}, **values)


def load_target(target: Target, plugin: str = "?") -> Any:
    """A callable or class given directly, or imported from a ``"module:attr"`` string."""
    if not isinstance(target, str):
        return target
    module_name, _, attr = target.partition(":")
    try:
        obj = importlib.import_module(module_name)
        for part in attr.split("."):
            obj = getattr(obj, part)
    except Exception as exc:
        raise PluginError(f"plugin {plugin!r} registered {target!r} for the command line, but "
                          f"importing it failed: {type(exc).__name__}: {exc}. Reinstall or "
                          f"update that plugin, or disable it with DIFFUSION_KERNEL_PLUGINS.") \
            from exc
    return obj


def _check_target(target: Target, plugin: str, what: str) -> None:
    if isinstance(target, str) and ":" not in target:
        raise PluginError(f"plugin {plugin!r} registered {what} {target!r}; a lazy target must be "
                          f"'module:attr', e.g. 'my_plugin.commands:run'")


@dataclass(frozen=True)
class Kind:
    """One kind of ``train`` or ``evaluate``: ``run(args) -> exit status`` and
    ``arguments(parser)`` adding its options."""

    name: str
    run: Target
    arguments: Target | None
    help: str
    plugin: str


@dataclass(frozen=True)
class Writer:
    """The writer of one pipeline output field (``images``, ``audios``...)."""

    field: str
    target: Target
    plugin: str

    def load(self) -> Any:
        """An instance of the registered ``OutputWriter`` class."""
        return load_target(self.target, self.plugin)()


@dataclass(frozen=True)
class ShippedModel:
    """A pipeline folder installed with a plugin, found by name."""

    name: str
    source: str
    summary: str
    default: bool
    plugin: str


def _collect(hook: str, make: Callable[..., Any]) -> list:
    """Call ``hook`` on every plugin with a ``register`` callback; a plugin whose hook raises is
    reported and skipped (as ``register_commands`` is)."""
    plugin_manager.ensure_loaded()
    found: list = []
    for name, plugin in sorted(plugin_manager.pm.list_name_plugin(), key=lambda item: item[0]):
        if not hasattr(plugin, hook):
            continue
        staged: list = []
        try:
            plugin_manager._call_alone(plugin, hook, register=_stager(staged, make, name))
        except Exception as exc:
            print(f"diffusion-kernel: plugin {name!r} failed in {hook} and is skipped there "
                  f"({type(exc).__name__}: {exc})", file=sys.stderr)
            continue
        found += staged
    return found


def _stager(staged: list, make: Callable[..., Any], plugin: str) -> Callable[..., None]:
    def register(*args: Any, **kwargs: Any) -> None:
        staged.append(make(plugin, *args, **kwargs))

    return register


def _unique(entries: list, key: str, what: str) -> dict[str, Any]:
    """By name; on a clash the plugin loaded first keeps the name and a warning names both."""
    out: dict[str, Any] = {}
    for entry in entries:
        name = getattr(entry, key)
        if name in out:
            warnings.warn(f"{what} {name!r} is registered by plugins {out[name].plugin!r} and "
                          f"{entry.plugin!r}; keeping {out[name].plugin!r}", stacklevel=3)
            continue
        out[name] = entry
    return out


def _make_kind(plugin: str, name: str, run: Target, arguments: Target | None = None,
               help: str = "") -> Kind:
    _check_target(run, plugin, f"kind {name!r} with runner")
    if arguments is not None:
        _check_target(arguments, plugin, f"kind {name!r} with arguments")
    return Kind(name, run, arguments, help, plugin)


def _make_writer(plugin: str, field: str, target: Target) -> Writer:
    _check_target(target, plugin, f"the writer of {field!r}")
    return Writer(field, target, plugin)


def _make_shipped(plugin: str, name: str, source: str, summary: str = "",
                  default: bool = False) -> ShippedModel:
    return ShippedModel(name, str(source), summary, default, plugin)


# Cached per set of plugin objects (held by the key, so an id is never reused): registering or
# removing a plugin in-process (tests, notebooks) changes the key.
def _plugin_key() -> tuple:
    plugin_manager.ensure_loaded()
    return tuple(sorted(plugin_manager.pm.list_name_plugin(), key=lambda item: item[0]))


@cache
def _kinds(verb: str, key: tuple) -> dict[str, Kind]:
    return _unique(_collect(f"register_{verb}_kinds", _make_kind), "name", f"{verb} kind")


def kinds(verb: str) -> dict[str, Kind]:
    """The kinds of ``train`` or ``evaluate``, by name."""
    return _kinds(verb, _plugin_key())


@cache
def _writers(key: tuple) -> dict[str, Writer]:
    return _unique(_collect("register_output_writers", _make_writer), "field", "output writer")


def writers() -> dict[str, Writer]:
    """The output writers, by the output field they write."""
    return _writers(_plugin_key())


@cache
def _shipped(key: tuple) -> dict[str, ShippedModel]:
    return _unique(_collect("register_shipped_models", _make_shipped), "name", "shipped model")


def shipped_models() -> dict[str, ShippedModel]:
    """The models plugins ship, by name."""
    return _shipped(_plugin_key())


def default_model() -> ShippedModel:
    """The shipped model marked ``default=True`` (the first, by plugin name, if several are)."""
    marked = [m for m in shipped_models().values() if m.default]
    if not marked:
        raise NotRegisteredError("no installed plugin ships a default model; pass --model "
                                 "PATH_OR_REPO (a pipeline folder or a Hub repo id), or install "
                                 "one: pip install 'diffusion-kernel[vision]' ships 'digits'")
    return marked[0]


def resolve_model(model: str | None) -> str:
    """What ``--model`` names: the default shipped model if None; a local path as is if it
    exists; else a shipped model's name; else (a Hub repo id) as is."""
    if model is None:
        return default_model().source
    if Path(model).exists():
        return model
    shipped = shipped_models()
    return shipped[model].source if model in shipped else model
