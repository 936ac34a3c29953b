"""Writing what a pipeline returns to disk, for ``diffusion-kernel generate``.

A plugin registers one ``OutputWriter`` subclass per output field it knows (``images`` -> PNG,
``audios`` -> WAV...) through the ``register_output_writers`` hook. ``--out`` is either

- a file whose suffix the writer lists in ``suffixes``: every sample in that one file (a grid of
  images, a multi-molecule SDF), written atomically, replacing an older file of that name whole;
- a folder (an existing folder, or a path without a suffix): one file per sample, named
  ``0000<sample_suffix>``, ``0001...``, plus the writer's ``extras`` (e.g. ``grid.png``).

A folder that already holds samples (files named like the writer's) is refused unless
``overwrite`` is set, which removes those samples first, so old and new samples never sit side by
side; files of other names in the folder are never touched. Every check runs in ``plan_output``,
before any sampling.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import FileAccessError


class OutputWriter:
    """Base of output writers. Subclasses set ``suffixes`` (one-file forms, e.g. ``(".png",)``;
    empty: folders only), ``sample_suffix`` and ``extras``, and implement ``write_sample`` (and
    ``write_file`` if ``suffixes`` is not empty, ``write_extras`` if ``extras`` is not)."""

    suffixes: tuple[str, ...] = ()
    sample_suffix: str = ""
    extras: tuple[str, ...] = ()
    description: str = "samples"

    def select(self, output: Any, field: str) -> Any:
        """What this writer takes from the pipeline's output (default: the field ``field``); a
        writer that needs more than its field overrides it (WAV files need the sample rate)."""
        return getattr(output, field)

    def samples(self, value: Any) -> Sequence[Any]:
        """The pipeline output field as a sequence of samples (default: as is)."""
        return value

    def write_file(self, samples: Sequence[Any], path: Path) -> None:
        raise NotImplementedError(f"{type(self).__name__} writes folders only")

    def write_sample(self, sample: Any, path: Path) -> None:
        raise NotImplementedError

    def write_extras(self, samples: Sequence[Any], folder: Path) -> None:
        """Write the files named in ``extras`` into ``folder`` (default: none)."""

    def what_it_writes(self) -> str:
        files = " or ".join(f"a {s} file" for s in self.suffixes)
        folder = f"a folder of {self.sample_suffix} files"
        return f"{files} or {folder}" if files else folder

    def owns(self, name: str) -> bool:
        """Whether a file in an output folder is a sample this writer wrote (or would write)."""
        return name in self.extras or re.fullmatch(r"\d{4,}" + re.escape(self.sample_suffix),
                                                   name) is not None


@dataclass(frozen=True)
class OutputPlan:
    """Where and how ``write_output`` writes: ``folder`` or one file at ``path``."""

    path: Path
    folder: bool
    stale: tuple[str, ...] = ()


def plan_output(writer: OutputWriter, out: str | os.PathLike, overwrite: bool = False,
                option: str = "--out") -> OutputPlan:
    """Check ``out`` against what ``writer`` writes, before any work: a file form with a suffix
    the writer does not write, a folder path that is a file, or a folder holding older samples
    (without ``overwrite``) raise ``FileAccessError`` saying what to do."""
    path = Path(out)
    if path.is_dir():
        return _plan_folder(writer, path, overwrite, option)
    if path.suffix:
        if path.suffix.lower() not in writer.suffixes:
            raise FileAccessError(
                f"{option} {path}: this output ({writer.description}) is written as "
                f"{writer.what_it_writes()}, not as {path.suffix}; end {option} with "
                f"{' or '.join(writer.suffixes) or 'no suffix (a folder)'}")
        if path.exists() and not path.is_file():
            raise FileAccessError(f"{option} {path} exists and is not a file; choose another "
                                  f"name")
        return OutputPlan(path, folder=False)
    if path.exists():
        raise FileAccessError(f"{option} {path} names an existing file that is not a folder; "
                              f"pass a new folder name, or a file name ending in "
                              f"{' or '.join(writer.suffixes) or '(none: folders only)'}")
    return OutputPlan(path, folder=True)


def _plan_folder(writer: OutputWriter, path: Path, overwrite: bool, option: str) -> OutputPlan:
    stale = tuple(sorted(p.name for p in path.iterdir() if p.is_file() and writer.owns(p.name)))
    if stale and not overwrite:
        shown = ", ".join(stale[:3]) + (", ..." if len(stale) > 3 else "")
        raise FileAccessError(
            f"{option} {path} already holds {len(stale)} samples ({shown}) from an earlier run; "
            f"pass --overwrite to replace them (only files named like samples are removed), or "
            f"choose a new folder")
    return OutputPlan(path, folder=True, stale=stale)


def write_output(writer: OutputWriter, value: Any, plan: OutputPlan) -> str:
    """Write a pipeline output field as planned; returns a line saying what was written."""
    samples = writer.samples(value)
    if not plan.folder:
        _write_atomically(lambda p: writer.write_file(samples, p), plan.path)
        return f"wrote {len(samples)} {writer.description} to {plan.path}"
    plan.path.mkdir(parents=True, exist_ok=True)
    for name in plan.stale:  # checked in plan_output: only the writer's own files
        (plan.path / name).unlink(missing_ok=True)
    for i, sample in enumerate(samples):
        _write_atomically(lambda p, s=sample: writer.write_sample(s, p),
                          plan.path / f"{i:04d}{writer.sample_suffix}")
    writer.write_extras(samples, plan.path)
    extras = f" and {', '.join(writer.extras)}" if writer.extras else ""
    return f"wrote {len(samples)} {writer.description}{extras} to {plan.path}/"


def _write_atomically(write, path: Path) -> None:
    """Let ``write`` fill a temporary file beside ``path`` (same suffix, so libraries that pick
    the format from the name pick the right one), then rename it into place: a reader never sees
    half a file, and an error leaves the older file as it was."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.partial-{os.getpid()}{path.suffix}")
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
