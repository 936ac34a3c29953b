"""Every file access, local or Hub, in one place; and the one way to save atomically.

A *source* is a local folder or a Hub repo id. ``resolve_file`` gives the local path of one file
of it (downloading just that file), ``list_files`` what the source holds, ``fetch`` a set of files.
Saving goes through ``atomic_directory``: a crash mid-save leaves the previous content intact.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import tempfile
import time
import warnings
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path, PurePosixPath
from typing import Any

from . import integrity, interrupted_saves
from .errors import CheckpointError, ConfigError, FileAccessError


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


# How a request to the Hub failed, and retrying the failures that pass -----------------------------
OFFLINE, UNREACHABLE, SERVER = "offline", "unreachable", "server error"
# A request the Hub answers with a server error (5xx, 408, 429) or whose connection drops
# mid-answer is tried RETRY_ATTEMPTS times in all, waiting RETRY_BACKOFF_S, then twice that...
# An unreachable Hub (no network, DNS failure, connection refused) is not retried: the cache
# answers at once, or the error says so.
RETRY_ATTEMPTS = 3
RETRY_BACKOFF_S = 1.0
_UNREACHABLE_ERRORS = ("ConnectError", "ConnectTimeout", "gaierror", "ConnectionRefusedError",
                       "NewConnectionError", "NameResolutionError")
_DROPPED_ERRORS = ("RemoteProtocolError", "ReadError", "ReadTimeout", "WriteError",
                   "WriteTimeout", "RemoteDisconnected", "ConnectionResetError",
                   "ChunkedEncodingError", "IncompleteRead")


def _causes(exc: BaseException) -> Iterator[BaseException]:
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen and len(seen) < 16:
        seen.add(id(exc))
        yield exc
        exc = exc.__cause__ or exc.__context__


def failure_kind(exc: BaseException) -> str | None:
    """Why a Hub request failed, looking through the exceptions it was raised from: ``OFFLINE``
    (downloads switched off), ``UNREACHABLE`` (no connection to the Hub), ``SERVER`` (the Hub
    answered 5xx/408/429 or dropped the connection mid-answer), or None (any other answer)."""
    errors = _hub().errors
    for cause in _causes(exc):
        names = {c.__name__ for c in type(cause).__mro__}
        if isinstance(cause, errors.OfflineModeIsEnabled):
            return OFFLINE
        if names & set(_UNREACHABLE_ERRORS):
            return UNREACHABLE
        if names & set(_DROPPED_ERRORS):
            return SERVER
        status = getattr(getattr(cause, "response", None), "status_code", None)
        if isinstance(cause, errors.HfHubHTTPError) and status is not None:
            return SERVER if status >= 500 or status in (408, 429) else None
    return None


def _with_retries(call: Callable[[], Any]) -> Any:
    """``call()``, tried again after a server error or a dropped connection (see
    ``RETRY_ATTEMPTS``); the error that ends the tries records how many were made."""
    for attempt in range(1, RETRY_ATTEMPTS + 1):
        try:
            return call()
        except Exception as exc:
            exc.hub_attempts = attempt
            # huggingface_hub retries a file's metadata request and the repo listing itself,
            # then reports LocalEntryNotFoundError: trying those again would multiply the waits.
            retried = isinstance(exc, _hub().errors.LocalEntryNotFoundError)
            if attempt == RETRY_ATTEMPTS or retried or failure_kind(exc) != SERVER:
                raise
        time.sleep(RETRY_BACKOFF_S * 2 ** (attempt - 1))


def _what_failed(exc: BaseException) -> str:
    for cause in _causes(exc):
        status = getattr(getattr(cause, "response", None), "status_code", None)
        if isinstance(cause, _hub().errors.HfHubHTTPError) and status is not None:
            return f"HTTP {status}"
        if failure_kind(cause) in (UNREACHABLE, SERVER) and cause.__cause__ is None:
            return f"{type(cause).__name__}: {cause}"
    return f"{type(exc).__name__}: {exc}"


def _hub_error(exc: Exception, source: str, filename: str | None, revision: str | None,
               action: str = "fetch"):
    hub = _hub()
    errors = hub.errors
    where = f"{filename!r} in " if filename else ""
    rev = f" at revision {str(revision)!r}" if revision else ""
    status = getattr(getattr(exc, "response", None), "status_code", None)
    kind = failure_kind(exc)
    endpoint = hub.constants.ENDPOINT
    # huggingface_hub's LocalEntryNotFoundError is also an EntryNotFoundError; it means "not
    # downloaded", not "absent from the repo", and says nothing of why: its causes do.
    not_cached = (errors.LocalEntryNotFoundError, errors.OfflineModeIsEnabled,
                  getattr(errors, "RevisionResolutionError", errors.LocalEntryNotFoundError))
    if isinstance(exc, errors.RepositoryNotFoundError):
        msg = f"Hub repo {source!r} does not exist or is private (pass token= if it is yours)"
    elif isinstance(exc, errors.RevisionNotFoundError):
        msg = f"revision {str(revision)!r} does not exist in Hub repo {source!r}"
    elif isinstance(exc, errors.EntryNotFoundError) and not isinstance(exc, not_cached):
        msg = f"{where}Hub repo {source!r}{rev} does not exist"
    elif status in (401, 403):
        msg = (f"the Hub refused to {action} {where}{source!r}{rev} (HTTP {status}): log in "
               f"(`hf auth login` or the HF_TOKEN variable) or pass token= with write access")
    elif kind == UNREACHABLE:
        msg = (f"could not {action} {where}{source!r}{rev}: the Hub at {endpoint} cannot be "
               f"reached ({_what_failed(exc)}) and the local cache does not have it; check the "
               f"network connection and HF_ENDPOINT, or set HF_HUB_OFFLINE=1 to work from the "
               f"cache")
    elif kind == SERVER:
        tries = getattr(exc, "hub_attempts", 1)
        tried = (f"{tries} attempts" if tries > 1 else "after huggingface_hub's own retries"
                 if isinstance(exc, errors.LocalEntryNotFoundError) else "1 attempt")
        msg = (f"could not {action} {where}{source!r}{rev}: the Hub at {endpoint} failed with "
               f"a server error ({_what_failed(exc)}; {tried}) and the local cache does not "
               f"have it; try again later")
    elif kind == OFFLINE or isinstance(exc, not_cached):
        msg = (f"{where}{source!r}{rev} is not in the local cache and downloads are off "
               f"(HF_HUB_OFFLINE=1 or local_files_only=True); download it once while online")
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
    repo changes meanwhile (offline, unreachable or failing Hub: the commit the cache recorded
    for it). Pass the result as ``revision`` to ``list_files``/``fetch``/``resolve_file``.
    Local folders: ``revision`` as is.
    """
    recover_interrupted_save(source)  # a load starts here: a folder killed mid-save comes back
    if is_local(source):
        return revision
    source = _validate_repo_id(source)
    api = _hub().HfApi()
    if not hasattr(api, "resolve_revision"):  # huggingface_hub < 2: each request resolves anew
        return revision
    try:
        return _with_retries(lambda: api.resolve_revision(
            source, revision=revision, cache_dir=cache_dir,
            local_files_only=_offline(local_files_only), token=token))
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
    """The local path of ``subfolder/filename`` in a folder or Hub repo (downloaded if needed,
    and then checked against the hash the Hub publishes for it; see ``fetch``)."""
    relative = _join(subfolder, filename)
    recover_interrupted_save(source)
    if is_local(source):
        path = Path(source) / relative
        if not path.is_file():
            raise FileAccessError(f"{relative!r} not found in folder {os.fspath(source)!r}")
        return path
    source = _validate_repo_id(source)
    hub = dict(revision=revision, cache_dir=cache_dir, token=token)
    fresh = force_download or not _is_cached(source, relative, revision, cache_dir)
    try:
        path = Path(_with_retries(lambda: _hub().hf_hub_download(
            source, relative, local_files_only=bool(local_files_only),
            force_download=force_download, **hub)))
    except Exception as exc:
        raise _hub_error(exc, source, relative, revision) from exc
    if fresh:
        _check_downloads(source, path.parents[len(PurePosixPath(relative).parts) - 1],
                         [relative], hub, offline=_offline(local_files_only))
    return path


def list_files(
    source: str | os.PathLike,
    revision: str | None = None,
    cache_dir: str | os.PathLike | None = None,
    local_files_only: bool | None = None,
    token: str | bool | None = None,
) -> list[str]:
    """Every file of a folder or Hub repo, as POSIX paths relative to its root (not counting
    what interrupted saves left in a folder, which is put right first)."""
    recover_interrupted_save(source)
    if is_local(source):
        root = Path(source)
        return sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file()
                      and not any(map(interrupted_saves.is_debris, p.relative_to(root).parts)))
    source = _validate_repo_id(source)
    commit = _commit_of(revision)
    if commit is not revision or (commit and re.fullmatch(r"[0-9a-f]{40}", commit)):
        cached = _cached_listing(source, revision, cache_dir)  # a commit never changes
        if cached is not None:
            return cached
    error: Exception | None = None
    if not _offline(local_files_only):
        try:  # the repo info lists every file in one request, which huggingface_hub
            # does not retry on its own (its tree listing would, for up to 23 s)
            info = _with_retries(lambda: _hub().HfApi().model_info(
                source, revision=commit, token=token))
            return sorted(s.rfilename for s in info.siblings or ())
        except Exception as exc:
            if failure_kind(exc) not in (UNREACHABLE, SERVER):
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
    verify: bool = False,
) -> Path:
    """Make ``filenames`` of a source available locally; returns the root folder that holds them.

    Each file downloaded now is checked against the hash the Hub publishes for it (the sha256
    of an LFS file, the git blob id of another); a mismatch deletes it from the cache and
    downloads it once more, and a second mismatch is a ``FileAccessError``. ``verify=True``
    checks every file asked for, cached ones too, and local folders against their
    ``SHA256SUMS`` (a ``CheckpointError`` if a file differs or has no recorded hash).
    """
    names = [check_relative_path(n) for n in filenames]
    if is_local(source):
        if verify:  # SHA256SUMS files are the record itself
            data = [n for n in names if PurePosixPath(n).name != integrity.MANIFEST]
            integrity.require_intact(integrity.check_files(Path(source), data),
                                     f"folder {os.fspath(source)!r}")
        return Path(source)
    source = _validate_repo_id(source)
    hub = dict(revision=revision, cache_dir=cache_dir, token=token)
    fresh = [n for n in names if not _is_cached(source, n, revision, cache_dir)]
    try:
        root = Path(_with_retries(lambda: _hub().snapshot_download(
            source, allow_patterns=[_pattern(n) for n in names],
            local_files_only=_offline(local_files_only), **hub)))
    except Exception as exc:
        what = ", ".join(names[:5]) + (f" and {len(names) - 5} more" if len(names) > 5 else "")
        raise _hub_error(exc, source, None, revision, action=f"download {what} from") from exc
    _check_downloads(source, root, names if verify else fresh, hub,
                     offline=_offline(local_files_only), verify=verify)
    return root


def _is_cached(source: str, filename: str, revision: str | None, cache_dir) -> bool:
    found = _hub().try_to_load_from_cache(source, filename, cache_dir=cache_dir,
                                          revision=_commit_of(revision))
    return isinstance(found, str)


def _check_downloads(source: str, root: Path, names: list[str], hub: dict[str, Any],
                     offline: bool, verify: bool = False) -> None:
    """Compare files of a cache snapshot with the hashes the Hub published; download a file
    that differs once more (not offline), then give up with an error that says so."""
    for check in integrity.check_files(root, names):
        if check.status == "unrecorded" and verify:
            integrity.require_intact([check], f"{check.path!r} of Hub repo {source!r}")
        if check.status != "corrupt":
            continue
        _forget(root / check.path)
        if offline:
            raise CheckpointError(
                f"the cached {check.path!r} of Hub repo {source!r} is corrupt ({check.describe()}"
                f"); it was deleted from the cache: load once more while online to download it "
                f"again")
        warnings.warn(f"{check.path!r} of Hub repo {source!r} did not match the hash the Hub "
                      f"publishes for it ({check.describe()}); deleted, downloading it again",
                      stacklevel=3)
        try:
            _with_retries(lambda name=check.path: _hub().hf_hub_download(source, name, **hub))
        except Exception as exc:
            raise _hub_error(exc, source, check.path, hub["revision"]) from exc
        again = integrity.check_file(root, check.path)
        if again.status == "corrupt":
            _forget(root / check.path)
            raise FileAccessError(
                f"the Hub at {_hub().constants.ENDPOINT} sent {check.path!r} of {source!r} twice "
                f"with bytes that do not match the {check.kind} it publishes for the file "
                f"({again.describe()}); the download was deleted. The copy on the Hub, or a "
                f"proxy or mirror on the way, is damaged: try again later, or report it")


def _forget(snapshot_file: Path) -> None:
    """Delete a cached file: the snapshot's link and the blob it points to."""
    blob = snapshot_file.resolve() if snapshot_file.is_symlink() else None
    for path in (snapshot_file, blob):
        if path is not None:
            with contextlib.suppress(FileNotFoundError):
                path.unlink()


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
    (stale shards of an older checkpoint, say). The new folder gets a ``SHA256SUMS`` recording
    every file's hash (see ``integrity``); files kept from the old folder keep their recorded
    hash. If the save raises, ``target`` is untouched and the staging folder removed. What an
    earlier save killed part-way left beside ``target`` is cleaned up first (see
    ``interrupted_saves``).
    """
    target = Path(target).absolute()
    target.parent.mkdir(parents=True, exist_ok=True)
    interrupted_saves.recover(target)
    with interrupted_saves.staging_folder(target) as (staging, token):
        yield staging
        mode = default_file_mode()
        for written in staging.rglob("*"):
            if written.is_file() and not written.is_symlink():
                written.chmod(mode)
        if target.exists() and not target.is_dir():
            raise FileAccessError(f"cannot save into {target}: it is a file, not a folder")
        if not target.exists():
            _record_hashes(staging, {})
            os.rename(staging, target)
            return
        _link_missing(target, staging, replaces, top=True)
        _record_hashes(staging, _kept_hashes(target, staging))
        with interrupted_saves.held(target):  # marks the old copy as in use until it is gone
            old = target.parent / f".{target.name}.old-{token}"
            os.rename(target, old)
            try:
                os.rename(staging, target)
            except BaseException:
                os.rename(old, target)
                raise
            shutil.rmtree(old, ignore_errors=True)


def _kept_hashes(old: Path, new: Path) -> dict[str, str]:
    """The recorded hashes of the old folder's files that the new folder keeps as they are.

    A kept file modified after the record was written (another tool rewrote it in place, as
    accelerate's ``save_state`` does with a training state kept inside a pipeline folder) is
    hashed again: only files older than the record keep their recorded hash."""
    try:
        recorded = integrity.read_manifest(old)
        recorded_at = (old / integrity.MANIFEST).stat().st_mtime_ns
    except (CheckpointError, OSError):  # a damaged or missing record: hash the kept files again
        return {}
    return {name: digest for name, digest in recorded.items()
            if (new / name).is_file() and (old / name).is_file()
            and os.path.samefile(new / name, old / name)
            and (old / name).stat().st_mtime_ns < recorded_at}


def _record_hashes(folder: Path, known: dict[str, str]) -> None:
    (folder / integrity.MANIFEST).unlink(missing_ok=True)  # a kept copy of the old record
    atomic_write_text(folder / integrity.MANIFEST, integrity.manifest_text(folder, known))


def record_hashes(folder: str | os.PathLike) -> Path:
    """Write the ``SHA256SUMS`` of a folder saved by another tool (or copied), as a save would:
    what ``verify`` later compares with. Returns its path."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileAccessError(f"cannot record hashes of {os.fspath(folder)!r}: not a folder")
    _record_hashes(folder, {})
    return folder / integrity.MANIFEST


def recover_interrupted_save(folder: str | os.PathLike) -> None:
    """Clean up (with a warning) what saves of ``folder`` or of its subfolders that were killed
    part-way left behind, and put back a folder killed between the two renames of its save."""
    interrupted_saves.recover(folder)


def _link_missing(src: Path, dst: Path, replaces: Callable[[str], bool] = lambda n: False,
                  top: bool = False) -> None:
    for item in src.iterdir():
        if replaces(item.name) or interrupted_saves.is_debris(item.name) or (
                top and item.name == integrity.MANIFEST):
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
                                 commit_message=commit_message,
                                 # the Hub keeps its own hashes of what it stores
                                 ignore_patterns=[integrity.MANIFEST, f"*/{integrity.MANIFEST}"])
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


# Verifying ---------------------------------------------------------------------------------------
def verify(source: str | os.PathLike, revision: str | None = None,
           cache_dir: str | os.PathLike | None = None) -> list[integrity.FileCheck]:
    """Check a local folder, or the cached copy of a Hub repo, against its recorded hashes: the
    ``SHA256SUMS`` files a save wrote, or the hashes the Hub published for what was downloaded.
    Reads every file once; downloads nothing. Returns one ``FileCheck`` per file."""
    recover_interrupted_save(source)
    if is_local(source):
        return integrity.check_folder(Path(source))
    source = _validate_repo_id(source)
    commit = _commit_of(pin_revision(source, revision, cache_dir, local_files_only=True))
    from huggingface_hub.file_download import repo_folder_name

    cache = Path(cache_dir or _hub().constants.HF_HUB_CACHE)
    snapshot = cache / repo_folder_name(repo_id=source, repo_type="model") / "snapshots" / commit
    if not snapshot.is_dir():
        raise FileAccessError(f"Hub repo {source!r} at commit {commit} is not in the cache "
                              f"{cache}; nothing to verify")
    return integrity.check_folder(snapshot)
