"""Every file access, local or Hub, in one place; and the one way to save atomically.

A *source* is a local folder or a Hub repo id. ``resolve_file`` gives the local path of one file
of it (downloading just that file), ``list_files`` what the source holds, ``fetch`` a set of files.
Saving goes through ``atomic_directory``: a crash mid-save leaves the previous content intact.
"""

from __future__ import annotations

import contextlib
import importlib
import os
import re
import shutil
import tempfile
import uuid
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path, PurePosixPath

from .errors import ConfigError, FileAccessError


def _hub():
    # Submodules are attributes of the package only once imported: import the ones used here.
    import huggingface_hub
    import huggingface_hub.constants
    import huggingface_hub.errors
    import huggingface_hub.utils  # noqa: F401

    return huggingface_hub


def is_local(source: str | os.PathLike) -> bool:
    return os.path.isdir(source)


def _looks_like_path(source: str) -> bool:
    """Repo ids are ``name`` or ``owner/name``; anything else was meant as a folder."""
    return source.startswith((".", "/", "~")) or source.count("/") > 1 or "\\" in source


def check_relative_path(name: str, what: str = "file name") -> str:
    """Refuse absolute paths and ``..`` in names that come from configs or repos."""
    posix = PurePosixPath(name.replace("\\", "/"))
    if posix.is_absolute() or ".." in posix.parts or (len(name) > 1 and name[1] == ":"):
        raise FileAccessError(
            f"refusing {what} {name!r}: it must be a relative path inside the model folder, "
            f"without '..'"
        )
    return str(posix)


def _join(subfolder: str | None, filename: str) -> str:
    filename = check_relative_path(filename)
    if subfolder:
        return f"{check_relative_path(subfolder, 'subfolder')}/{filename}"
    return filename


def _validate_repo_id(source: str | os.PathLike) -> str:
    """``source`` as a string, once it is checked to be a valid Hub repo id."""
    source = os.fspath(source)
    hub = _hub()
    if _looks_like_path(source):
        raise FileAccessError(
            f"{source!r} is neither an existing local folder nor a Hub repo id; check the path "
            f"(it does not exist) or pass a repo id like 'user/model'"
        )
    try:
        hub.utils.validate_repo_id(source)
    except Exception as exc:
        raise FileAccessError(
            f"{source!r} is not an existing local folder, and not a valid Hub repo id ({exc})"
        ) from None
    return source


def _transport_errors() -> tuple[type[BaseException], ...]:
    """Connection-level errors of the HTTP library huggingface_hub uses (httpx2, httpx or requests,
    depending on its version)."""
    found: list[type[BaseException]] = [ConnectionError, TimeoutError]
    for module, name in (("httpx2", "TransportError"), ("httpx", "TransportError"),
                         ("requests", "ConnectionError"), ("requests", "Timeout")):
        with contextlib.suppress(ImportError, AttributeError):
            found.append(getattr(importlib.import_module(module), name))
    return tuple(found)


def _unreachable(exc: BaseException) -> bool:
    """The Hub could not be asked (offline mode, no connection, timeout, a 5xx answer): the
    cache may still serve the request."""
    errors = _hub().errors
    if isinstance(exc, (errors.OfflineModeIsEnabled, *_transport_errors())):
        return True
    response = getattr(exc, "response", None)
    return isinstance(exc, errors.HfHubHTTPError) and getattr(response, "status_code", 0) >= 500


def _hub_error(exc: Exception, source: str, filename: str | None, revision: str | None,
               action: str = "fetch"):
    hub = _hub()
    errors = hub.errors
    where = f"{filename!r} in " if filename else ""
    rev = f" at revision {str(revision)!r}" if revision else ""
    status = getattr(getattr(exc, "response", None), "status_code", None)
    # Local-cache misses first: huggingface_hub's LocalEntryNotFoundError is also an
    # EntryNotFoundError, and means "not downloaded", not "absent from the repo".
    not_cached = (errors.LocalEntryNotFoundError, errors.OfflineModeIsEnabled,
                  getattr(errors, "RevisionResolutionError", errors.LocalEntryNotFoundError))
    if isinstance(exc, not_cached):
        msg = (f"{where}{source!r}{rev} is not in the local cache and downloads are off "
               f"(offline mode or local_files_only=True) or the Hub cannot be reached; "
               f"download it once while online")
    elif isinstance(exc, errors.RepositoryNotFoundError):
        msg = f"Hub repo {source!r} does not exist or is private (pass token= if it is yours)"
    elif isinstance(exc, errors.RevisionNotFoundError):
        msg = f"revision {str(revision)!r} does not exist in Hub repo {source!r}"
    elif isinstance(exc, errors.EntryNotFoundError):
        msg = f"{where}Hub repo {source!r}{rev} does not exist"
    elif status in (401, 403):
        msg = (f"the Hub refused to {action} {where}{source!r}{rev} (HTTP {status}): log in "
               f"(`hf auth login` or the HF_TOKEN variable) or pass token= with write access")
    elif _unreachable(exc):
        msg = (f"could not {action} {where}{source!r}{rev}: the Hub at "
               f"{hub.constants.ENDPOINT} cannot be reached or failed ({type(exc).__name__}: "
               f"{exc}); retry, or set HF_HUB_OFFLINE=1 to use what is cached")
    else:
        msg = f"could not {action} {where}{source!r}{rev}: {type(exc).__name__}: {exc}"
    return FileAccessError(msg)


def _offline(local_files_only: bool | None) -> bool:
    return bool(local_files_only) or bool(_hub().constants.HF_HUB_OFFLINE)


def _commit_of(revision: str | None) -> str | None:
    """The commit id a pinned revision (see ``pin_revision``) stands for, else the revision."""
    return getattr(revision, "resolved", revision)


def pin_revision(
    source: str | os.PathLike,
    revision: str | None = None,
    cache_dir: str | os.PathLike | None = None,
    local_files_only: bool | None = None,
    token: str | bool | None = None,
) -> str | None:
    """For a Hub repo: ``revision`` (branch, tag or commit; default the main branch) pinned to
    the commit it names now, so that every file of one load comes from that commit even if the
    repo changes meanwhile (offline: the commit the cache recorded for it). Pass the result as
    ``revision`` to ``list_files``/``fetch``/``resolve_file``. Local folders: ``revision`` as is.
    """
    if is_local(source):
        return revision
    source = _validate_repo_id(source)
    api = _hub().HfApi()
    if not hasattr(api, "resolve_revision"):  # huggingface_hub < 2: each request resolves anew
        return revision
    try:
        return api.resolve_revision(source, revision=revision, cache_dir=cache_dir,
                                    local_files_only=_offline(local_files_only), token=token)
    except Exception as exc:
        raise _hub_error(exc, source, None, revision) from exc


def _cached_listing(source: str, revision: str | None,
                    cache_dir: str | os.PathLike | None) -> list[str] | None:
    """What the cache knows a repo revision holds: the tree listing saved by an earlier download,
    else the files of its cached snapshot; None if nothing is cached."""
    hub = _hub()
    with contextlib.suppress(Exception):  # no tree listing cached (or huggingface_hub < 2)
        tree = hub.get_cached_repo_tree(source, revision=revision, cache_dir=cache_dir)
        return sorted(f.path for f in tree)
    with contextlib.suppress(Exception):
        snapshot = Path(hub.snapshot_download(source, revision=revision, cache_dir=cache_dir,
                                              local_files_only=True))
        return sorted(p.relative_to(snapshot).as_posix() for p in snapshot.rglob("*")
                      if p.is_file())
    return None


def _pattern(name: str) -> str:
    """A file name as an fnmatch pattern that matches only itself (``allow_patterns``)."""
    return "".join(f"[{c}]" if c in "*?[]" else c for c in name)


def resolve_file(
    source: str | os.PathLike,
    filename: str,
    subfolder: str | None = None,
    revision: str | None = None,
    cache_dir: str | os.PathLike | None = None,
    local_files_only: bool | None = None,
    token: str | bool | None = None,
    force_download: bool = False,
) -> Path:
    """The local path of ``subfolder/filename`` in a folder or Hub repo (downloaded if needed)."""
    relative = _join(subfolder, filename)
    if is_local(source):
        path = Path(source) / relative
        if not path.is_file():
            raise FileAccessError(f"{relative!r} not found in folder {os.fspath(source)!r}")
        return path
    source = _validate_repo_id(source)
    try:
        return Path(_hub().hf_hub_download(
            source, relative, revision=revision, cache_dir=cache_dir,
            local_files_only=bool(local_files_only), token=token, force_download=force_download,
        ))
    except Exception as exc:
        raise _hub_error(exc, source, relative, revision) from exc


def list_files(
    source: str | os.PathLike,
    revision: str | None = None,
    cache_dir: str | os.PathLike | None = None,
    local_files_only: bool | None = None,
    token: str | bool | None = None,
) -> list[str]:
    """Every file of a folder or Hub repo, as POSIX paths relative to its root."""
    if is_local(source):
        root = Path(source)
        return sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())
    source = _validate_repo_id(source)
    commit = _commit_of(revision)
    if commit is not revision or (commit and re.fullmatch(r"[0-9a-f]{40}", commit)):
        cached = _cached_listing(source, revision, cache_dir)  # a commit never changes
        if cached is not None:
            return cached
    error: Exception | None = None
    if not _offline(local_files_only):
        try:
            return sorted(_hub().HfApi().list_repo_files(source, revision=commit, token=token))
        except Exception as exc:
            if not _unreachable(exc):
                raise _hub_error(exc, source, None, revision) from exc
            error = exc
    cached = _cached_listing(source, revision, cache_dir)
    if cached is None:
        raise _hub_error(error or _hub().errors.LocalEntryNotFoundError("not cached"), source,
                         None, revision) from error
    return cached


def fetch(
    source: str | os.PathLike,
    filenames: Iterable[str],
    revision: str | None = None,
    cache_dir: str | os.PathLike | None = None,
    local_files_only: bool | None = None,
    token: str | bool | None = None,
) -> Path:
    """Make ``filenames`` of a source available locally; returns the root folder that holds them."""
    names = [check_relative_path(n) for n in filenames]
    if is_local(source):
        return Path(source)
    source = _validate_repo_id(source)
    try:
        return Path(_hub().snapshot_download(
            source, revision=revision, cache_dir=cache_dir,
            allow_patterns=[_pattern(n) for n in names],
            local_files_only=_offline(local_files_only), token=token,
        ))
    except Exception as exc:
        what = ", ".join(names[:5]) + (f" and {len(names) - 5} more" if len(names) > 5 else "")
        raise _hub_error(exc, source, None, revision, action=f"download {what} from") from exc


# Saving ----------------------------------------------------------------------------------------
def default_file_mode() -> int:
    """The mode a plainly created file gets (0o644 under the usual umask); temporary files are
    created 0o600, and a checkpoint must not stay unreadable to other users after its rename."""
    return 0o666 & ~_umask()


def _umask() -> int:
    # Linux reports the umask in /proc; setting it to read it back (the portable way) would, for
    # an instant, let files other threads create then get mode 0o666.
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    umask = os.umask(0o077)  # the briefly set value errs on the private side
    os.umask(umask)
    return umask


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write a text file so that readers see the old or the new content, never half of it."""
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write a file through a temporary sibling renamed into place (never half-written)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".partial", dir=path.parent)
    try:
        os.fchmod(fd, default_file_mode())
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


@contextlib.contextmanager
def atomic_directory(
    target: str | os.PathLike, replaces: Callable[[str], bool] = lambda name: False
) -> Iterator[Path]:
    """Yield a staging folder; on success it replaces ``target`` in one swap.

    Files already in ``target`` that the save does not write (a README, other components) are kept
    (hard-linked into the new folder), except top-level names for which ``replaces(name)`` is true
    (stale shards of an older checkpoint, say). If the save raises, ``target`` is untouched and the
    staging folder removed.
    """
    target = Path(target).absolute()
    target.parent.mkdir(parents=True, exist_ok=True)
    token = uuid.uuid4().hex[:8]
    staging = target.parent / f".{target.name}.partial-{token}"
    staging.mkdir()
    try:
        yield staging
        mode = default_file_mode()
        for written in staging.rglob("*"):
            if written.is_file() and not written.is_symlink():
                written.chmod(mode)
        if target.exists():
            if not target.is_dir():
                raise FileAccessError(f"cannot save into {target}: it is a file, not a folder")
            _link_missing(target, staging, replaces)
            old = target.parent / f".{target.name}.old-{token}"
            os.rename(target, old)
            os.rename(staging, target)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.rename(staging, target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def _link_missing(src: Path, dst: Path, replaces: Callable[[str], bool] = lambda n: False) -> None:
    for item in src.iterdir():
        if replaces(item.name) or item.name.startswith(".") and (
            ".partial-" in item.name or ".old-" in item.name
        ):
            continue
        out = dst / item.name
        if item.is_dir() and not item.is_symlink():
            if out.exists():
                _link_missing(item, out)
            else:
                shutil.copytree(item, out, copy_function=_link_or_copy, symlinks=True)
        elif not out.exists() and not out.is_symlink():
            _link_or_copy(item, out)


def _link_or_copy(src, dst) -> None:
    try:
        os.link(src, dst, follow_symlinks=False)
    except OSError:
        shutil.copy2(src, dst, follow_symlinks=False)


# Pushing -----------------------------------------------------------------------------------------
def upload_folder(
    folder: str | os.PathLike,
    repo_id: str,
    commit_message: str,
    private: bool | None = None,
    token: str | bool | None = None,
    revision: str | None = None,
    create_pr: bool = False,
) -> str:
    """Upload a folder to Hub repo ``repo_id`` (created if missing; ``revision`` names a branch,
    created from main if missing) in one commit; returns the commit URL."""
    _validate_repo_id(repo_id)
    api = _hub().HfApi(token=token)
    try:
        repo_id = api.create_repo(repo_id, private=private, exist_ok=True).repo_id
        if revision is not None and not create_pr:
            api.create_branch(repo_id, branch=revision, exist_ok=True)
        info = api.upload_folder(repo_id=repo_id, folder_path=os.fspath(folder),
                                 revision=revision, create_pr=create_pr,
                                 commit_message=commit_message)
    except Exception as exc:
        raise _hub_error(exc, repo_id, None, revision, action="push to") from exc
    return str(info)


_PUSH_OPTIONS = ("repo_id", "commit_message", "private", "token", "revision", "create_pr")


class PushToHubMixin:
    """``push_to_hub(repo_id)`` for anything that can save itself into a folder."""

    def _save_for_push(self, folder: str | os.PathLike, variant: str | None = None) -> None:
        self.save_pretrained(folder, variant=variant)

    def push_to_hub(
        self,
        repo_id: str,
        commit_message: str | None = None,
        private: bool | None = None,
        token: str | bool | None = None,
        revision: str | None = None,
        variant: str | None = None,
        create_pr: bool = False,
    ) -> str:
        """Save into a temporary folder and upload it to ``repo_id`` (created if missing) in one
        commit; returns the commit URL."""
        _validate_repo_id(repo_id)
        with tempfile.TemporaryDirectory() as folder:
            self._save_for_push(folder, variant=variant)
            return upload_folder(folder, repo_id,
                                 commit_message or f"Upload {type(self).__name__}",
                                 private=private, token=token, revision=revision,
                                 create_pr=create_pr)

    def _push_saved_folder(self, save_directory: str | os.PathLike, **options) -> str:
        """``save_pretrained(folder, push_to_hub=True, repo_id=..., ...)``: upload the folder just
        saved. As in diffusers, the repo id defaults to the folder's name."""
        unknown = sorted(set(options) - set(_PUSH_OPTIONS))
        if unknown:
            raise ConfigError(f"save_pretrained(push_to_hub=True) got unknown options {unknown}; "
                              f"it takes {list(_PUSH_OPTIONS)}")
        repo_id = options.pop("repo_id", None) or Path(save_directory).absolute().name
        message = options.pop("commit_message", None) or f"Upload {type(self).__name__}"
        return upload_folder(save_directory, repo_id, message, **options)
