"""The four registries (models, schedulers, pipelines, processors) that plugins fill.

An entry records a name, its aliases and where the class lives as a ``"module:attr"`` string; the
module is imported on the first ``get``. Filling and listing a registry imports no plugin code
module and no torch: only the plugins' entry-point modules, which register strings.
"""

from __future__ import annotations

import difflib
import importlib
import warnings
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from .errors import NotRegisteredError, PluginError

KINDS = ("models", "schedulers", "pipelines", "processors")


@dataclass(frozen=True)
class Entry:
    """One registered class: its name, aliases, location and the plugin that registered it."""

    name: str
    target: str
    kind: str
    plugin: str
    distribution: str | None = None
    version: str | None = None
    aliases: tuple[str, ...] = ()
    presets: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    summary: str | None = None
    obj: Any = field(default=None, compare=False, repr=False)

    def load(self) -> Any:
        """Import and return the registered class (imported once, then cached by Python)."""
        if self.obj is not None:
            return self.obj
        module_name, _, attr = self.target.partition(":")
        try:
            module = importlib.import_module(module_name)
            obj = module
            for part in attr.split("."):
                obj = getattr(obj, part)
        except Exception as exc:
            raise PluginError(
                f"{self.kind[:-1]} {self.name!r} is registered by plugin {self.plugin!r} "
                f"({self.distribution or 'not from a distribution'}) at {self.target!r}, "
                f"but importing it failed: {type(exc).__name__}: {exc}. Reinstall or update that "
                f"plugin, or disable it with DIFFUSION_KERNEL_PLUGINS."
            ) from exc
        return obj


def _docstring_summary(obj: Any) -> str | None:
    doc = getattr(obj, "__doc__", None)
    return doc.strip().splitlines()[0] if doc and doc.strip() else None


def _did_you_mean(name: str, known: list[str]) -> str:
    """`` Did you mean: A, B?`` with up to five names close to ``name`` (case-insensitive)."""
    spelled = {k.lower(): k for k in known}  # class names, listed last, win over aliases
    near = difflib.get_close_matches(name.lower(), spelled, n=5, cutoff=0.5)
    return f" Did you mean: {', '.join(spelled[k] for k in near)}?" if near else ""


class Registry:
    """Names to classes for one kind. Filled by plugins on first use (see ``plugins.py``)."""

    def __init__(self, kind: str, ensure_loaded: Callable[[], None] = lambda: None):
        self.kind = kind
        self._ensure_loaded = ensure_loaded
        self._entries: dict[str, Entry] = {}
        self._aliases: dict[str, str] = {}  # lower-cased alias -> entry name

    # Filling -------------------------------------------------------------------------------
    def add(self, entry: Entry) -> bool:
        """Add an entry; on a name clash the entry already there wins, a warning names both, and
        ``False`` is returned."""
        existing = self._entries.get(entry.name)
        if existing is not None:
            warnings.warn(
                f"{self.kind[:-1]} name {entry.name!r} is claimed by plugin {existing.plugin!r} "
                f"and by plugin {entry.plugin!r}; keeping {existing.plugin!r} (plugins load in "
                f"name order). Set DIFFUSION_KERNEL_PLUGINS to choose.",
                stacklevel=2,
            )
            return False
        self._entries[entry.name] = entry
        for alias in (*entry.aliases, *entry.presets):
            key = alias.lower()
            owner = self._aliases.get(key)
            if owner is not None and owner != entry.name:
                warnings.warn(
                    f"{self.kind[:-1]} alias {alias!r} is claimed by {owner!r} and by "
                    f"{entry.name!r}; keeping {owner!r}.",
                    stacklevel=2,
                )
                continue
            self._aliases[key] = entry.name
        return True

    def remove(self, name: str) -> None:
        """Forget one entry and its aliases."""
        self._entries.pop(name, None)
        self._aliases = {a: n for a, n in self._aliases.items() if n != name}

    def remove_plugin(self, plugin: str) -> None:
        """Forget every entry a plugin registered (used when a plugin is unregistered)."""
        for name in [n for n, e in self._entries.items() if e.plugin == plugin]:
            self.remove(name)

    # Looking up ----------------------------------------------------------------------------
    def names(self) -> list[str]:
        """Every registered class name, sorted. Imports no plugin code."""
        self._ensure_loaded()
        return sorted(self._entries)

    def entries(self) -> list[Entry]:
        self._ensure_loaded()
        return [self._entries[n] for n in sorted(self._entries)]

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and self._find(name) is not None

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        return len(self.names())

    def entry(self, name: str) -> Entry:
        """The entry for a class name or alias; a miss lists the nearest names."""
        found = self._find(name)
        if found is None:
            raise NotRegisteredError(self._miss_message(name))
        return found

    def get(self, name: str) -> Any:
        """The class registered under a class name or alias, imported on first use."""
        return self.entry(name).load()

    def preset(self, name: str) -> Mapping[str, Any]:
        """Config values an alias stands for (``"dpm++2m-karras"``); empty for plain names."""
        entry = self.entry(name)
        return MappingProxyType(dict(entry.presets.get(name.lower(), {})))

    def describe(self, name: str) -> dict[str, Any]:
        """What a name is: class, plugin, distribution and version, summary line, aliases.

        The summary is the first docstring line; a lazy entry registered without ``summary=`` is
        imported to read it (a broken target raises ``PluginError``)."""
        entry = self.entry(name)
        summary = entry.summary if entry.summary is not None else _docstring_summary(entry.load())
        return {
            "name": entry.name,
            "kind": self.kind,
            "target": entry.target,
            "plugin": entry.plugin,
            "distribution": entry.distribution,
            "version": entry.version,
            "summary": summary,
            "aliases": list(entry.aliases),
            "presets": {k: dict(v) for k, v in entry.presets.items()},
        }

    def _find(self, name: str) -> Entry | None:
        if not isinstance(name, str):  # e.g. a config file's "_class_name": [1]
            raise NotRegisteredError(f"a class name must be a string, got {type(name).__name__} "
                                     f"{name!r}; check the config's _class_name")
        self._ensure_loaded()
        if name in self._entries:
            return self._entries[name]
        target = self._aliases.get(name.lower())
        if target is None:
            lowered = {n.lower(): n for n in self._entries}
            target = lowered.get(name.lower())
        return self._entries.get(target) if target else None

    def _miss_message(self, name: str) -> str:
        hint = _did_you_mean(name, [*self._aliases, *self._entries])
        if not self._entries:
            return (
                f"no {self.kind} are registered, so {name!r} cannot be found. Install a plugin "
                f"that provides it (e.g. pip install 'diffusion-kernel[all]') and check "
                f"`diffusion-kernel plugins`."
            )
        return (
            f"unknown {self.kind[:-1]} {name!r}.{hint} Registered {self.kind}: "
            f"{', '.join(sorted(self._entries))}. If it comes from a plugin, install that plugin "
            f"and check `diffusion-kernel plugins`."
        )

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}, {len(self._entries)} entries)"


class Registries:
    """The four registries, ``registry.models`` ... ``registry.processors``."""

    def __init__(self, ensure_loaded: Callable[[], None] = lambda: None):
        self.models = Registry("models", ensure_loaded)
        self.schedulers = Registry("schedulers", ensure_loaded)
        self.pipelines = Registry("pipelines", ensure_loaded)
        self.processors = Registry("processors", ensure_loaded)

    def __getitem__(self, kind: str) -> Registry:
        if kind not in KINDS:
            raise NotRegisteredError(f"unknown registry {kind!r}; choose one of {', '.join(KINDS)}")
        return getattr(self, kind)

    def __iter__(self) -> Iterator[Registry]:
        return (getattr(self, k) for k in KINDS)

    def find(self, name: str) -> Entry:
        """The entry for ``name`` in whichever registry holds it (models first)."""
        for reg in self:
            found = reg._find(name)
            if found is not None:
                return found
        hint = _did_you_mean(name, [n for reg in self for n in [*reg._aliases, *reg._entries]])
        raise NotRegisteredError(
            f"{name!r} is not a registered model, scheduler, pipeline or processor.{hint} "
            f"Install the plugin that provides it and check `diffusion-kernel plugins`."
        )
