"""Helpers to run the kernel in a fresh interpreter with fake installed plugin distributions."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path


def make_distribution(site: Path, dist: str, plugin: str, module: str, code: str,
                      version: str = "1.0") -> None:
    """Install a fake plugin distribution into ``site`` (a folder put on PYTHONPATH): a dist-info
    folder whose entry point ``plugin`` in group ``diffusion_kernel`` is ``module``."""
    site.mkdir(parents=True, exist_ok=True)
    (site / f"{module}.py").write_text(textwrap.dedent(code))
    info = site / f"{dist.replace('-', '_')}-{version}.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: {version}\n")
    (info / "entry_points.txt").write_text(f"[diffusion_kernel]\n{plugin} = {module}\n")


def run_python(code: str, site: Path | None = None, **env: str) -> subprocess.CompletedProcess:
    """Run ``code`` in a fresh interpreter (fake distributions from ``site`` importable)."""
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("DIFFUSION_KERNEL_")}
    if site is not None:
        full_env["PYTHONPATH"] = os.pathsep.join(
            [str(site), *filter(None, [full_env.get("PYTHONPATH")])])
    full_env.update(env)
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], env=full_env,
                          capture_output=True, text=True, timeout=120)


def last_json(stdout: str):
    return json.loads(stdout.strip().splitlines()[-1])
