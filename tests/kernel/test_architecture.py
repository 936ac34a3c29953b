"""The import graph the design promises, checked on the source: library code never imports the
reference implementation (diffusers); the kernel imports no plugin; a plugin imports no other
plugin (it asks the registry by name); all Hub access goes through the kernel's hub.py."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
KERNEL = ROOT / "kernel" / "diffusion_kernel"
PLUGIN_PACKAGES = sorted(p for p in (ROOT / "plugins").glob("*/diffusion_kernel_*") if p.is_dir())


def _imports(path: Path) -> set[str]:
    """Top-level names of every absolute import in a file, wherever it sits (functions too)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


def _files(package: Path) -> list[Path]:
    return sorted(package.rglob("*.py"))


def test_the_source_trees_are_found():
    assert (KERNEL / "registry.py").exists()
    assert {p.name for p in PLUGIN_PACKAGES} >= {"diffusion_kernel_schedulers",
                                                  "diffusion_kernel_vision"}


@pytest.mark.parametrize("package", [KERNEL, *PLUGIN_PACKAGES], ids=lambda p: p.name)
def test_library_code_never_imports_diffusers(package):
    offenders = [str(f.relative_to(ROOT)) for f in _files(package) if "diffusers" in _imports(f)]
    assert offenders == []


def test_the_kernel_imports_no_plugin():
    offenders = {str(f.relative_to(ROOT)): sorted(n for n in _imports(f)
                                                  if n.startswith("diffusion_kernel_"))
                 for f in _files(KERNEL)}
    assert {f: n for f, n in offenders.items() if n} == {}


@pytest.mark.parametrize("package", PLUGIN_PACKAGES, ids=lambda p: p.name)
def test_a_plugin_imports_no_other_plugin(package):
    others = {p.name for p in PLUGIN_PACKAGES} - {package.name}
    offenders = {str(f.relative_to(ROOT)): sorted(_imports(f) & others) for f in _files(package)}
    assert {f: n for f, n in offenders.items() if n} == {}


@pytest.mark.parametrize("package", [KERNEL, *PLUGIN_PACKAGES], ids=lambda p: p.name)
def test_only_the_kernel_hub_module_talks_to_the_hub(package):
    offenders = [str(f.relative_to(ROOT)) for f in _files(package)
                 if "huggingface_hub" in _imports(f) and f != KERNEL / "hub.py"]
    assert offenders == []
