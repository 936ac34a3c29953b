"""Plugin loading from entry points, in fresh interpreters: what listing imports, the allowlist
and kill switch (DIFFUSION_KERNEL_PLUGINS), hook tracing (DIFFUSION_KERNEL_TRACE_HOOKS), broken
plugins, and deterministic name conflicts between installed distributions."""

from __future__ import annotations

import os
import re

import pytest
from kernel_helpers import last_json, make_distribution, run_python

GOOD = '''
"""A fake third-party plugin: registers a lazy model and a CLI command."""
from diffusion_kernel import hookimpl

@hookimpl
def register_models(register):
    register("fake_good_impl:GoodModel", aliases=("good",))

@hookimpl
def register_commands(subparsers):
    p = subparsers.add_parser("good-hello", help="say hello")
    p.set_defaults(func=lambda args: print("hello from good") or 0)
'''
GOOD_IMPL = '''
# A plugin's code module (heavy in real life: torch, models); listing must not import it.
class GoodModel:
    """The good plugin's model."""
'''
BROKEN_IMPORT = '''
raise ImportError("missing dependency frobnicate")
'''
LIST_ALL = '''
import json, sys
import diffusion_kernel
from diffusion_kernel import plugin_manager, registry
names = {reg.kind: reg.names() for reg in registry}
plugins = {n: [i.status, i.distribution, i.version, i.error] for n, i in
           plugin_manager.plugins.items()}
print(json.dumps({"names": names, "plugins": plugins, "modules": sorted(sys.modules)}))
'''


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    """Two installed fake distributions: ``fake-good`` (plugin ``good``) and ``fake-broken``."""
    site = tmp_path_factory.mktemp("site")
    make_distribution(site, "fake-good", "good", "fake_good_plugin", GOOD, version="2.5")
    (site / "fake_good_impl.py").write_text(GOOD_IMPL)
    make_distribution(site, "fake-broken", "broken", "fake_broken_plugin", BROKEN_IMPORT)
    return site


@pytest.fixture(scope="module")
def listing(site):
    result = run_python(LIST_ALL, site)
    assert result.returncode == 0, result.stderr
    return last_json(result.stdout), result.stderr


def test_listing_all_registries_imports_neither_torch_nor_plugin_code(listing):
    data, _ = listing
    modules = data["modules"]
    assert "GoodModel" in data["names"]["models"]
    assert "DDIMScheduler" in data["names"]["schedulers"]  # the installed schedulers plugin
    assert "torch" not in modules
    assert "fake_good_impl" not in modules
    plugin_code = [m for m in modules if m.startswith("diffusion_kernel_")
                   and m.rpartition(".")[2] != "plugin" and "." in m]
    assert plugin_code == []
    heavy = [m for m in ("numpy", "safetensors", "huggingface_hub", "transformers", "diffusers")
             if m in modules]
    assert heavy == []


def test_broken_plugin_is_reported_with_distribution_and_error(listing):
    data, stderr = listing
    status, dist, version, error = data["plugins"]["broken"]
    assert (status, dist, version) == ("failed", "fake-broken", "1.0")
    assert error == "ImportError: missing dependency frobnicate"
    assert ("plugin 'broken' from fake-broken failed to load and is skipped "
            "(ImportError: missing dependency frobnicate)") in stderr


def test_other_plugins_keep_working_beside_a_broken_one(listing):
    data, _ = listing
    assert data["plugins"]["good"][:3] == ["loaded", "fake-good", "2.5"]
    assert data["plugins"]["schedulers"][0] == "loaded"


def test_describe_reports_the_installed_distribution(site):
    result = run_python("""
        import json
        from diffusion_kernel import registry
        print(json.dumps(registry.models.describe("good")))
    """, site)
    info = last_json(result.stdout)
    assert (info["name"], info["plugin"], info["distribution"], info["version"]) == (
        "GoodModel", "good", "fake-good", "2.5")
    assert info["summary"] == "The good plugin's model."


def test_empty_allowlist_loads_no_plugin(site):
    result = run_python(LIST_ALL, site, DIFFUSION_KERNEL_PLUGINS="")
    data = last_json(result.stdout)
    assert data["names"] == {"models": [], "schedulers": [], "pipelines": [], "processors": []}
    assert {v[0] for v in data["plugins"].values()} == {"disabled"}
    assert "fake_good_plugin" not in data["modules"]
    assert result.stderr == ""  # the broken plugin is not even imported


def test_allowlist_by_plugin_name_loads_only_that_plugin(site):
    data = last_json(run_python(LIST_ALL, site, DIFFUSION_KERNEL_PLUGINS="good").stdout)
    assert data["names"]["models"] == ["GoodModel"]
    assert data["names"]["schedulers"] == []
    assert data["plugins"]["schedulers"][0] == "disabled"
    assert data["plugins"]["schedulers"][3] == "not in DIFFUSION_KERNEL_PLUGINS"


def test_allowlist_accepts_distribution_names_and_spaces(site):
    data = last_json(run_python(LIST_ALL, site,
                                DIFFUSION_KERNEL_PLUGINS=" Fake-Good , schedulers").stdout)
    assert data["names"]["models"] == ["GoodModel"]
    assert "DDIMScheduler" in data["names"]["schedulers"]
    assert data["plugins"]["broken"][0] == "disabled"


def test_trace_hooks_prints_every_hook_call_and_registration(site):
    result = run_python(LIST_ALL, site, DIFFUSION_KERNEL_PLUGINS="good",
                        DIFFUSION_KERNEL_TRACE_HOOKS="1")
    assert result.returncode == 0
    assert "register_models" in result.stderr  # pluggy's trace of the hook call
    assert "good registered model GoodModel -> fake_good_impl:GoodModel" in result.stderr


def test_trace_hooks_prints_the_traceback_of_a_broken_plugin(site):
    result = run_python(LIST_ALL, site, DIFFUSION_KERNEL_PLUGINS="broken",
                        DIFFUSION_KERNEL_TRACE_HOOKS="1")
    assert "Traceback (most recent call last)" in result.stderr
    assert "fake_broken_plugin.py" in result.stderr


def test_name_conflict_between_distributions_is_deterministic_and_warned(tmp_path):
    # Plugins load in entry-point name order, so "alpha" wins whichever is found first on disk.
    for plugin, dist in (("zeta", "dist-z"), ("alpha", "dist-a")):
        make_distribution(tmp_path, dist, plugin, f"clash_{plugin}", f'''
            from diffusion_kernel import hookimpl
            @hookimpl
            def register_schedulers(register):
                register("clash_{plugin}_impl:Clash", name="ClashScheduler")
        ''')
    code = """
        import json, warnings
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            from diffusion_kernel import registry
            entry = registry.schedulers.entry("ClashScheduler")
        print(json.dumps([entry.plugin, entry.distribution, [str(w.message) for w in caught]]))
    """
    for _ in range(2):
        plugin, dist, warned = last_json(run_python(code, tmp_path,
                                                    DIFFUSION_KERNEL_PLUGINS="alpha,zeta").stdout)
        assert (plugin, dist) == ("alpha", "dist-a")
        assert len(warned) == 1
        assert "'ClashScheduler' is claimed by plugin 'alpha' and by plugin 'zeta'" in warned[0]
        assert "keeping 'alpha'" in warned[0]


def test_one_plugin_name_in_two_distributions_keeps_one_and_warns(tmp_path):
    # Whatever the order on sys.path, the distribution with the smaller name wins.
    for dist, first in (("dist-b", "b"), ("dist-a", "a")):
        site = tmp_path / first
        make_distribution(site, dist, "dup", f"dup_{first}", f'''
            from diffusion_kernel import hookimpl
            @hookimpl
            def register_models(register):
                register("x:Model{first.upper()}")
        ''')
    code = """
        import json, warnings
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            from diffusion_kernel import plugin_manager, registry
            names = registry.models.names()
        print(json.dumps([names, plugin_manager.plugins["dup"].distribution,
                          [str(w.message) for w in caught]]))
    """
    for order in (["a", "b"], ["b", "a"]):
        path = os.pathsep.join(str(tmp_path / o) for o in order)
        names, dist, warned = last_json(run_python(code, None, PYTHONPATH=path,
                                                   DIFFUSION_KERNEL_PLUGINS="dup").stdout)
        assert (names, dist) == (["ModelA"], "dist-a")
        assert warned == ["plugin name 'dup' is claimed by distributions 'dist-a' and 'dist-b'; "
                          "keeping 'dist-a'. Uninstall one of them."]


def test_console_script_lists_plugins_with_status(site):
    result = run_python("import sys; from diffusion_kernel.cli import main; "
                        "sys.exit(main(['plugins']))", site,
                        DIFFUSION_KERNEL_PLUGINS="good,broken")
    assert result.returncode == 0
    assert "good: fake-good 2.5 [loaded]" in result.stdout
    assert "  models (1): GoodModel" in result.stdout
    assert "broken: fake-broken 1.0 [failed]" in result.stdout
    assert "  error: ImportError: missing dependency frobnicate" in result.stdout


def test_plugin_subcommand_runs_from_an_installed_plugin(site):
    result = run_python("import sys; from diffusion_kernel.cli import main; "
                        "sys.exit(main(['good-hello']))", site, DIFFUSION_KERNEL_PLUGINS="good")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "hello from good"


def test_a_thread_listing_during_plugin_loading_waits_for_the_full_registry(tmp_path):
    make_distribution(tmp_path, "slow-dist", "slow", "slow_plugin", '''
        import time
        from diffusion_kernel import hookimpl
        time.sleep(1.0)  # a slow entry-point import

        @hookimpl
        def register_models(register):
            register("slow_impl:SlowModel")
    ''')
    code = """
        import json, threading, time
        from diffusion_kernel import registry
        first = threading.Thread(target=registry.models.names)
        first.start()
        time.sleep(0.3)  # the first thread is importing the slow plugin now
        print(json.dumps(registry.models.names()))
    """
    result = run_python(code, tmp_path, DIFFUSION_KERNEL_PLUGINS="slow")
    assert last_json(result.stdout) == ["SlowModel"]


def test_installed_console_script_runs_the_cli():
    import shutil
    import subprocess

    exe = shutil.which("diffusion-kernel")
    if exe is None:
        pytest.skip("the diffusion-kernel console script is not installed")
    env = {**os.environ, "DIFFUSION_KERNEL_PLUGINS": "schedulers,audio"}
    result = subprocess.run([exe, "registry", "schedulers"], capture_output=True, text=True,
                            env=env, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "  DDIMScheduler  (aliases: ddim)  [schedulers]" in result.stdout
    plugins = subprocess.run([exe, "plugins"], capture_output=True, text=True, env=env,
                             timeout=120).stdout
    assert re.search(r"^audio: diffusion-kernel-audio \S+ \[loaded\]\n  pipelines \(2\): "
                     r"AudioDiffusionPipeline, DanceDiffusionPipeline$", plugins, flags=re.M)
    assert re.search(r"^vision: diffusion-kernel-vision \S+ \[disabled\]$", plugins, flags=re.M)
