"""Are these the bytes that were saved, or that the Hub published? Hashes recorded and checked.

- **Saved folders.** Every save (``hub.atomic_directory``) writes ``SHA256SUMS`` into the folder:
  one line ``<sha256>  <path>`` per file, the format ``sha256sum -c SHA256SUMS`` checks. It lists
  the files under that folder except those of a subfolder with its own ``SHA256SUMS`` (a pipeline
  component saved by its own ``save_pretrained``). diffusers ignores the file.
- **Hub downloads.** The Hub publishes a hash for every file it serves: its ETag, which
  ``huggingface_hub`` names the cached blob after (the sha256 for files stored in LFS, the git
  blob id for the others). A snapshot file links to that blob, so the cache itself records what
  the Hub published.

``check_files`` compares files with their recorded hashes; reading each file once is its cost.
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from .errors import CheckpointError

MANIFEST = "SHA256SUMS"
_CHUNK = 16 * 1024 * 1024
_LINE = re.compile(r"([0-9a-f]{64}) [ *](.+)")


def file_sha256(path: str | os.PathLike) -> str:
    return _digest(path, hashlib.sha256())


def git_blob_id(path: str | os.PathLike) -> str:
    """The git object id of a file: sha1 of ``blob <size>\\0`` and the content."""
    return _digest(path, hashlib.sha1(b"blob %d\0" % os.path.getsize(path)))


def _digest(path, digest) -> str:
    with open(path, "rb", buffering=0) as f:
        buffer = bytearray(_CHUNK)
        view = memoryview(buffer)
        while n := f.readinto(buffer):
            digest.update(view[:n])  # hashlib releases the GIL on large updates
    return digest.hexdigest()


# SHA256SUMS ------------------------------------------------------------------------------------
def read_manifest(folder: Path) -> dict[str, str]:
    """``{relative path: sha256}`` from ``folder/SHA256SUMS`` (empty if there is none)."""
    path = folder / MANIFEST
    if not path.is_file():
        return {}
    entries = {}
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        match = _LINE.fullmatch(line)
        if match is None:
            raise CheckpointError(f"{path}, line {number}, is not '<sha256>  <file>': {line!r}; "
                                  f"the hash record is damaged (save the folder again)")
        entries[match.group(2)] = match.group(1)
    return entries


def manifest_text(folder: Path, known: dict[str, str]) -> str:
    """The ``SHA256SUMS`` of a folder: hashes from ``known`` where given (files kept from an
    earlier save, already recorded), the others computed."""
    lines = []
    for path in sorted(recorded_files(folder)):
        relative = path.relative_to(folder).as_posix()
        lines.append(f"{known.get(relative) or file_sha256(path)}  {relative}\n")
    return "".join(lines)


def recorded_files(folder: Path) -> Iterator[Path]:
    """The files a ``SHA256SUMS`` in ``folder`` covers: all below it, except the record itself,
    links, and subfolders that keep their own record."""
    return _files_below(folder, skip=MANIFEST)


def _files_below(folder: Path, skip: str | None = None) -> Iterator[Path]:
    """The files below ``folder`` but the entry named ``skip``, links and subfolders with a
    record of their own."""
    for entry in sorted(folder.iterdir()):
        if entry.is_symlink() or entry.name == skip:
            continue
        if entry.is_dir():
            if not (entry / MANIFEST).is_file():
                yield from _files_below(entry)
        elif entry.is_file():
            yield entry


# Checking ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class FileCheck:
    """The outcome for one file: ``status`` is "ok", "corrupt", "missing" (recorded, not on
    disk) or "unrecorded" (no hash to compare with); ``kind`` names the hash."""

    path: str
    status: str
    kind: str | None = None
    expected: str | None = None
    actual: str | None = None

    def describe(self) -> str:
        if self.status == "corrupt":
            return (f"{self.path}: {self.kind} is {self.actual[:16]}... but "
                    f"{self.expected[:16]}... was recorded")
        return f"{self.path}: {self.status}"


def recorded_hash(root: Path, relative: str) -> tuple[str, str] | None:
    """``("sha256", hex)`` for ``root/relative`` from the nearest ``SHA256SUMS`` at or above its
    folder (up to ``root``) that lists it; else, for a Hub cache snapshot, the hash the blob it
    links to is named after; else None."""
    path = root / relative
    folder = path.parent
    while True:
        listed = read_manifest(folder).get(path.relative_to(folder).as_posix())
        if listed is not None:
            return "sha256", listed
        if folder == root or root not in folder.parents:
            break
        folder = folder.parent
    return published_hash(path)


def published_hash(path: Path) -> tuple[str, str] | None:
    """For a Hub cache snapshot file (a link to a blob named after the Hub's ETag): the sha256
    of an LFS file, or the git blob id of a regular one."""
    if not path.is_symlink():
        return None
    name = Path(os.readlink(path)).name
    if re.fullmatch(r"[0-9a-f]{64}", name):
        return "sha256", name
    if re.fullmatch(r"[0-9a-f]{40}", name):
        return "git blob id", name
    return None


def check_file(root: Path, relative: str) -> FileCheck:
    recorded = recorded_hash(root, relative)
    if recorded is None:
        return FileCheck(relative, "unrecorded")
    kind, expected = recorded
    path = root / relative
    if not path.is_file():
        return FileCheck(relative, "missing", kind, expected)
    actual = file_sha256(path) if kind == "sha256" else git_blob_id(path)
    return FileCheck(relative, "ok" if actual == expected else "corrupt", kind, expected, actual)


def check_files(root: Path, names: Iterable[str]) -> list[FileCheck]:
    return [check_file(root, name) for name in names]


def check_folder(root: Path) -> list[FileCheck]:
    """Every file under ``root`` and every file a ``SHA256SUMS`` below it records."""
    names = {p.relative_to(root).as_posix() for p in root.rglob("*")
             if (p.is_file() or p.is_symlink()) and p.name != MANIFEST}
    for manifest in root.rglob(MANIFEST):
        folder = manifest.parent
        names |= {(folder / n).relative_to(root).as_posix() for n in read_manifest(folder)}
    return check_files(root, sorted(names))


def require_intact(checks: list[FileCheck], where: str) -> None:
    """Raise ``CheckpointError`` unless every file checked is as recorded."""
    bad = [c for c in checks if c.status != "ok"]
    if not bad:
        return
    if all(c.status == "unrecorded" for c in bad):
        raise CheckpointError(
            f"cannot verify {where}: no hash is recorded for {', '.join(c.path for c in bad)} "
            f"(diffusion-kernel records them in {MANIFEST} when it saves; record them for a "
            f"folder saved elsewhere that you trust with `diffusion-kernel verify --record "
            f"FOLDER`, or load without verify=True)")
    raise CheckpointError(
        f"{where} does not match its recorded hashes: "
        f"{'; '.join(c.describe() for c in bad)}. The files changed after they were saved or "
        f"downloaded (a disk error, a partial copy, an edit); restore them from their source")
