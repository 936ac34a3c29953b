"""What a save killed part-way leaves beside its folder, found and put right on the next save or
load of that folder.

A save (``hub.atomic_directory``) writes into ``.<name>.partial-<id>`` next to the folder, then
swaps it in with two renames (``<name>`` -> ``.<name>.old-<id>``, ``.<name>.partial-<id>`` ->
``<name>``) and deletes the old copy. Killed part-way, it leaves:

- ``.<name>.partial-<id>``: a save that never finished (up to a full copy of the model): removed;
- ``.<name>.old-<id>`` beside ``<name>``: the previous copy of a save that finished: removed;
- ``.<name>.old-<id>`` and no ``<name>``: killed between the two renames. The old copy is the
  last complete save: it is moved back to ``<name>`` (the newest one, if there are several).

Each is reported with a warning. A save in progress holds a shared ``flock`` on its staging
folder and on the folder it moves aside; a folder whose lock can be taken exclusively belongs to
no running save (a lock dies with its process, however it is killed). Without ``fcntl`` (Windows)
only debris older than an hour is touched.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import time
import uuid
import warnings
from collections.abc import Iterator
from pathlib import Path

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None

_DEBRIS = re.compile(r"\.(?P<name>.+)\.(?P<kind>partial|old)-(?P<token>[0-9a-f]{8})")
_UNLOCKED_AGE_S = 3600  # without fcntl: how old debris must be to count as abandoned


def is_debris(name: str) -> bool:
    return _DEBRIS.fullmatch(name) is not None


# Marking a save's folders as in use -------------------------------------------------------------
@contextlib.contextmanager
def held(folder: Path) -> Iterator[None]:
    """Hold a shared lock on ``folder`` (its inode: the lock follows a rename)."""
    fd = _lock(folder)
    try:
        yield
    finally:
        if fd is not None:
            os.close(fd)


def _lock(folder: Path) -> int | None:
    if fcntl is None:  # no directory locks: debris is judged by its age instead
        return None
    fd = os.open(folder, os.O_RDONLY)
    fcntl.flock(fd, fcntl.LOCK_SH)
    return fd


@contextlib.contextmanager
def staging_folder(target: Path) -> Iterator[tuple[Path, str]]:
    """A new ``.<name>.partial-<id>`` beside ``target``, held (see ``held``) while the save runs,
    and removed if the save raises. Yields the folder and its id."""
    while True:
        token = uuid.uuid4().hex[:8]
        staging = target.parent / f".{target.name}.partial-{token}"
        staging.mkdir()
        fd = _lock(staging)
        # A cleanup in another process may have taken the folder for debris between the mkdir
        # and the lock: if it is gone, start over under a new name.
        with contextlib.suppress(FileNotFoundError):
            if fd is None or os.path.samestat(os.fstat(fd), os.stat(staging)):
                break
        os.close(fd)
    try:
        yield staging, token
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    finally:
        if fd is not None:
            os.close(fd)


def _abandoned(path: Path) -> bool:
    """True if no running save holds ``path`` (and then nothing can start holding it: the names
    are never reused)."""
    if fcntl is None:
        return time.time() - path.lstat().st_mtime > _UNLOCKED_AGE_S
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except OSError:
        return False
    finally:
        os.close(fd)


# Putting things right -----------------------------------------------------------------------------
def recover(folder: str | os.PathLike) -> None:
    """Clean up after interrupted saves of ``folder`` (debris beside it) and of its subfolders
    (debris inside it), restoring a folder whose save was killed between its two renames."""
    folder = Path(folder).absolute()
    for parent, only in ((folder.parent, folder.name), (folder, None)):
        for name, entries in _debris_in(parent, only).items():
            _recover_one(parent / name, entries)


def _debris_in(parent: Path, only: str | None) -> dict[str, list[tuple[str, Path]]]:
    found: dict[str, list[tuple[str, Path]]] = {}
    try:
        names = os.listdir(parent)
    except OSError:  # not a folder, or not readable: nothing to do
        return found
    for name in names:
        match = _DEBRIS.fullmatch(name)
        if match and (only is None or match["name"] == only):
            found.setdefault(match["name"], []).append((match["kind"], parent / name))
    return found


def _recover_one(target: Path, entries: list[tuple[str, Path]]) -> None:
    abandoned = [(kind, path) for kind, path in entries if _abandoned(path)]
    if len(abandoned) < len(entries):
        return  # a save of this folder is running: it will leave things in order
    done = []
    olds = sorted((p for kind, p in abandoned if kind == "old"),
                  key=lambda p: p.lstat().st_ctime)  # ctime: when it was renamed aside
    if olds and not target.exists():
        restored = olds.pop()
        try:
            os.rename(restored, target)
            done.append(f"moved {restored.name} back to {target.name} (the last complete "
                        f"save: the save that replaced it was killed between its two renames)")
        except OSError as exc:
            done.append(f"could not move {restored.name} back to {target.name}: {exc}")
    for kind, path in abandoned:
        if path.exists() and (kind == "partial" or path in olds):
            what = ("an unfinished save" if kind == "partial"
                    else "the previous copy of a finished save")
            size = _size(path)
            shutil.rmtree(path, ignore_errors=True)
            done.append(f"removed {path.name} ({what}, {size / 1e6:.1f} MB)"
                        + (" -- could not remove it" if path.exists() else ""))
    if done:
        warnings.warn(f"{target}: found what interrupted saves left behind; "
                      + "; ".join(done), stacklevel=4)


def _size(folder: Path) -> int:
    total = 0
    for root, _, files in os.walk(folder):
        for name in files:
            with contextlib.suppress(OSError):
                total += os.lstat(os.path.join(root, name)).st_size
    return total
