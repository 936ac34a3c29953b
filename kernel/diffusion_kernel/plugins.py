"""The plugin manager: entry points of the ``diffusion_kernel`` group, the allowlist, isolation of
broken plugins, and hook tracing.

Environment variables:

- ``DIFFUSION_KERNEL_PLUGINS``: comma-separated plugin or distribution names to load; unset loads
  all, an empty value loads none (a kill switch for tests).
- ``DIFFUSION_KERNEL_TRACE_HOOKS=1``: print every hook call and what it registered to stderr.
"""

from __future__ import annotations

import os
import sys
import threading
import traceback
import warnings
from dataclasses import dataclass, field
from importlib import metadata
from typing import Any

import pluggy

from . import hookspecs
from .errors import PluginError
from .registry import KINDS, Entry, Registries

ENTRY_POINT_GROUP = "diffusion_kernel"
ALLOWLIST_ENV = "DIFFUSION_KERNEL_PLUGINS"
TRACE_ENV = "DIFFUSION_KERNEL_TRACE_HOOKS"


@dataclass
class PluginInfo:
    """What ``diffusion-kernel plugins`` reports about one plugin."""

    name: str
    distribution: str | None
    version: str | None
    status: str = "loaded"  # loaded | failed | disabled
    error: str | None = None
    registered: dict[str, list[str]] = field(default_factory=lambda: {k: [] for k in KINDS})


class PluginManager:
    """Finds plugins once, fills the registries from their hooks, and reports what happened."""

    def __init__(self) -> None:
        self.pm = pluggy.PluginManager("diffusion_kernel")
        self.pm.add_hookspecs(hookspecs)
        self.registry = Registries(self.ensure_loaded)
        self.plugins: dict[str, PluginInfo] = {}
        self._loaded = self._loading = False
        self._lock = threading.RLock()
        if os.environ.get(TRACE_ENV):
            self.pm.trace.root.setwriter(lambda msg: print(msg, end="", file=sys.stderr))
            self.pm.enable_tracing()

    # Discovery -----------------------------------------------------------------------------
    def ensure_loaded(self) -> None:
        """Load the entry points once. Other threads wait until the registries are full; a
        registry use from inside the loading (a plugin's import) returns at once."""
        if self._loaded:
            return
        with self._lock:
            if self._loaded or self._loading:
                return
            self._loading = True
            try:
                self._load_entry_points()
                self._fill_registries()
            finally:
                self._loaded, self._loading = True, False

    def _allowed(self, name: str, distribution: str | None) -> bool:
        raw = os.environ.get(ALLOWLIST_ENV)
        if raw is None:
            return True
        allowed = {item.strip().lower() for item in raw.split(",") if item.strip()}
        return name.lower() in allowed or (distribution or "").lower() in allowed

    def _load_entry_points(self) -> None:
        def dist_name(ep) -> str | None:
            return ep.dist.metadata["Name"] if getattr(ep, "dist", None) is not None else None

        # Sorted by plugin name, then distribution name: the order never depends on sys.path.
        eps = sorted(metadata.entry_points(group=ENTRY_POINT_GROUP),
                     key=lambda ep: (ep.name, dist_name(ep) or ""))
        for ep in eps:
            info = PluginInfo(ep.name, dist_name(ep), ep.dist.version if ep.dist else None)
            if ep.name in self.plugins:  # two distributions, one plugin name
                warnings.warn(
                    f"plugin name {ep.name!r} is claimed by distributions "
                    f"{self.plugins[ep.name].distribution!r} and {info.distribution!r}; keeping "
                    f"{self.plugins[ep.name].distribution!r}. Uninstall one of them.",
                    stacklevel=2,
                )
                continue
            self.plugins[ep.name] = info
            if not self._allowed(ep.name, info.distribution):
                info.status = "disabled"
                info.error = f"not in {ALLOWLIST_ENV}"
                continue
            try:
                self.pm.register(ep.load(), name=ep.name)
            except Exception as exc:  # a broken plugin is reported, never fatal
                self._fail(info, exc)

    def _fail(self, info: PluginInfo, exc: BaseException) -> None:
        """Report a broken plugin and unhook it, so none of its hooks (commands...) run later."""
        info.status = "failed"
        info.error = f"{type(exc).__name__}: {exc}"
        plugin = self.pm.get_plugin(info.name)
        if plugin is not None:
            self.pm.unregister(plugin)
        if os.environ.get(TRACE_ENV):
            traceback.print_exception(exc, file=sys.stderr)
        print(
            f"diffusion-kernel: plugin {info.name!r} from {info.distribution or 'unknown'} failed "
            f"to load and is skipped ({info.error})",
            file=sys.stderr,
        )

    def register_plugin(self, plugin: Any, name: str) -> None:
        """Register an in-process plugin object (tests, notebooks) and add its classes."""
        with self._lock:
            self.ensure_loaded()
            if name in self.plugins or self.pm.is_registered(plugin):
                raise PluginError(f"a plugin named {name!r} (or this very object) is already "
                                  f"registered; call unregister_plugin({name!r}) first or pick "
                                  f"another name")
            self.pm.register(plugin, name=name)
            self.plugins[name] = PluginInfo(name, None, None)
            self._fill_from(name)

    def unregister_plugin(self, name: str) -> None:
        """Remove a plugin registered with ``register_plugin`` and everything it registered."""
        with self._lock:
            plugin = self.pm.get_plugin(name)
            if plugin is not None:
                self.pm.unregister(plugin)
            self.plugins.pop(name, None)
            for reg in self.registry:
                reg.remove_plugin(name)

    def call_each(self, hook: str, **kwargs: Any) -> None:
        """Call ``hook`` plugin by plugin; one that raises is reported and skipped."""
        for name, plugin in sorted(self.pm.list_name_plugin(), key=lambda item: item[0]):
            if hasattr(plugin, hook):
                try:
                    self._call_alone(plugin, hook, **kwargs)
                except Exception as exc:
                    print(f"diffusion-kernel: plugin {name!r} failed in {hook} and is skipped "
                          f"there ({type(exc).__name__}: {exc})", file=sys.stderr)

    def _call_alone(self, plugin: Any, hook: str, **kwargs: Any) -> None:
        """Call one plugin's implementation of ``hook`` (pluggy calls every plugin's at once)."""
        others = [p for p in self.pm.get_plugins() if p is not plugin]
        self.pm.subset_hook_caller(hook, others)(**kwargs)

    # Filling -------------------------------------------------------------------------------
    def _fill_registries(self) -> None:
        for name in sorted(self.plugins):
            if self.plugins[name].status == "loaded":
                self._fill_from(name)

    def _fill_from(self, plugin_name: str) -> None:
        info = self.plugins[plugin_name]
        plugin = self.pm.get_plugin(plugin_name)
        staged: list[Entry] = []
        try:
            for kind in KINDS:
                if hasattr(plugin, f"register_{kind}"):
                    self._call_alone(plugin, f"register_{kind}",
                                     register=self._register_fn(kind, info, staged))
        except Exception as exc:
            self._fail(info, exc)
            return
        for entry in staged:  # all or nothing: a plugin that raises half-way registers nothing
            if self.registry[entry.kind].add(entry):
                info.registered[entry.kind].append(entry.name)

    def _register_fn(self, kind: str, info: PluginInfo, staged: list[Entry]):
        def register(target, name=None, aliases=(), presets=None, summary=None):
            if isinstance(target, str):
                if ":" not in target:
                    raise PluginError(
                        f"plugin {info.name!r} registered {target!r}; a lazy target must be "
                        f"'module:attr', e.g. 'my_plugin.schedulers:MyScheduler'"
                    )
                name = name or target.rpartition(":")[2].rpartition(".")[2]
                obj = None
            else:
                name = name or target.__name__
                obj = target
                target = f"{target.__module__}:{target.__qualname__}"
            if isinstance(aliases, str):
                aliases = (aliases,)
            presets = {k.lower(): dict(v) for k, v in (presets or {}).items()}
            entry = Entry(
                name=name, target=target, kind=kind, plugin=info.name,
                distribution=info.distribution, version=info.version,
                aliases=tuple(aliases), presets=presets, summary=summary, obj=obj,
            )
            if os.environ.get(TRACE_ENV):
                print(f"diffusion-kernel: {info.name} registered {kind[:-1]} {name} -> {target}",
                      file=sys.stderr)
            staged.append(entry)

        return register


def lazy_hook(package: str, table):
    """A registration hook that registers every row of ``table`` by module path, for a plugin's
    entry-point module: nothing of ``package`` is imported before one of its names is asked for.

    A row is ``(name, module, aliases)`` or, for schedulers, ``(name, module, aliases, presets)``;
    it registers ``"{package}.{module}:{name}"`` under ``name``. Assign the hook to the hook's
    name: ``register_models = lazy_hook("my_pkg", [("MyUNet", "models.unet", ("my-unet",))])``.
    """

    @hookspecs.hookimpl
    def hook(register):
        for name, module, aliases, *presets in table:
            register(f"{package}.{module}:{name}", name=name, aliases=aliases,
                     presets=presets[0] if presets else None)

    return hook


plugin_manager = PluginManager()
registry = plugin_manager.registry
