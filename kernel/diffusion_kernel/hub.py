"""Every file access, local or Hub, in one place; and the one way to save atomically.

A *source* is a local folder or a Hub repo id. ``resolve_file`` gives the local path of one file
of it (downloading just that file), ``list_files`` what the source holds, ``fetch`` a set of files.
Saving goes through ``atomic_directory``: a crash mid-save leaves the previous content intact.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import uuid
from pathlib import Path, PurePosixPath
from typing import Callable, Iterable, Iterator

from .errors import FileAccessError


def _hub():
    import huggingface_hub

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


def _validate_repo_id(source: str) -> None:
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


def _hub_error(exc: Exception, source: str, filename: str | None, revision: str | None):
    hub = _hub()
    errors = hub.errors
    where = f"{filename!r} in " if filename else ""
    rev = f" at revision {revision!r}" if revision else ""
    if isinstance(exc, errors.RepositoryNotFoundError):
        msg = f"Hub repo {source!r} does not exist or is private (pass token= if it is yours)"
    elif isinstance(exc, errors.RevisionNotFoundError):
        msg = f"revision {revision!r} does not exist in Hub repo {source!r}"
    elif isinstance(exc, errors.EntryNotFoundError):
        msg = f"{where}Hub repo {source!r}{rev} does not exist"
    elif isinstance(exc, errors.LocalEntryNotFoundError):
        msg = (f"{where}{source!r}{rev} is not in the local cache and downloads are off "
               f"(offline mode or local_files_only=True); download it once while online")
    else:
        msg = f"could not fetch {where}{source!r}{rev}: {type(exc).__name__}: {exc}"
    return FileAccessError(msg)


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
    source = os.fspath(source)
    _validate_repo_id(source)
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
    source = os.fspath(source)
    _validate_repo_id(source)
    hub = _hub()
    offline = local_files_only or hub.constants.HF_HUB_OFFLINE
    try:
        if offline:  # the cached snapshot of that revision is all we know
            snapshot = Path(hub.snapshot_download(
                source, revision=revision, cache_dir=cache_dir, local_files_only=True, token=token,
            ))
            return sorted(p.relative_to(snapshot).as_posix() for p in snapshot.rglob("*")
                          if p.is_file())
        return sorted(hub.HfApi().list_repo_files(source, revision=revision, token=token))
    except Exception as exc:
        raise _hub_error(exc, source, None, revision) from exc


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
    source = os.fspath(source)
    _validate_repo_id(source)
    try:
        return Path(_hub().snapshot_download(
            source, revision=revision, cache_dir=cache_dir, allow_patterns=names,
            local_files_only=bool(local_files_only), token=token,
        ))
    except Exception as exc:
        raise _hub_error(exc, source, None, revision) from exc


# Saving ----------------------------------------------------------------------------------------
def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write a text file so that readers see the old or the new content, never half of it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".partial", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
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
    (stale shards of an older checkpoint, say). If the save raises, ``target`` is untouched and the staging
    folder removed.
    """
    target = Path(target).absolute()
    target.parent.mkdir(parents=True, exist_ok=True)
    token = uuid.uuid4().hex[:8]
    staging = target.parent / f".{target.name}.partial-{token}"
    staging.mkdir()
    try:
        yield staging
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
        hub = _hub()
        api = hub.HfApi(token=token)
        try:
            api.create_repo(repo_id, private=private, exist_ok=True)
            if revision is not None:
                api.create_branch(repo_id, branch=revision, exist_ok=True)
            with tempfile.TemporaryDirectory() as folder:
                self._save_for_push(folder, variant=variant)
                info = api.upload_folder(
                    repo_id=repo_id, folder_path=folder, revision=revision, create_pr=create_pr,
                    commit_message=commit_message or f"Upload {type(self).__name__}",
                )
        except Exception as exc:
            raise _hub_error(exc, repo_id, None, revision) from exc
        return str(info)
