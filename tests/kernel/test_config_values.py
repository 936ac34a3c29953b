"""Config values are checked against the constructor's signature: the annotation's type and an
``Annotated[..., Range(...)]`` range, one mechanism for every class with a config; and a subclass
that forwards ``*args``/``**kwargs`` to its parent has the parent's fields."""

import inspect
import json
import shutil
import warnings
from typing import Literal

import pytest
from diffusion_kernel import ConfigError, registry
from diffusion_kernel.config_checks import (
    Annotated,
    PositiveFloat,
    PositiveInt,
    Range,
    check_config_values,
    describe,
)
from diffusion_kernel.configuration import ConfigMixin, config_parameters, constructor_chain


class Gadget(ConfigMixin):
    def __init__(self, channels: tuple[PositiveInt, ...] = (4, 8), eps: PositiveFloat = 1e-5,
                 mode: Literal["conv", "resnet"] = "conv",
                 size: int | tuple[int, int] | None = None,
                 p: Annotated[float, Range(ge=0, lt=1)] = 0.0, flag: bool = True, untyped=3):
        pass


def _refused(match, **values):
    with pytest.raises(ConfigError, match=match):
        Gadget.from_config(values)


@pytest.mark.parametrize("values, match", [
    ({"eps": -1e9}, r"'eps' must be a number > 0, got float -1000000000.0"),
    ({"eps": {}}, r"'eps' must be a number > 0, got dict \{\}"),
    ({"channels": [4, 0]}, r"'channels' must be a list of values that are each an int >= 1"),
    ({"channels": 4}, r"'channels' must be a list .*got int 4"),
    ({"mode": "deconv"}, r"'mode' must be one of 'conv', 'resnet', got str 'deconv'"),
    ({"size": "sixteen"}, r"'size' must be an int, a list of 2 values \(an int, an int\) or None"),
    ({"size": [1, 2, 3]}, r"'size' must be .*got list \[1, 2, 3\]"),
    ({"p": 1.0}, r"'p' must be a number >= 0 and < 1, got float 1.0"),
    ({"flag": [1]}, r"'flag' must be true or false, got list \[1\]"),
    ({"flag": 1}, r"'flag' must be true or false, got int 1"),
    ({"untyped": "three"}, r"'untyped' must be a number, got str 'three'"),
])
def test_a_value_the_signature_refuses_is_a_config_error_naming_the_field(values, match):
    _refused(rf"Gadget config field {match}.*; fix '{next(iter(values))}' in the config file",
             **values)


def test_values_the_signature_takes_are_accepted():
    g = Gadget.from_config({"channels": [1, 2, 3], "eps": 1, "mode": "resnet", "size": [8, 8],
                            "p": 0.5, "untyped": 2.5})
    assert g.config.channels == (1, 2, 3) and g.config.size == (8, 8)


def test_direct_construction_is_checked_too():
    with pytest.raises(ConfigError, match="'eps' must be a number > 0"):
        Gadget(eps=0)


def test_the_message_names_only_the_bad_key():
    with pytest.raises(ConfigError) as exc:
        Gadget.from_config({"eps": 1e-6, "channels": [2], "size": 1.5})
    assert "'size'" in str(exc.value) and "'eps'" not in str(exc.value)


def test_describe_reads_like_the_signature():
    assert describe(int | None) == "an int or None"
    assert describe(tuple[float, ...] | None) == "a list of values that are each a number or None"


# Every registered class: its defaults pass its own declarations ---------------------------------
def _classes():
    for kind in ("models", "schedulers", "processors"):
        for entry in registry[kind].entries():
            yield pytest.param(entry, id=entry.name)


@pytest.mark.parametrize("entry", _classes())
def test_every_registered_class_accepts_its_own_defaults(entry):
    cls = entry.load()
    defaults = {k: p.default for k, p in config_parameters(cls).items()
                if p.default is not inspect.Parameter.empty}
    check_config_values(cls, defaults, constructor_chain(cls))


# The UNet configs ---------------------------------------------------------------------
WEIGHTS = "diffusion_pytorch_model.safetensors"
UNET = {"block_out_channels": [8, 16], "norm_num_groups": 4, "sample_size": 8,
        "down_block_types": ["DownBlock2D", "DownBlock2D"],
        "up_block_types": ["UpBlock2D", "UpBlock2D"]}


@pytest.fixture(scope="module")
def unet_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("unet")
    registry.models.get("UNet2DModel")(**UNET).save_pretrained(folder)
    return folder


@pytest.mark.parametrize("key, value, takes", [
    ("sample_size", "sixteen", "an int, a list of 2 values"),
    ("layers_per_block", 1.5, "an int >= 1"),
    ("norm_eps", -1e9, "a number > 0"),
    ("norm_eps", {}, "a number > 0"),
    ("downsample_type", [], "a string"),
    ("add_attention", [1], "true or false"),
    ("block_out_channels", [8, -16], "a list of values that are each an int >= 1"),
])
def test_unet_config_values_are_refused_at_load_naming_the_key(unet_folder, tmp_path, key, value,
                                                               takes):
    config = json.loads((unet_folder / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**config, key: value}))
    shutil.copy(unet_folder / WEIGHTS, tmp_path / WEIGHTS)
    with pytest.raises(ConfigError) as exc:
        registry.models.get("UNet2DModel").from_pretrained(tmp_path)
    message = str(exc.value)
    assert f"UNet2DModel config field {key!r} must be {takes}" in message
    assert not any(repr(k) in message for k in config if k != key)


# Subclasses that forward *args/**kwargs ------------------------------------------------------
def test_a_scheduler_subclass_forwarding_args_and_kwargs_works():
    ddim = registry.schedulers.get("DDIMScheduler")

    class TrailingDDIM(ddim):
        def __init__(self, *args, timestep_spacing="trailing", **kwargs):
            super().__init__(*args, timestep_spacing=timestep_spacing, **kwargs)

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # forwarded keywords are fields, not unknown keys
        s = TrailingDDIM(beta_schedule="linear")
    assert s.config.timestep_spacing == "trailing" and s.config.beta_schedule == "linear"
    assert dict(s.config) == {**dict(ddim().config), "timestep_spacing": "trailing",
                              "beta_schedule": "linear"}
    again = TrailingDDIM.from_config(s.config, num_train_timesteps=500)
    assert again.config.beta_schedule == "linear" and again.config.num_train_timesteps == 500
    s.set_timesteps(10)
    assert int(s.timesteps[0]) == 999  # trailing spacing starts at the last training step
    with pytest.raises(ConfigError, match="'num_train_timesteps' must be an int"):
        TrailingDDIM(num_train_timesteps="many")
