"""Configuration recorded from constructor arguments, read and written as diffusers-format JSON.

A class that inherits ``ConfigMixin`` records the arguments of its ``__init__`` (defaults filled in)
as ``self.config``, a read-only mapping. ``save_config`` writes it with ``_class_name`` and the
format version; ``from_config`` builds an instance from such a mapping or a saved file.
"""

from __future__ import annotations

import functools
import inspect
import json
import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from . import __version__
from .config_checks import check_config_values
from .errors import ConfigError, DiffusionKernelError

# The version of the on-disk format we read and write (the diffusers layout).
FORMAT_VERSION = "0.42.1"
_warned_unknown: set[tuple[str, str]] = set()
logger = logging.getLogger(__name__)


def _freeze(value: Any) -> Any:
    if isinstance(value, FrozenConfig):  # already frozen: freezing it again would redo its
        return value  # whole subtree at every level, exponential in the nesting depth
    if isinstance(value, list | tuple):
        return tuple(_freeze(v) for v in value)
    if isinstance(value, Mapping):
        return FrozenConfig({k: _freeze(v) for k, v in value.items()})
    return value


def _thaw(value: Any) -> Any:
    """Plain JSON-able values: tuples become lists, nested configs dicts."""
    if isinstance(value, tuple | list):
        return [_thaw(v) for v in value]
    if isinstance(value, Mapping):
        return {k: _thaw(v) for k, v in dict(value).items()}
    if hasattr(value, "tolist"):  # numpy / torch scalars and arrays
        return value.tolist()
    return value


class FrozenConfig(dict):
    """A read-only ``dict`` with attribute access: ``config.num_train_timesteps``.

    A real ``dict`` (diffusers' ``X.from_config(our_scheduler.config)`` and ``json.dumps`` take it
    as one), but every method that would change it raises ``ConfigError``. To change a value,
    build a new object, ``cls.from_config(obj.config, key=value)``, or give the object a new
    config with ``obj.register_to_config(key=value)``. Lists are stored as tuples and nested
    mappings as ``FrozenConfig``. ``owner`` is the name of the class whose config this is (so a
    swap to another class knows that the keys it does not take belong to that class).
    """

    __slots__ = ("_owner",)

    def __init__(self, data: Mapping[str, Any] = (), owner: str | None = None):
        try:  # __init__ called again on a built config would change it
            object.__getattribute__(self, "_owner")
        except AttributeError:
            pass
        else:
            self._refuse("be rebuilt in place")
        dict.__init__(self, {k: _freeze(v) for k, v in dict(data).items()})
        object.__setattr__(self, "_owner", owner)

    def __reduce__(self):  # copy and pickle rebuild through __init__ (__setitem__ refuses)
        return FrozenConfig, (dict(self), self._owner)

    def __getattr__(self, key: str) -> Any:
        if key.startswith("__") or key == "_owner":
            raise AttributeError(key)
        try:
            return self[key]
        except KeyError:
            raise AttributeError(f"config has no field {key!r}") from None

    def _refuse(self, what: str, key: str | None = None):
        field = key if isinstance(key, str) else "key"
        raise ConfigError(
            f"config is read-only (it cannot {what}); build a new object instead: "
            f"cls.from_config(obj.config, {field}=...), or replace the object's config with "
            f"obj.register_to_config({field}=...)"
        )

    def __setattr__(self, key: str, value: Any) -> None:
        self._refuse(f"set {key!r}", key)

    def __setitem__(self, key: str, value: Any) -> None:
        self._refuse(f"set {key!r}", key)

    def __delattr__(self, key: str) -> None:
        self._refuse(f"delete {key!r}", key)

    def __delitem__(self, key: str) -> None:
        self._refuse(f"delete {key!r}", key)

    def pop(self, key, *default):
        self._refuse(f"pop {key!r}", key)

    def popitem(self):
        self._refuse("popitem")

    def setdefault(self, key, default=None):
        self._refuse(f"setdefault {key!r}", key)

    def update(self, *args, **kwargs):
        self._refuse("update")

    def clear(self):
        self._refuse("clear")

    def __ior__(self, other):
        self._refuse("|=")

    def to_dict(self) -> dict[str, Any]:
        return _thaw(dict(self))

    def __repr__(self) -> str:
        return f"FrozenConfig({json.dumps(self.to_dict(), indent=2, default=str)})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Mapping) and self.to_dict() == _thaw(dict(other))

    def __ne__(self, other: object) -> bool:
        return not self == other

    __hash__ = None


def config_parameters(cls: type) -> dict[str, inspect.Parameter]:
    """The constructor parameters that make up a class's config (those of the constructors it
    forwards ``*args``/``**kwargs`` to included; see ``constructor_chain``)."""
    ignored = set(getattr(cls, "ignore_for_config", ()))
    out: dict[str, inspect.Parameter] = {}
    for init in constructor_chain(cls):  # the signatures of the wrapped __init__s
        for name, p in inspect.signature(init).parameters.items():
            if (name != "self" and name not in ignored and name not in out
                    and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)):
                out[name] = p
    return out


def constructor_chain(cls: type) -> list:
    """``cls.__init__``, and while a constructor takes ``*args``/``**kwargs``, the recorded
    constructor of the next class up that it hands them to: a subclass written
    ``def __init__(self, *args, timestep_spacing="trailing", **kwargs)`` has its parent's
    config fields as well as its own."""
    chain = [cls.__init__]
    owners = [c for c in cls.__mro__ if "__init__" in c.__dict__]
    for owner in owners[1:]:
        if not _forwards(chain[-1]):
            break
        init = owner.__dict__["__init__"]
        if not getattr(init, "_records_config", False):
            break
        chain.append(init)
    return chain


def _forwards(init) -> bool:
    kinds = {p.kind for p in inspect.signature(init).parameters.values()}
    return bool(kinds & {inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD})


def _record_config(init):
    @functools.wraps(init)
    def wrapper(self, *args, **kwargs):
        # Only the most derived constructor records; super().__init__ calls find it done. One
        # that forwards *args/**kwargs to a recorded parent leaves the recording to the parent,
        # which binds the forwarded values (its own explicit values are kept).
        if "_config" not in self.__dict__:
            bound = inspect.signature(init).bind(self, *args, **kwargs)
            explicit = {k: v for k, v in bound.arguments.items() if k != "self"}
            bound.apply_defaults()
            if wrapper in constructor_chain(type(self))[:-1]:
                own = {p.name: bound.arguments[p.name]
                       for p in list(bound.signature.parameters.values())[1:]
                       if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)}
                pending = self.__dict__.setdefault("_pending_own_config", {})
                pending.update({k: v for k, v in own.items() if k not in pending})
            else:
                _record(self, bound, explicit)
        init(self, *args, **kwargs)

    wrapper._records_config = True
    return wrapper


def _record(self, bound: inspect.BoundArguments, explicit: dict[str, Any]) -> None:
    chain = constructor_chain(type(self))
    params = config_parameters(type(self))
    own = self.__dict__.pop("_pending_own_config", {})
    values = {k: v for k, v in {**bound.arguments, **own}.items() if k in params}
    var_kw = [p.name for p in bound.signature.parameters.values() if p.kind == p.VAR_KEYWORD]
    extra = bound.arguments.get(var_kw[0], {}) if var_kw else {}
    check_config_values(type(self), {k: v for k, v in {**explicit, **own}.items()
                                     if k in params}, chain)
    hidden = self.__dict__.pop("_pending_hidden_config", {})
    config = FrozenConfig({**hidden, **extra, **values}, owner=type(self).__name__)
    object.__setattr__(self, "_config", config)
    if extra and not getattr(self, "_accepts_extra_kwargs", False):
        _report_unused(type(self), extra)


def _report_unused(cls: type, keys, source_class: str | None = None) -> None:
    """Log config keys ``cls`` does not take (they stay in its config, hidden).

    Keys of another class's config (a sampler swap: ``source_class`` is that class, or the keys
    are ones a compatible class takes) are normal: logged at info level, as diffusers does.
    Keys no related class takes (a typo, a config for something else) are logged as a warning,
    once per class and key."""
    deprecated = getattr(cls, "_deprecated_kwargs", ())  # old names the class still honours
    keys = [k for k in keys if not k.startswith("_") and k not in deprecated]
    if not keys:
        return
    if source_class not in (None, cls.__name__):
        swapped, unknown = sorted(keys), []
    else:
        related = _keys_of_compatible_classes(cls)
        swapped = sorted(k for k in keys if k in related)
        unknown = sorted(k for k in keys if k not in related)
    if swapped:
        logger.info("%s does not take config keys %s (from %s); they are kept in its config and "
                    "saved again, and have no effect on it", cls.__name__, swapped,
                    source_class or "a compatible class")
    fresh = [k for k in unknown if (cls.__name__, k) not in _warned_unknown]
    if fresh:
        _warned_unknown.update((cls.__name__, k) for k in fresh)
        logger.warning("%s does not use config keys %s; they are kept in the config (and saved "
                       "again) but have no effect.", cls.__name__, fresh)


def _keys_of_compatible_classes(cls: type) -> set[str]:
    """Config keys some installed class in ``cls._compatibles`` takes."""
    names = [n for n in getattr(cls, "_compatibles", ()) if n != cls.__name__]
    if not names:
        return set()
    from .plugins import registry

    keys: set[str] = set()
    for name in names:
        try:
            keys |= set(config_parameters(registry.find(name).load()))
        except DiffusionKernelError:  # not installed, or its plugin does not load
            continue
    return keys


def register_to_config(init):
    """Decorator for ``__init__`` of a ``ConfigMixin`` class, as in diffusers. Optional here: every
    ``ConfigMixin`` subclass records its constructor arguments as its config anyway."""
    return init if getattr(init, "_records_config", False) else _record_config(init)


class ConfigMixin:
    """Records constructor arguments as an immutable ``config`` and saves/loads it as JSON."""

    config_name: str = "config.json"
    ignore_for_config: tuple[str, ...] = ()

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        init = cls.__dict__.get("__init__")
        if init is not None and not getattr(init, "_records_config", False):
            cls.__init__ = _record_config(init)

    @property
    def config(self) -> FrozenConfig:
        try:
            return self.__dict__["_config"]
        except KeyError:
            raise ConfigError(
                f"{type(self).__name__} has no config yet: its __init__ has not run"
            ) from None

    @config.setter
    def config(self, value: Any) -> None:
        raise ConfigError(f"{type(self).__name__}.config is read-only; build a new object "
                          f"instead: {type(self).__name__}.from_config(obj.config, key=value), "
                          f"or give this one a new config: obj.register_to_config(key=value)")

    def register_to_config(self, **kwargs: Any) -> None:
        """Give this object a new frozen config: the current one with ``kwargs`` merged in (the
        old config object is left as it was). Only what reads ``self.config`` later sees the new
        values: state the constructor computed from the old ones stays (as in diffusers); to
        rebuild that too, use ``type(obj).from_config(obj.config, key=value)``."""
        current = self.config
        merged = FrozenConfig({**current, **kwargs}, owner=current._owner)
        object.__setattr__(self, "_config", merged)

    # Building from a config ------------------------------------------------------------------
    @classmethod
    def from_config(cls, config: Mapping[str, Any] | str | os.PathLike | None = None, **overrides):
        """Build an instance from a config mapping (or a saved config file/folder).

        Keys this class does not take are kept in its config (so a swap back restores them) and
        logged (``logging``, logger ``diffusion_kernel.configuration``): at info level when they
        belong to another class's config (a swap), as a warning (once) when no related class
        takes them.
        """
        if config is None:
            config = {}
        elif isinstance(config, str | os.PathLike):
            config = cls.load_config(config)
        elif not isinstance(config, Mapping):
            raise ConfigError(
                f"{cls.__name__}.from_config expects a mapping or a path to a config file, "
                f"got {type(config).__name__}"
            )
        data = {**config, **overrides}
        params = config_parameters(cls)
        init_kwargs = {k: v for k, v in data.items() if k in params}
        hidden = {k: v for k, v in data.items() if k not in params and not k.startswith("_")}
        source_class = data.get("_class_name") or getattr(config, "_owner", None)
        _report_unused(cls, hidden, source_class if isinstance(source_class, str) else None)
        # old names of options the constructor still takes through **kwargs (diffusers'
        # _deprecated_kwargs)
        init_kwargs.update({k: data[k] for k in getattr(cls, "_deprecated_kwargs", ())
                            if k in data})
        required = [k for k, p in params.items() if p.default is p.empty and k not in init_kwargs]
        if required:
            raise ConfigError(f"{cls.__name__} needs config fields {required}, which the config "
                              f"lacks; add them to the config or pass them as keyword arguments")
        obj = cls.__new__(cls)
        object.__setattr__(obj, "_pending_hidden_config", hidden)
        try:
            obj.__init__(**{k: _thaw_for_init(v) for k, v in init_kwargs.items()})
        except DiffusionKernelError:
            raise
        except Exception as exc:  # values of the right kind that the constructor cannot use
            raise ConfigError(
                f"{cls.__name__} cannot be built from this config ({type(exc).__name__}: {exc}); "
                f"check the config values {sorted(init_kwargs)}"
            ) from exc
        return obj

    # Files -------------------------------------------------------------------------------------
    @classmethod
    def load_config(cls, path: str | os.PathLike, subfolder: str | None = None, **hub_kwargs):
        """Read a config file (or the ``config_name`` file of a folder or Hub repo) as a dict."""
        from .hub import resolve_file

        path = Path(path) if os.path.isfile(path) else resolve_file(
            path, cls.config_name, subfolder=subfolder, **hub_kwargs
        )
        return read_json(path)

    def save_config(self, save_directory: str | os.PathLike) -> Path:
        """Write ``config_name`` into a folder (created if needed), atomically."""
        from .hub import atomic_write_text

        target = Path(save_directory) / self.config_name
        atomic_write_text(target, self.config_json())
        return target

    def config_json(self) -> str:
        data = {
            "_class_name": type(self).__name__,
            "_diffusers_version": FORMAT_VERSION,
            "_diffusion_kernel_version": __version__,
            **self.config.to_dict(),
        }
        return json.dumps(data, indent=2, sort_keys=False) + "\n"


def _thaw_for_init(value: Any) -> Any:
    """Lists in a saved config become lists again for constructors."""
    return _thaw(value) if isinstance(value, tuple | list | Mapping) else value


def read_json(path: str | os.PathLike) -> dict[str, Any]:
    """Parse a JSON config file; a broken file raises ``ConfigError`` naming it."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read config file {path}: {exc}") from exc
    try:
        data = json.loads(text)
    except (json.JSONDecodeError, RecursionError) as exc:
        raise ConfigError(
            f"config file {path} is not valid JSON ({exc}); fix or re-save it"
        ) from exc
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must hold a JSON object, "
                          f"found {type(data).__name__}")
    return data
