"""Meta-tests that keep the plugin API honest (as datasette does): every hook spec is documented in
docs/plugins.md and exercised by a test named ``test_hook_<name>``; the documented register()
signature, entry-point group and environment variables are the real ones; every error is in
docs/kernel.md."""

from __future__ import annotations

import ast
import inspect
import re
from pathlib import Path

import diffusion_kernel
import pytest
from diffusion_kernel import errors, hookspecs, plugin_manager, plugins

ROOT = Path(__file__).resolve().parents[2]
PLUGINS_DOC = (ROOT / "docs" / "plugins.md").read_text()
KERNEL_DOC = (ROOT / "docs" / "kernel.md").read_text()


def _hook_specs() -> dict[str, list[str]]:
    """Hook name -> argument names, parsed from hookspecs.py's @hookspec functions."""
    tree = ast.parse(Path(hookspecs.__file__).read_text())
    return {
        node.name: [a.arg for a in node.args.args]
        for node in tree.body
        if isinstance(node, ast.FunctionDef)
        and any(isinstance(d, ast.Name) and d.id == "hookspec" for d in node.decorator_list)
    }


def _test_names() -> set[str]:
    names = set()
    for path in Path(__file__).parent.glob("test_*.py"):
        tree = ast.parse(path.read_text())
        names |= {n.name for n in ast.walk(tree) if isinstance(n, ast.FunctionDef)}
    return names


HOOKS = _hook_specs()


def test_hook_specs_are_found():
    assert set(HOOKS) >= {"register_models", "register_schedulers", "register_pipelines",
                          "register_processors", "register_commands", "register_train_kinds",
                          "register_evaluate_kinds", "register_output_writers",
                          "register_shipped_models"}


@pytest.mark.parametrize("hook", sorted(HOOKS))
def test_every_hook_is_documented_with_its_arguments(hook):
    heading = f"### {hook}({', '.join(HOOKS[hook])})"
    assert heading in PLUGINS_DOC, f"docs/plugins.md lacks a section '{heading}'"
    section = PLUGINS_DOC.split(heading, 1)[1].split("\n### ", 1)[0]
    assert f"def {hook}(" in section, f"the {hook} section has no example"


@pytest.mark.parametrize("hook", sorted(HOOKS))
def test_every_hook_has_a_test(hook):
    assert f"test_hook_{hook}" in _test_names(), f"no test named test_hook_{hook}"


def test_every_hook_spec_is_registered_with_pluggy():
    assert set(HOOKS) <= {name for name in dir(plugin_manager.pm.hook) if not name.startswith("_")}


def test_documented_register_signature_is_the_real_one():
    register = plugin_manager._register_fn("models", plugins.PluginInfo("doc", None, None), [])
    real = f"register{inspect.signature(register)}"
    assert f"## `{real}`" in PLUGINS_DOC, real
    documented = set(re.findall(r"^\| `(\w+)` \|", PLUGINS_DOC, flags=re.M))
    assert set(inspect.signature(register).parameters) <= documented


def test_documented_entry_point_group_and_environment_variables_are_the_real_ones():
    assert f"[project.entry-points.{plugins.ENTRY_POINT_GROUP}]" in PLUGINS_DOC
    assert f"`{plugins.ALLOWLIST_ENV}`" in PLUGINS_DOC
    assert f"`{plugins.TRACE_ENV}=1`" in PLUGINS_DOC


def test_documented_test_helpers_exist():
    for name in ("register_plugin", "unregister_plugin"):
        assert f"{name}(" in PLUGINS_DOC and callable(getattr(plugin_manager, name))


def test_every_error_is_documented_in_the_kernel_guide():
    for name, obj in vars(errors).items():
        if isinstance(obj, type) and issubclass(obj, Exception):
            assert f"| `{name}` |" in KERNEL_DOC, f"docs/kernel.md does not list {name}"
            assert getattr(diffusion_kernel, name) is obj
