"""Pipeline and component code loaded from a file: a community pipeline by name, a Hub repo's
``pipeline.py``, a local ``.py`` file, or a component's ``<component>/<module>.py``.

Code from the Hub runs only with ``trust_remote_code=True``; without it ``RemoteCodeError`` says
which repo, file, commit and sha256 would run. A local file needs no flag: it is already on disk.
The community repo (``DIFFUSION_KERNEL_COMMUNITY_REPO``, default ``diffusion-kernel/community``)
holds one folder per pipeline: ``<name>/pipeline.py``.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import re
import sys
import tempfile
from pathlib import Path
from typing import Any

from .errors import PipelineError, RemoteCodeError
from .hub import _commit_of, is_local, list_files, pin_revision, resolve_file, upload_folder

COMMUNITY_REPO_ENV = "DIFFUSION_KERNEL_COMMUNITY_REPO"
PIPELINE_FILE = "pipeline.py"


def community_repo() -> str:
    return os.environ.get(COMMUNITY_REPO_ENV, "diffusion-kernel/community")


def load_pipeline_class(custom_pipeline: str | os.PathLike, revision: str | None = None,
                        trust_remote_code: bool = False, **hub: Any) -> type:
    """The pipeline class of ``custom_pipeline``: a local ``.py`` file or folder holding
    ``pipeline.py``; a Hub repo id (``owner/name``) holding ``pipeline.py``; or a plain name,
    ``<name>/pipeline.py`` in the community repo. ``revision``: branch, tag or commit (Hub)."""
    source = os.fspath(custom_pipeline)
    if is_local(source):
        source = os.path.join(source, PIPELINE_FILE)
    if source.endswith(".py") or os.path.isfile(source):  # local files run without a flag
        if not os.path.isfile(source):
            raise PipelineError(f"custom_pipeline file {source!r} does not exist")
        return _pipeline_in(_import(Path(source), Path(source).stem))
    repo, filename = ((source, PIPELINE_FILE) if "/" in source
                      else (community_repo(), f"{source}/{PIPELINE_FILE}"))
    path = trusted_file(repo, filename, revision, trust_remote_code, **hub)
    return _pipeline_in(_import(path, filename.replace("/pipeline.py", "")))


def load_component_classes(source: str | os.PathLike, specs: dict[str, Any], files: list[str],
                           skip: Any, trust_remote_code: bool = False, **hub: Any) -> None:
    """Register the component classes of ``model_index.json`` (``specs``) that no installed
    plugin provides and that the source defines in ``<component>/<library>.py`` (components
    named in ``skip`` are passed by the caller and not loaded)."""
    from .plugins import registry

    for name, spec in specs.items():
        if name in skip or not (isinstance(spec, list) and len(spec) == 2):
            continue
        library, class_name = spec
        filename = f"{name}/{library}.py"
        if filename in files and not any(class_name in reg for reg in registry):
            load_component_class(source, filename, class_name, trust_remote_code, **hub)


def load_component_class(source: str | os.PathLike, filename: str, class_name: str,
                         trust_remote_code: bool = False, revision: str | None = None,
                         **hub: Any) -> type:
    """Class ``class_name`` of file ``filename`` (``unet/my_unet.py``) of a pipeline source,
    registered so that ``model_index.json`` can name it."""
    path = trusted_file(source, filename, revision, trust_remote_code, **hub)
    module = _import(path, filename)
    component_cls = getattr(module, class_name, None)
    if not isinstance(component_cls, type):
        raise PipelineError(f"{filename} of {os.fspath(source)!r} defines no class "
                            f"{class_name!r}, which model_index.json names")
    from .modeling import ModelMixin
    from .scheduling import SchedulerMixin

    kind = ("models" if issubclass(component_cls, ModelMixin) else
            "schedulers" if issubclass(component_cls, SchedulerMixin) else "processors")
    return _register(component_cls, kind)


def trusted_file(repo: str, filename: str, revision: str | None, trust_remote_code: bool,
                 **hub: Any) -> Path:
    """Download ``filename`` of Hub repo ``repo`` at ``revision`` (pinned to a commit) and
    return its path if ``trust_remote_code``; else raise ``RemoteCodeError`` describing it.
    A local folder needs no trust: its files are already on disk."""
    if is_local(repo):
        return resolve_file(repo, filename)
    pinned = pin_revision(repo, revision, **hub)
    path = resolve_file(repo, filename, revision=pinned, **hub)
    if not trust_remote_code:
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
        raise RemoteCodeError(
            f"loading {filename!r} from Hub repo {repo!r} at revision {_commit_of(pinned)!r} "
            f"(asked: {revision or 'main'!r}; sha256 {digest}) would run its code. Read it "
            f"({path}); if you trust it, pass trust_remote_code=True (and custom_revision= that "
            f"commit to keep running exactly this code)")
    return path


def _import(path: Path, label: str) -> Any:
    """Import a file under a module name unique to its content; the same content is imported
    once."""
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    name = "diffusion_kernel_remote_" + re.sub(r"\W", "_", label) + "_" + digest[:16]
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses and pickling look their module up here
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[name]
        raise
    return module


def _pipeline_in(module: Any) -> type:
    from .pipelines import DiffusionPipeline

    found = [v for v in vars(module).values() if isinstance(v, type) and
             issubclass(v, DiffusionPipeline) and v.__module__ == module.__name__]
    if len(found) != 1:
        raise PipelineError(f"{module.__file__} must define exactly one DiffusionPipeline "
                            f"subclass, found {[c.__name__ for c in found]}")
    return _register(found[0], "pipelines")


def _register(cls: type, kind: str) -> type:
    """Register ``cls`` under its class name; a newer load of remote code replaces an older
    one, a class of an installed plugin is kept (with the registry's warning)."""
    from .plugins import plugin_manager, registry
    from .registry import Entry

    plugin_manager.ensure_loaded()
    reg = registry[kind]
    if cls.__name__ in reg and reg.entry(cls.__name__).plugin == "remote-code":
        reg.remove(cls.__name__)
    reg.add(Entry(name=cls.__name__, target=f"{cls.__module__}:{cls.__qualname__}", kind=kind,
                  plugin="remote-code", obj=cls))
    return cls


# The `community` command ------------------------------------------------------------------
def local_community(folder: str | os.PathLike = "community") -> dict[str, Path]:
    """The community pipelines of a local folder: ``<name>.py`` files, by name."""
    return {p.stem: p for p in sorted(Path(folder).glob("*.py")) if not p.stem.startswith("_")}


def hub_community(repo: str | None = None, **hub: Any) -> list[str]:
    """The names of the pipelines in the community repo (folders holding ``pipeline.py``)."""
    return [f.rpartition("/")[0] for f in list_files(repo or community_repo(), **hub)
            if f.count("/") == 1 and f.endswith(f"/{PIPELINE_FILE}")]


def publish_community(folder: str | os.PathLike = "community", repo: str | None = None,
                      names: list[str] | None = None, **push: Any) -> str:
    """Upload ``folder/<name>.py`` as ``<name>/pipeline.py`` to the community repo in one
    commit; returns the commit URL."""
    pipelines = local_community(folder)
    unknown = sorted(set(names or ()) - set(pipelines))
    if unknown or not pipelines:
        raise PipelineError(f"no community pipeline {unknown or ''} in {os.fspath(folder)!r} "
                            f"(it holds {sorted(pipelines)})")
    with tempfile.TemporaryDirectory() as staging:
        for name in names or pipelines:
            (Path(staging) / name).mkdir()
            (Path(staging) / name / PIPELINE_FILE).write_bytes(pipelines[name].read_bytes())
        return upload_folder(staging, repo or community_repo(),
                             f"Publish community pipelines {sorted(names or pipelines)}", **push)
