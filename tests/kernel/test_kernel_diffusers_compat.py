"""Kernel pieces code written for diffusers relies on: the frozen config is a real, read-only dict
(diffusers builds its classes from it) replaced, never changed, by ``register_to_config``;
unused config keys are logged, not warned; outputs are read-only dicts like diffusers'
``BaseOutput``; ``from_pretrained(dtype=...)``; ``is_gradient_checkpointing``."""

from __future__ import annotations

import copy
import json
import logging
import pickle
import warnings
from dataclasses import dataclass

import pytest
import torch
from diffusion_kernel.base_output import BaseOutput
from diffusion_kernel.configuration import ConfigMixin, FrozenConfig, register_to_config
from diffusion_kernel.errors import ConfigError, OutputError
from diffusion_kernel.pipelines import DiffusionPipeline
from kernel_toys import ToyModel, ToyPipeline, ToyScheduler

# ---------------------------------------------------------------------------- the frozen config


def test_the_config_is_a_dict_that_json_and_the_reference_take():
    from diffusers import DDIMScheduler as Reference

    config = ToyScheduler(num_train_timesteps=77, trained_betas=[0.1, 0.2]).config
    assert isinstance(config, dict) and config.num_train_timesteps == 77
    assert json.loads(json.dumps(config))["trained_betas"] == [0.1, 0.2]
    assert Reference.from_config(config).config.num_train_timesteps == 77
    assert config | {"eta": 1.0} == {**config, "eta": 1.0}  # new plain dicts are fine
    assert type(config.copy()) is dict


@pytest.mark.parametrize("change", [
    lambda c: c.__setitem__("eta", 1.0), lambda c: c.__delitem__("eta"),
    lambda c: setattr(c, "eta", 1.0), lambda c: delattr(c, "eta"), lambda c: c.pop("eta"),
    lambda c: c.popitem(), lambda c: c.setdefault("new", 1), lambda c: c.update(eta=1.0),
    lambda c: c.clear(), lambda c: c.__ior__({"eta": 1.0}), lambda c: c.__init__({"eta": 1.0}),
])
def test_every_way_of_changing_the_config_is_refused_with_the_fix(change):
    config = ToyScheduler(eta=0.3).config
    with pytest.raises(ConfigError, match=r"read-only.*from_config\(obj.config, .*"
                                          r"register_to_config\("):
        change(config)
    assert dict(config) == {"num_train_timesteps": 100, "eta": 0.3,
                            "prediction_type": "epsilon", "trained_betas": None}


def test_copies_and_pickles_are_frozen_configs_of_the_same_owner():
    config = ToyScheduler(trained_betas=[0.1]).config
    for clone in (copy.copy(config), copy.deepcopy(config), pickle.loads(pickle.dumps(config))):
        assert type(clone) is FrozenConfig and clone == config and clone._owner == "ToyScheduler"


def test_register_to_config_replaces_the_config_and_leaves_the_old_one_alone():
    scheduler = ToyScheduler(eta=0.3)
    old = scheduler.config
    scheduler.register_to_config(eta=0.5, requires_safety_checker=False)
    assert (old.eta, scheduler.config.eta, scheduler.config.requires_safety_checker) == (
        0.3, 0.5, False)
    assert isinstance(scheduler.config, FrozenConfig) and scheduler.config._owner == "ToyScheduler"
    x = torch.ones(2)
    scheduler.set_timesteps(2)  # step reads config.eta: the new value
    assert torch.equal(scheduler.step(x, scheduler.timesteps[0], x).prev_sample, x * 0.5)


def test_register_to_config_is_also_the_diffusers_decorator():
    class Ported(ConfigMixin):
        @register_to_config
        def __init__(self, width: int = 3, depth: int = 2):
            self.area = width * depth

    ported = Ported(width=5)
    assert dict(ported.config) == {"width": 5, "depth": 2} and ported.area == 10
    assert Ported.from_config(ported.config, depth=4).area == 20


# ------------------------------------------------------------------------------ unused keys


def test_keys_of_another_class_are_logged_at_info_level_not_warned(caplog):
    with warnings.catch_warnings(), caplog.at_level(logging.INFO, "diffusion_kernel"):
        warnings.simplefilter("error")
        other = ToyScheduler.from_config({"_class_name": "SomeOtherScheduler",
                                          "use_karras_sigmas": True, "eta": 0.2})
    assert other.config.use_karras_sigmas is True  # kept, for a swap back
    assert [(r.levelname, r.getMessage()) for r in caplog.records] == [
        ("INFO", "ToyScheduler does not take config keys ['use_karras_sigmas'] (from "
                 "SomeOtherScheduler); they are kept in its config and saved again, and have no "
                 "effect on it")]


def test_keys_a_compatible_class_takes_are_quiet_without_a_class_name(toys, caplog):
    """A plain dict (diffusers' config of another scheduler, or dict(config)) with a key that a
    compatible class takes: info; a key nobody takes: a logged warning, once."""
    with warnings.catch_warnings(), caplog.at_level(logging.INFO, "diffusion_kernel"):
        warnings.simplefilter("error")
        ToyScheduler.from_config({"use_karras_sigmas": True, "nonsense_key": 1})
        ToyScheduler.from_config({"nonsense_key": 2})
    levels = [(r.levelname, r.getMessage().split(";")[0]) for r in caplog.records]
    assert levels == [
        ("INFO", "ToyScheduler does not take config keys ['use_karras_sigmas'] (from a "
                 "compatible class)"),
        ("WARNING", "ToyScheduler does not use config keys ['nonsense_key']")]


# ---------------------------------------------------------------------------------- outputs


@dataclass
class PairOutput(BaseOutput):
    sample: torch.Tensor
    extra: torch.Tensor | None = None


def test_an_output_is_a_dict_of_its_fields_that_are_set():
    sample = torch.ones(2)
    out = PairOutput(sample=sample)
    assert isinstance(out, dict) and out == PairOutput(sample)  # noqa: SIM300
    assert list(out.keys()) == ["sample"] and list(out.values()) == [sample]
    assert out["sample"] is out.sample is out[0] and out.to_tuple() == (sample,)
    assert list(out) == ["sample"] and len(out) == 1 and "extra" not in out
    with pytest.raises(KeyError):
        out["extra"]
    out.extra = torch.zeros(1)  # setting a field adds its key, in step with the attribute
    assert list(out.items())[1][0] == "extra" and out[1] is out.extra
    out["sample"] = torch.zeros(2)
    assert out.sample is out["sample"] and out.sample.sum() == 0


@pytest.mark.parametrize("change", [
    lambda o: o.pop("sample"), lambda o: o.update(sample=1), lambda o: o.__delitem__("sample"),
    lambda o: o.__setitem__("new", 1), lambda o: o.setdefault("new", 1), lambda o: o.clear(),
    lambda o: o.popitem(),
])
def test_an_outputs_keys_cannot_change_but_through_its_fields(change):
    out = PairOutput(sample=torch.ones(1))
    with pytest.raises(OutputError, match=r"keys are its fields \['sample', 'extra'\]"):
        change(out)


def test_outputs_survive_copy_pickle_pytree_and_accelerates_device_walk():
    import torch.utils._pytree as pytree
    from accelerate.utils import send_to_device

    out = PairOutput(sample=torch.ones(2), extra=torch.zeros(1))
    for clone in (copy.deepcopy(out), pickle.loads(pickle.dumps(out)),
                  pytree.tree_unflatten(*pytree.tree_flatten(out)),
                  send_to_device(out, "cpu")):
        assert type(clone) is PairOutput and list(clone) == ["sample", "extra"]
        assert torch.equal(clone.sample, out.sample) and torch.equal(clone[1], out.extra)
    assert pytree.tree_flatten(out)[0] == [out.sample, out.extra]


def test_pipeline_outputs_are_outputs_too(toys):
    pipe = ToyPipeline(unet=ToyModel(), scheduler=ToyScheduler())
    pipe.set_progress_bar_config(disable=True)
    out = pipe(num_inference_steps=2)
    assert isinstance(out, BaseOutput) and out["images"] is out.images is out[0]


# ------------------------------------------------------------------------------------ models


@pytest.fixture
def saved_model(tmp_path):
    ToyModel(hidden=6).save_pretrained(tmp_path)
    return tmp_path


def test_dtype_is_the_alias_of_torch_dtype_and_stays_out_of_the_config(saved_model, tmp_path,
                                                                        caplog):
    with warnings.catch_warnings(), caplog.at_level(logging.INFO, "diffusion_kernel"):
        warnings.simplefilter("error")
        model = ToyModel.from_pretrained(saved_model, dtype=torch.float16)
    assert model.proj_in.weight.dtype == torch.float16 and "dtype" not in model.config
    assert not caplog.records
    model.save_pretrained(tmp_path / "again")
    assert "dtype" not in json.loads((tmp_path / "again" / "config.json").read_text())
    same = ToyModel.from_pretrained(saved_model, dtype=torch.bfloat16, torch_dtype=torch.bfloat16)
    assert same.dtype == torch.bfloat16
    with pytest.raises(ConfigError, match="dtype=torch.float16 and torch_dtype=torch.float32 "
                                          "disagree"):
        ToyModel.from_pretrained(saved_model, dtype=torch.float16, torch_dtype=torch.float32)


def test_a_pipeline_takes_dtype_too(toys, tmp_path):
    ToyPipeline(unet=ToyModel(), scheduler=ToyScheduler()).save_pretrained(tmp_path)
    pipe = DiffusionPipeline.from_pretrained(tmp_path, dtype=torch.float16)
    assert pipe.unet.dtype == torch.float16


def test_is_gradient_checkpointing_follows_enable_and_disable():
    model = ToyModel()
    assert model.is_gradient_checkpointing is False
    model.enable_gradient_checkpointing()
    assert model.is_gradient_checkpointing is True
    model.disable_gradient_checkpointing()
    assert model.is_gradient_checkpointing is False
