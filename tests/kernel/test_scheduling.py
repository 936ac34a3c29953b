"""The scheduler and processor bases: config files, loading through the registry, the shared
checks, swaps by name with presets; and the error family."""

from __future__ import annotations

import json
import warnings

import diffusion_kernel
import pytest
import torch
from diffusion_kernel import errors
from diffusion_kernel.errors import ConfigError, FileAccessError, SchedulerError
from diffusion_kernel.processing import ProcessorMixin
from diffusion_kernel.scheduling import (
    SchedulerMixin,
    SchedulerOutput,
    check_option,
    scheduler_from_name,
)
from kernel_toys import ToyOtherScheduler, ToyProcessor, ToyScheduler


def test_save_pretrained_writes_scheduler_config_json(tmp_path):
    ToyScheduler(eta=0.4).save_pretrained(tmp_path)
    data = json.loads((tmp_path / "scheduler_config.json").read_text())
    assert data["_class_name"] == "ToyScheduler" and data["eta"] == 0.4


def test_from_pretrained_round_trips_with_overrides(tmp_path):
    ToyScheduler(eta=0.4, num_train_timesteps=10).save_pretrained(tmp_path)
    loaded = ToyScheduler.from_pretrained(tmp_path, eta=0.9)
    assert (loaded.config.num_train_timesteps, loaded.config.eta) == (10, 0.9)


def test_from_pretrained_finds_the_scheduler_of_a_pipeline_folder(tmp_path):
    ToyScheduler(eta=0.3).save_pretrained(tmp_path / "scheduler")
    assert ToyScheduler.from_pretrained(tmp_path).config.eta == 0.3
    assert ToyScheduler.from_pretrained(tmp_path, subfolder="scheduler").config.eta == 0.3


def test_scheduler_mixin_resolves_the_class_through_the_registry(tmp_path, toys):
    ToyScheduler(eta=0.3).save_pretrained(tmp_path)
    loaded = SchedulerMixin.from_pretrained(tmp_path)
    assert type(loaded) is ToyScheduler and loaded.config.eta == 0.3


def test_scheduler_mixin_without_class_name_asks_for_the_class(tmp_path):
    (tmp_path / "scheduler_config.json").write_text('{"eta": 0.1}')
    with pytest.raises(ConfigError, match="has no _class_name"):
        SchedulerMixin.from_pretrained(tmp_path)


def test_a_folder_without_scheduler_config_is_named(tmp_path):
    with pytest.raises(FileAccessError, match="'scheduler_config.json' not found"):
        ToyScheduler.from_pretrained(tmp_path)


def test_step_before_set_timesteps_says_what_to_call():
    with pytest.raises(SchedulerError, match=r"step\(\) was called before set_timesteps\(\)"):
        ToyScheduler().step(torch.zeros(2), 5, torch.zeros(2))


def test_mismatched_model_output_shape_is_explained():
    scheduler = ToyScheduler()
    scheduler.set_timesteps(2)
    with pytest.raises(SchedulerError, match=r"model_output has shape \(1, 6\) but the sample "
                                             r"has shape \(1, 3\).*learned variance"):
        scheduler.step(torch.zeros(1, 6), 99, torch.zeros(1, 3))


def test_check_option_lists_the_valid_values():
    with pytest.raises(ConfigError) as exc:
        ToyScheduler(prediction_type="sample")
    assert str(exc.value) == ("ToyScheduler: unknown prediction_type 'sample'; valid values are: "
                              "'epsilon', 'v_prediction'")
    check_option("x", "a", {"a": 1}, "Owner")  # a mapping's keys are valid too


def test_step_output_has_prev_sample_and_tuple_access():
    scheduler = ToyScheduler(eta=0.5)
    scheduler.set_timesteps(3)
    out = scheduler.step(torch.ones(2), scheduler.timesteps[0], torch.full((2,), 3.0))
    torch.testing.assert_close(out.prev_sample, torch.full((2,), 2.5))
    # as diffusers' BaseOutput: fields left at None are not keys, nor positions
    assert out[0] is out.prev_sample and out.pred_original_sample is None
    assert list(out.keys()) == ["prev_sample"] and out.to_tuple() == (out.prev_sample,)
    with pytest.raises(IndexError):
        out[1]
    assert isinstance(out, SchedulerOutput)


def test_shared_defaults_len_and_repr():
    scheduler = ToyScheduler(num_train_timesteps=40)
    assert len(scheduler) == 40
    assert scheduler.order == 1 and scheduler.init_noise_sigma == 1.0
    sample = torch.randn(3)
    assert scheduler.scale_model_input(sample, 5) is sample
    assert repr(scheduler).startswith("ToyScheduler({'num_train_timesteps': 40")


def test_compatibles_lists_installed_classes_only(toys):
    assert ToyScheduler().compatibles == [ToyScheduler, ToyOtherScheduler]


def test_scheduler_from_name_applies_a_preset_on_top_of_a_config(toys):
    base = ToyOtherScheduler(num_train_timesteps=30)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the other class's keys are not this one's mistake
        swapped = scheduler_from_name("toy-v", base.config)
    assert type(swapped) is ToyScheduler
    assert swapped.config.num_train_timesteps == 30  # the training schedule carries over
    assert (swapped.config.prediction_type, swapped.config.eta) == ("v_prediction", 0.5)
    assert scheduler_from_name("toy-v", base.config, eta=0.1).config.eta == 0.1  # overrides win
    assert scheduler_from_name("toy-sched").config.eta == 0.1


def test_scheduler_from_an_unknown_name_suggests_nearest(toys):
    with pytest.raises(errors.NotRegisteredError, match="Did you mean: toy-sched"):
        scheduler_from_name("toy-shed")


def test_scheduler_deep_copies_with_its_state():
    import copy

    scheduler = ToyScheduler(eta=0.2)
    scheduler.set_timesteps(4)
    clone = copy.deepcopy(scheduler)
    assert clone.config == scheduler.config
    assert torch.equal(clone.timesteps, scheduler.timesteps)


# Processors ----------------------------------------------------------------------------------
def test_processor_round_trips_its_config(tmp_path):
    ToyProcessor(scale=4.0).save_pretrained(tmp_path)
    assert json.loads((tmp_path / "processor_config.json").read_text())["scale"] == 4.0
    loaded = ToyProcessor.from_pretrained(tmp_path)
    assert loaded.postprocess(loaded.preprocess([1.0, 2.0])) == [1.0, 2.0]
    torch.testing.assert_close(loaded.preprocess([1.0]), torch.tensor([4.0]))


def test_processor_base_says_what_is_not_implemented():
    class Bare(ProcessorMixin):
        def __init__(self):
            pass

    with pytest.raises(NotImplementedError, match="Bare does not implement preprocess"):
        Bare().preprocess(1)
    with pytest.raises(NotImplementedError, match="Bare does not implement postprocess"):
        Bare().postprocess(1)


# Errors --------------------------------------------------------------------------------------
def test_every_error_belongs_to_the_family_and_is_exported():
    family = [obj for obj in vars(errors).values()
              if isinstance(obj, type) and issubclass(obj, Exception)]
    assert len(family) >= 10
    for exc in family:
        assert issubclass(exc, errors.DiffusionKernelError)
        assert getattr(diffusion_kernel, exc.__name__) is exc
        assert exc.__doc__


@pytest.mark.parametrize("exc, builtin", [
    (errors.NotRegisteredError, LookupError), (errors.ConfigError, ValueError),
    (errors.CheckpointError, ValueError), (errors.UnsafeCheckpointError, errors.CheckpointError),
    (errors.FileAccessError, OSError), (errors.SchedulerError, ValueError),
    (errors.PipelineError, ValueError),
])
def test_errors_also_subclass_the_builtin_callers_expect(exc, builtin):
    assert issubclass(exc, builtin)
