"""The registry API: names, lookup by class name and alias, describe, presets, lazy targets, misses,
conflicts and broken plugins (in-process plugins; entry-point behaviour is in test_plugins.py)."""

from __future__ import annotations

import sys
import warnings

import diffusion_kernel
import pytest
from diffusion_kernel import hookimpl, plugin_manager, registry
from diffusion_kernel.errors import NotRegisteredError, PluginError


def _plugin(**hooks):
    """A plugin object whose ``register_<kind>`` hooks call ``register`` with the given args."""

    class Plugin:
        pass

    for kind, calls in hooks.items():
        def impl(self, register, _calls=calls):
            for args, kwargs in _calls:
                register(*args, **kwargs)

        impl.__name__ = f"register_{kind}"
        setattr(Plugin, impl.__name__, hookimpl(impl))
    return Plugin()


def test_names_lists_registered_classes_sorted(toys):
    names = registry.schedulers.names()
    assert {"ToyScheduler", "ToyOtherScheduler"} <= set(names)
    assert names == sorted(names)
    assert "ToyModel" in registry.models.names()
    assert "ToyPipeline" in registry.pipelines.names()
    assert "ToyProcessor" in registry.processors.names()


def test_get_by_class_name_returns_the_class(toys):
    assert registry.models.get("ToyModel") is toys.ToyModel
    assert registry.schedulers.get("ToyScheduler") is toys.ToyScheduler


def test_get_by_alias_is_case_insensitive(toys):
    assert registry.models.get("toy") is toys.ToyModel
    assert registry.models.get("TOY") is toys.ToyModel
    assert registry.schedulers.get("Toy-Sched") is toys.ToyScheduler
    assert registry.schedulers.get("toyscheduler") is toys.ToyScheduler


def test_contains_accepts_names_and_aliases(toys):
    assert "ToyModel" in registry.models
    assert "toy" in registry.models
    assert "ToyModel" not in registry.schedulers
    assert 42 not in registry.models


def test_describe_reports_plugin_distribution_summary_and_aliases(toys):
    info = registry.models.describe("toy")
    assert info["name"] == "ToyModel"
    assert info["kind"] == "models"
    assert info["target"] == "kernel_toys:ToyModel"
    assert info["plugin"] == "toys"
    assert info["distribution"] is None and info["version"] is None  # in-process plugin
    assert info["summary"] == "A two-layer toy network for kernel tests."
    assert info["aliases"] == ["toy"]


def test_describe_of_a_lazy_entry_gives_the_docstring_line(toys):
    info = registry.schedulers.describe("ToyScheduler")
    assert info["summary"] == "A one-step toy scheduler: x <- x - eta * model_output."
    assert info["presets"] == {"toy-v": {"prediction_type": "v_prediction", "eta": 0.5}}


def test_describe_prefers_the_registered_summary(toys):
    assert registry.processors.describe("toy-proc")["summary"] == "Scales tensors in and out."


def test_preset_returns_config_values_of_an_alias(toys):
    assert dict(registry.schedulers.preset("toy-v")) == {"prediction_type": "v_prediction",
                                                         "eta": 0.5}
    assert dict(registry.schedulers.preset("ToyScheduler")) == {}
    assert registry.schedulers.get("toy-v") is toys.ToyScheduler


def test_preset_is_read_only(toys):
    with pytest.raises(TypeError):
        registry.schedulers.preset("toy-v")["eta"] = 1.0


def test_miss_raises_not_registered_error_with_nearest_names(toys):
    with pytest.raises(NotRegisteredError) as exc:
        registry.schedulers.get("ToyShceduler")
    message = str(exc.value)
    assert "unknown scheduler 'ToyShceduler'" in message
    assert "Did you mean: ToyScheduler" in message
    assert "ToyOtherScheduler" in message  # the list of what exists
    assert "diffusion-kernel plugins" in message
    assert isinstance(exc.value, LookupError)


def test_suggestions_are_spelled_as_registered_whatever_the_case_of_the_miss(toys):
    with pytest.raises(NotRegisteredError, match="Did you mean: ToyScheduler"):
        registry.schedulers.get("TOYSHEDULER")
    with pytest.raises(NotRegisteredError, match="Did you mean: toy-sched"):
        registry.schedulers.get("TOY-SHED")


def test_registries_are_indexed_by_kind_and_reject_unknown_kinds():
    assert registry["models"] is registry.models
    with pytest.raises(NotRegisteredError, match="choose one of models, schedulers"):
        registry["samplers"]


def test_find_searches_every_kind(toys):
    assert registry.find("toy-proc").kind == "processors"
    with pytest.raises(NotRegisteredError, match="Did you mean: ToyPipeline"):
        registry.find("ToyPipelin")


def test_kernel_attribute_resolves_through_the_registry(toys):
    assert diffusion_kernel.ToyScheduler is toys.ToyScheduler
    from diffusion_kernel import ToyModel

    assert ToyModel is toys.ToyModel
    assert "ToyPipeline" in dir(diffusion_kernel)


def test_unknown_kernel_attribute_raises_attribute_error_with_suggestion(toys):
    with pytest.raises(AttributeError, match="Did you mean: ToyModel"):
        diffusion_kernel.ToyModle  # noqa: B018
    assert not hasattr(diffusion_kernel, "NoSuchThing")


def test_lazy_target_is_not_imported_until_get(register_plugin, tmp_path, monkeypatch):
    (tmp_path / "lazy_toy_module.py").write_text(
        'class LazyThing:\n    """Imported on first use."""\n')
    monkeypatch.syspath_prepend(str(tmp_path))
    register_plugin(_plugin(processors=[(("lazy_toy_module:LazyThing",), {})]), "lazy")
    assert "LazyThing" in registry.processors.names()
    assert "LazyThing" in registry.processors
    assert "lazy_toy_module" not in sys.modules
    cls = registry.processors.get("LazyThing")
    assert cls.__name__ == "LazyThing" and "lazy_toy_module" in sys.modules
    monkeypatch.delitem(sys.modules, "lazy_toy_module")



def test_lazy_hook_registers_table_rows_by_module_path_with_aliases_and_presets(
        register_plugin, tmp_path, monkeypatch):
    from types import ModuleType

    from diffusion_kernel.plugins import lazy_hook

    (tmp_path / "lazy_table_pkg").mkdir()
    (tmp_path / "lazy_table_pkg" / "__init__.py").write_text("")
    (tmp_path / "lazy_table_pkg" / "things.py").write_text(
        'class TableThing:\n    """From a table."""\n')
    monkeypatch.syspath_prepend(str(tmp_path))
    plugin = ModuleType("lazy_table_plugin")  # a plugin's entry-point module
    plugin.register_processors = lazy_hook("lazy_table_pkg", [
        ("TableThing", "things", ("table-thing",)),
        ("OtherThing", "things", ("other-thing",), {"other-fast": {"steps": 4}}),
    ])
    register_plugin(plugin, "tables")
    entry = registry.processors.entry("table-thing")
    assert (entry.name, entry.target, entry.aliases) == (
        "TableThing", "lazy_table_pkg.things:TableThing", ("table-thing",))
    assert dict(registry.processors.preset("other-fast")) == {"steps": 4}
    assert "lazy_table_pkg.things" not in sys.modules  # registering and listing import nothing
    assert registry.processors.get("TableThing").__doc__ == "From a table."
    monkeypatch.delitem(sys.modules, "lazy_table_pkg.things")
    monkeypatch.delitem(sys.modules, "lazy_table_pkg")

def test_lazy_target_with_nested_attribute(register_plugin):
    register_plugin(_plugin(processors=[(("kernel_toys:ToyPlugin.register_models",),
                                         {"name": "Nested"})]), "nested")
    import kernel_toys

    assert registry.processors.get("Nested") is kernel_toys.ToyPlugin.register_models


def test_lazy_target_that_fails_to_import_raises_plugin_error_naming_it(register_plugin):
    register_plugin(_plugin(models=[(("no_such_module_xyz:Gone",), {})]), "broken-target")
    assert "Gone" in registry.models.names()  # listing never imports
    with pytest.raises(PluginError) as exc:
        registry.models.get("Gone")
    message = str(exc.value)
    assert "'broken-target'" in message and "'no_such_module_xyz:Gone'" in message
    assert "ModuleNotFoundError" in message and "DIFFUSION_KERNEL_PLUGINS" in message


def test_register_takes_name_and_aliases_overrides(register_plugin, toys):
    register_plugin(_plugin(models=[((toys.ToyModel,),
                                     {"name": "RenamedToy", "aliases": "renamed"})]), "renamer")
    assert registry.models.get("renamed") is toys.ToyModel
    assert registry.models.describe("RenamedToy")["aliases"] == ["renamed"]


def test_target_string_without_colon_fails_the_plugin(register_plugin, capsys):
    register_plugin(_plugin(models=[(("kernel_toys.ToyModel",), {"name": "NoColon"})]),
                    "no-colon")
    assert "NoColon" not in registry.models
    info = plugin_manager.plugins["no-colon"]
    assert info.status == "failed"
    assert "a lazy target must be 'module:attr'" in info.error
    assert "plugin 'no-colon'" in capsys.readouterr().err


def test_plugin_that_raises_is_skipped_and_registers_nothing(register_plugin, toys, capsys):
    class Broken:
        @hookimpl
        def register_models(self, register):
            register("kernel_toys:ToyModel", name="HalfRegistered")
            raise RuntimeError("boom")

    register_plugin(Broken(), "broken")
    assert "HalfRegistered" not in registry.models  # all or nothing
    assert plugin_manager.plugins["broken"].status == "failed"
    assert plugin_manager.plugins["broken"].error == "RuntimeError: boom"
    err = capsys.readouterr().err
    assert "plugin 'broken'" in err and "RuntimeError: boom" in err
    assert registry.models.get("ToyModel") is toys.ToyModel  # the others keep working


def test_name_conflict_keeps_the_first_and_warns_naming_both(register_plugin, toys):
    with pytest.warns(UserWarning) as record:
        register_plugin(_plugin(models=[(("kernel_toys:ToyProcessor",), {"name": "ToyModel"})]),
                        "usurper")
    message = str(record[0].message)
    assert "'ToyModel'" in message and "'toys'" in message and "'usurper'" in message
    assert registry.models.get("ToyModel") is toys.ToyModel
    assert plugin_manager.plugins["usurper"].registered["models"] == []


def test_alias_conflict_keeps_the_first_and_warns(register_plugin, toys):
    with pytest.warns(UserWarning, match="alias 'toy' is claimed by 'ToyModel' and by 'Other'"):
        register_plugin(_plugin(models=[(("kernel_toys:ToyProcessor",),
                                         {"name": "Other", "aliases": ("toy",)})]), "alias-thief")
    assert registry.models.get("toy") is toys.ToyModel
    assert registry.models.get("Other").__name__ == "ToyProcessor"


def test_unregister_plugin_removes_its_names(register_plugin):
    register_plugin(_plugin(models=[(("kernel_toys:ToyModel",), {"name": "Temp",
                                                                  "aliases": ("tmp",)})]), "temp")
    assert "tmp" in registry.models
    plugin_manager.unregister_plugin("temp")
    assert "Temp" not in registry.models and "tmp" not in registry.models
    assert "temp" not in plugin_manager.plugins


def test_registering_a_taken_plugin_name_raises_plugin_error(register_plugin, toys):
    import kernel_toys

    with pytest.raises(PluginError, match="a plugin named 'toys' .* is already registered"):
        plugin_manager.register_plugin(kernel_toys.ToyPlugin(), "toys")
    with pytest.raises(PluginError, match="already registered"):
        plugin_manager.register_plugin(kernel_toys.ToyPlugin(), "schedulers")  # installed one
    assert registry.models.get("ToyModel") is kernel_toys.ToyModel


def test_plugin_info_records_what_each_plugin_registered(toys):
    info = plugin_manager.plugins["toys"]
    assert info.status == "loaded"
    assert info.registered["models"] == ["ToyModel"]
    assert sorted(info.registered["schedulers"]) == ["ToyOtherScheduler", "ToyScheduler"]


def test_registration_emits_no_warning_without_conflicts(register_plugin):
    import kernel_toys

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        register_plugin(kernel_toys.ToyPlugin(), "toys")


# One test per hook spec (the meta-test in test_docs_and_hooks.py requires a test_hook_<name>).
def test_hook_register_models(register_plugin):
    register_plugin(_plugin(models=[(("kernel_toys:ToyModel",), {"name": "HookModel"})]), "h")
    assert registry.models.describe("HookModel")["plugin"] == "h"


def test_hook_register_schedulers(register_plugin):
    presets = {"Fast": {"eta": 1.0}}
    register_plugin(_plugin(schedulers=[(("kernel_toys:ToyScheduler",),
                                         {"name": "HookSched", "presets": presets})]), "h")
    assert dict(registry.schedulers.preset("fast")) == {"eta": 1.0}


def test_hook_register_pipelines(register_plugin):
    register_plugin(_plugin(pipelines=[(("kernel_toys:ToyPipeline",), {"name": "HookPipe"})]), "h")
    assert registry.pipelines.get("HookPipe").__name__ == "ToyPipeline"


def test_hook_register_processors(register_plugin):
    register_plugin(_plugin(processors=[(("kernel_toys:ToyProcessor",), {})]), "h")
    assert registry.processors.get("ToyProcessor").__name__ == "ToyProcessor"


def test_remove_forgets_the_entry_and_its_aliases_only():
    from diffusion_kernel.registry import Entry, Registry

    reg = Registry("schedulers")
    reg.add(Entry(name="A", target="m:A", kind="schedulers", plugin="p", aliases=("a",), obj=int))
    reg.add(Entry(name="B", target="m:B", kind="schedulers", plugin="p", aliases=("b",), obj=str))
    reg.remove("A")
    assert reg.names() == ["B"] and "a" not in reg and reg.get("b") is str
    reg.remove("A")  # removing a missing name is a no-op
    assert reg.names() == ["B"]
