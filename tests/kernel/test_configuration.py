"""Config recorded from constructor arguments: immutable, saved and loaded in the diffusers format,
unknown keys kept and warned once, missing keys defaulted, swaps across compatible classes."""

from __future__ import annotations

import copy
import json
import logging
import pickle
import warnings

import pytest
from diffusion_kernel.configuration import FORMAT_VERSION, ConfigMixin, FrozenConfig
from diffusion_kernel.errors import ConfigError, FileAccessError
from kernel_toys import ToyModel, ToyOtherScheduler, ToyScheduler


class Widget(ConfigMixin):
    config_name = "widget_config.json"
    ignore_for_config = ("callback",)

    def __init__(self, size: int = 3, name: str = "w", ratios=(1.0, 2.0), nested=None,
                 flag: bool = False, callback=None):
        self.callback = callback


class WidgetWithDefaultsOnly(Widget):
    def __init__(self, size: int = 5, **kwargs):
        super().__init__(size=size, **kwargs)


@pytest.fixture
def no_warnings():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        yield


def test_config_records_arguments_with_defaults_filled_in():
    w = Widget(7, flag=True)
    assert dict(w.config) == {"size": 7, "name": "w", "ratios": (1.0, 2.0), "nested": None,
                              "flag": True}


def test_config_supports_attribute_and_item_access():
    w = Widget(size=4)
    assert w.config.size == 4 and w.config["size"] == 4
    with pytest.raises(AttributeError, match="config has no field 'sizes'"):
        w.config.sizes  # noqa: B018


def test_lists_are_stored_as_tuples_and_nested_mappings_frozen():
    w = Widget(ratios=[0.5, [1, 2]], nested={"a": [1]})
    assert w.config.ratios == (0.5, (1, 2))
    assert isinstance(w.config.nested, FrozenConfig) and w.config.nested.a == (1,)


def test_ignored_parameters_are_not_recorded():
    assert "callback" not in Widget(callback=print).config


@pytest.mark.parametrize("mutate", [
    lambda c: setattr(c, "size", 1),
    lambda c: c.__setitem__("size", 1),
    lambda c: delattr(c, "size"),
    lambda c: c.__delitem__("size"),
    lambda c: setattr(c.nested, "a", 1),
])
def test_config_is_truly_immutable(mutate):
    config = Widget(nested={"a": 1}).config
    with pytest.raises(ConfigError, match="config is read-only"):
        mutate(config)
    assert config.size == 3 and config.nested.a == 1


def test_replacing_the_config_attribute_raises():
    w = Widget()
    with pytest.raises(ConfigError, match="read-only"):
        w.config = {"size": 1}
    m = ToyModel()
    with pytest.raises(ConfigError, match="read-only"):
        m.config = {"hidden": 1}
    assert w.config.size == 3 and m.config.hidden == 8


def test_subclass_forwarding_kwargs_records_its_parents_fields_too(caplog):
    # As diffusers records both constructors: the subclass's own default wins, the parent's
    # fields come with theirs, and a forwarded keyword is a known field, not an unknown key.
    assert dict(WidgetWithDefaultsOnly().config) == {
        "size": 5, "name": "w", "ratios": (1.0, 2.0), "nested": None, "flag": False}
    with caplog.at_level(logging.INFO, logger="diffusion_kernel.configuration"):
        w = WidgetWithDefaultsOnly(name="x")
    assert caplog.records == []
    assert w.config.name == "x" and w.config.size == 5
    assert WidgetWithDefaultsOnly.from_config(w.config).config == w.config


def test_extra_keyword_arguments_are_kept_in_the_config_and_logged(caplog):
    class Loose(ConfigMixin):
        def __init__(self, size: int = 5, **kwargs):
            pass

    with caplog.at_level(logging.INFO, logger="diffusion_kernel.configuration"):
        w = Loose(name="x")
    assert [(r.levelname, r.getMessage()) for r in caplog.records] == [
        ("WARNING", "Loose does not use config keys ['name']; they are kept in "
                    "the config (and saved again) but have no effect.")]
    assert dict(w.config) == {"name": "x", "size": 5}


def test_config_of_a_model_is_recorded_too():
    m = ToyModel(hidden=6, block_sizes=[1, 1])
    assert dict(m.config) == {"in_features": 4, "hidden": 6, "block_sizes": (1, 1), "act": "silu"}


def test_objects_with_configs_deep_copy_and_pickle():
    w = Widget(nested={"a": [1, 2]})
    for clone in (copy.deepcopy(w), pickle.loads(pickle.dumps(w))):
        assert clone.config == w.config
        assert isinstance(clone.config.nested, FrozenConfig)
        with pytest.raises(ConfigError):
            clone.config.size = 1
    m = ToyModel()
    assert copy.deepcopy(m).config == m.config


def test_save_config_writes_the_diffusers_format(tmp_path):
    path = Widget(size=9).save_config(tmp_path / "out")
    assert path == tmp_path / "out" / "widget_config.json"
    data = json.loads(path.read_text())
    assert data["_class_name"] == "Widget"
    assert data["_diffusers_version"] == FORMAT_VERSION
    assert data["size"] == 9 and data["ratios"] == [1.0, 2.0]
    assert not list((tmp_path / "out").glob(".*partial*"))


def test_from_config_round_trips_through_a_folder_and_a_file(tmp_path):
    w = Widget(size=2, ratios=[3.0], nested={"k": "v"})
    w.save_config(tmp_path)
    for source in (tmp_path, tmp_path / "widget_config.json", str(tmp_path)):
        again = Widget.from_config(source)
        assert again.config == w.config
        assert type(again) is Widget


def test_load_config_returns_the_json_dict(tmp_path):
    Widget(size=2).save_config(tmp_path / "sub")
    data = Widget.load_config(tmp_path, subfolder="sub")
    assert data["size"] == 2 and data["_class_name"] == "Widget"


def test_load_config_of_a_folder_without_the_file_names_it(tmp_path):
    with pytest.raises(FileAccessError, match="'widget_config.json' not found in folder"):
        Widget.load_config(tmp_path)


def test_from_config_passes_list_values_to_the_constructor_as_lists():
    seen = {}

    class Recorder(ConfigMixin):
        def __init__(self, sizes=(1,)):
            seen["sizes"] = sizes

    Recorder.from_config(Recorder(sizes=[1, 2]).config)
    assert seen["sizes"] == [1, 2]


def test_overrides_win_over_config_values():
    w = Widget.from_config({"size": 2, "name": "a"}, name="b")
    assert (w.config.size, w.config.name) == (2, "b")


def test_missing_keys_take_their_defaults(no_warnings):
    w = Widget.from_config({"size": 4})
    assert w.config.name == "w" and w.config.ratios == (1.0, 2.0)


def test_unknown_keys_are_kept_logged_once_and_saved_again(tmp_path, caplog, no_warnings):
    with caplog.at_level(logging.INFO, logger="diffusion_kernel.configuration"):
        w = Widget.from_config({"_class_name": "Widget", "size": 1, "shiny": True})
        Widget.from_config({"size": 1, "shiny": False})  # already reported for (Widget, shiny)
    assert [r.getMessage()[:46] for r in caplog.records if r.levelname == "WARNING"] == [
        "Widget does not use config keys ['shiny']; the"]
    assert w.config.shiny is True
    w.save_config(tmp_path)
    assert json.loads((tmp_path / "widget_config.json").read_text())["shiny"] is True


def test_a_missing_required_field_is_named():
    class Needy(ConfigMixin):
        def __init__(self, channels: int, depth: int = 2):
            pass

    with pytest.raises(ConfigError, match=r"Needy needs config fields \['channels'\]"):
        Needy.from_config({"depth": 3})
    assert Needy.from_config({"depth": 3}, channels=4).config.channels == 4


def test_private_keys_are_dropped_without_warning(no_warnings):
    w = Widget.from_config({"_class_name": "Widget", "_diffusers_version": "0.1", "_x": 1})
    assert not any(k.startswith("_") for k in w.config)


def test_a_value_of_the_wrong_kind_is_rejected_with_the_fix():
    with pytest.raises(ConfigError) as exc:
        Widget.from_config({"size": "big"})
    message = str(exc.value)
    assert "Widget config field 'size' must be an int, got str 'big'" in message
    assert "fix 'size' in the config file" in message
    with pytest.raises(ConfigError, match="'flag' must be true or false, got int 1"):
        Widget.from_config({"flag": 1})


def test_from_config_rejects_what_is_not_a_mapping_or_path():
    with pytest.raises(ConfigError, match="expects a mapping or a path to a config file, got int"):
        Widget.from_config(3)


@pytest.mark.parametrize("text, problem", [
    ("{not json", "is not valid JSON"),
    ("[1, 2]", "must hold a JSON object, found list"),
])
def test_a_broken_config_file_raises_config_error_naming_it(tmp_path, text, problem):
    (tmp_path / "widget_config.json").write_text(text)
    with pytest.raises(ConfigError, match=problem) as exc:
        Widget.from_config(tmp_path)
    assert str(tmp_path / "widget_config.json") in str(exc.value)


def test_swap_to_a_compatible_class_keeps_what_applies_without_warning(no_warnings):
    toy = ToyScheduler(num_train_timesteps=50, eta=0.3, prediction_type="v_prediction")
    other = ToyOtherScheduler.from_config(toy.config)
    assert other.config.num_train_timesteps == 50
    assert other.config.use_karras_sigmas is False


def test_swap_back_restores_the_hidden_values(no_warnings):
    toy = ToyScheduler(num_train_timesteps=50, eta=0.3, prediction_type="v_prediction")
    back = ToyScheduler.from_config(ToyOtherScheduler.from_config(toy.config).config)
    # eta and prediction_type travelled hidden through the other class...
    assert {k: back.config[k] for k in toy.config} == dict(toy.config)
    # ...and the other class's own field now travels hidden in this one.
    assert back.config.use_karras_sigmas is False


def test_swap_from_a_saved_config_of_another_class_does_not_warn(tmp_path, no_warnings):
    ToyScheduler(eta=0.7).save_config(tmp_path)
    other = ToyOtherScheduler.from_config(ToyScheduler.load_config(tmp_path))
    assert other.config.eta == 0.7


def test_reads_a_config_written_by_diffusers_and_writes_it_back_loadable(tmp_path):
    """A diffusers scheduler config read by a class that takes a subset of its fields keeps the
    rest, so diffusers reads our re-save into the same config."""
    from diffusers import DDIMScheduler

    reference = DDIMScheduler(num_train_timesteps=77, beta_schedule="linear", clip_sample=False)
    reference.save_config(tmp_path / "ref")

    class DDIMScheduler(ConfigMixin):  # noqa: F811 - same class name, so no cross-class swap
        config_name = "scheduler_config.json"

        def __init__(self, num_train_timesteps: int = 1000, clip_sample: bool = True):
            pass

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ours = DDIMScheduler.from_config(tmp_path / "ref")
    assert (ours.config.num_train_timesteps, ours.config.clip_sample) == (77, False)
    ours.save_config(tmp_path / "ours")
    from diffusers import DDIMScheduler as ReferenceDDIM

    again = ReferenceDDIM.from_pretrained(tmp_path / "ours")
    public = lambda config: {k: v for k, v in config.items() if not k.startswith("_")}
    assert public(again.config) == public(reference.config)
    assert len(public(again.config)) > 10
