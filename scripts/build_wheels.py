"""Build wheels of the kernel and every plugin into one folder (default ``wheelhouse/``).

    python scripts/build_wheels.py [--outdir DIR] [--isolation]

Each distribution is copied to a private staging folder and built there, so the checkout gets no
``build/`` or ``*.egg-info`` folders (an ``.egg-info`` under ``kernel/`` would sit on the editable
install's path and show up as a second ``diffusion-kernel`` distribution) and two builds running at
once cannot trip over each other.

Builds run without isolation (``--no-build-isolation``, with the setuptools already installed) so
they work offline; ``--isolation`` lets pip fetch the build backend into a throwaway environment
instead, which is also what happens when the installed setuptools is too old for the
``build-system.requires`` of our pyproject files.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import tomllib
from importlib import metadata
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
# What never belongs in a wheel's source tree: build leftovers of earlier or editable builds.
JUNK = shutil.ignore_patterns("build", "dist", "*.egg-info", "__pycache__", "*.pyc",
                              ".pytest_cache")
MIN_SETUPTOOLS = (77, 0)  # SPDX ``license = "Apache-2.0"`` strings need setuptools 77


def projects() -> list[Path]:
    """The kernel (repository root) and every plugin folder holding a pyproject.toml."""
    return [REPO, *sorted(p.parent for p in (REPO / "plugins").glob("*/pyproject.toml"))]


def stage(project: Path, staging: Path) -> Path:
    """Copy what building ``project`` needs into ``staging`` and return the copy's folder."""
    target = staging / (project.name if project != REPO else "diffusion-kernel")
    if project != REPO:
        shutil.copytree(project, target, ignore=JUNK)
        return target
    # The root holds the whole repository; its distribution needs only the files its
    # pyproject.toml names: itself, the readme, the licence, and the package folders.
    config = tomllib.loads((project / "pyproject.toml").read_text())
    find = config.get("tool", {}).get("setuptools", {}).get("packages", {}).get("find", {})
    readme = config["project"].get("readme")
    names = ["pyproject.toml", *([readme] if isinstance(readme, str) else []), *find["where"]]
    names += [p.name for p in project.glob("LICEN[CS]E*")]
    target.mkdir(parents=True)
    for name in names:
        source = project / name
        if source.is_dir():
            shutil.copytree(source, target / name, ignore=JUNK)
        else:
            shutil.copy2(source, target / name)
    return target


def setuptools_is_recent() -> bool:
    try:
        version = metadata.version("setuptools")
    except metadata.PackageNotFoundError:
        return False
    parts = tuple(int(p) for p in version.split(".")[:2] if p.isdigit())
    return parts >= MIN_SETUPTOOLS


def start_build(source: Path, outdir: Path, isolation: bool) -> subprocess.Popen:
    command = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet", "--wheel-dir",
               str(outdir), str(source)]
    if not isolation:
        command.insert(4, "--no-build-isolation")
    return subprocess.Popen(command)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--outdir", type=Path, default=REPO / "wheelhouse",
                        help="folder for the wheels (default: wheelhouse/ in the repository)")
    parser.add_argument("--isolation", action="store_true",
                        help="build in isolated environments (fetches setuptools from the index)")
    args = parser.parse_args(argv)
    isolation = args.isolation or not setuptools_is_recent()
    args.outdir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="dk-wheels-") as tmp:
        # The builds are independent: run them side by side.
        builds = [start_build(stage(project, Path(tmp)), args.outdir.resolve(), isolation)
                  for project in projects()]
        failed = [b.args[-1] for b in builds if b.wait() != 0]
    if failed:
        print(f"building failed for: {', '.join(failed)}", file=sys.stderr)
        return 1
    for wheel in sorted(args.outdir.glob("diffusion_kernel*.whl")):
        print(wheel)
    return 0


if __name__ == "__main__":
    sys.exit(main())
