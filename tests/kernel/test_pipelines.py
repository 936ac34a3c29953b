"""The pipeline base: model_index.json in the diffusers format, components through the registry
or transformers, overrides, dtype and variants, atomic saves, progress bars, step-end callbacks."""

from __future__ import annotations

import json
import os

import diffusion_kernel.modeling as modeling
import pytest
import torch
from diffusion_kernel.configuration import FORMAT_VERSION
from diffusion_kernel.errors import PipelineError, UnsafeCheckpointError
from diffusion_kernel.pipelines import DiffusionPipeline, library_of
from kernel_toys import ToyModel, ToyOtherScheduler, ToyPipeline, ToyScheduler, ToyTextPipeline


def _pipe(hidden: int = 6) -> ToyPipeline:
    pipe = ToyPipeline(unet=ToyModel(hidden=hidden), scheduler=ToyScheduler(eta=0.2))
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _run(pipe, **kwargs) -> torch.Tensor:
    pipe.set_progress_bar_config(disable=True)
    return pipe(batch_size=2, generator=torch.Generator().manual_seed(3), **kwargs).images


def _index(folder) -> dict:
    return json.loads((folder / "model_index.json").read_text())


def _write_index(folder, **changes) -> None:
    index = _index(folder)
    index.update(changes)
    (folder / "model_index.json").write_text(json.dumps(index))


@pytest.fixture
def saved(tmp_path, toys):
    pipe = _pipe()
    pipe.save_pretrained(tmp_path / "pipe")
    return pipe, tmp_path / "pipe"


def test_save_writes_model_index_and_one_folder_per_component(saved):
    _, folder = saved
    assert sorted(os.listdir(folder)) == ["SHA256SUMS", "model_index.json", "scheduler", "unet"]
    assert _index(folder) == {"_class_name": "ToyPipeline", "_diffusers_version": FORMAT_VERSION,
                              "unet": ["kernel_toys", "ToyModel"],
                              "scheduler": ["kernel_toys", "ToyScheduler"]}
    assert sorted(os.listdir(folder / "unet")) == ["SHA256SUMS", "config.json",
                                                   "diffusion_pytorch_model.safetensors"]
    assert os.listdir(folder / "scheduler") == ["scheduler_config.json"]


def test_library_of_names_diffusers_for_kernel_plugin_classes():
    plugin_class = type("UNet2DModel", (), {"__module__": "diffusion_kernel_vision.models.unet"})
    assert library_of(plugin_class()) == "diffusers"
    assert library_of(ToyModel()) == "kernel_toys"
    from transformers import CLIPTextConfig, CLIPTextModel

    tiny = CLIPTextModel(CLIPTextConfig(hidden_size=8, intermediate_size=8, num_hidden_layers=1,
                                        num_attention_heads=2, vocab_size=20,
                                        max_position_embeddings=8))
    assert library_of(tiny) == "transformers"


def test_round_trip_gives_the_same_components_and_samples(saved):
    pipe, folder = saved
    loaded = ToyPipeline.from_pretrained(folder)
    assert loaded.scheduler.config == pipe.scheduler.config
    assert loaded.unet.config == pipe.unet.config
    torch.testing.assert_close(_run(loaded), _run(pipe), rtol=0, atol=0)


def test_diffusion_pipeline_resolves_the_class_from_model_index(saved):
    loaded = DiffusionPipeline.from_pretrained(saved[1])
    assert type(loaded) is ToyPipeline


def test_diffusers_library_name_resolves_through_the_registry(saved):
    pipe, folder = saved
    _write_index(folder, unet=["diffusers", "ToyModel"], scheduler=["diffusers", "ToyScheduler"])
    loaded = DiffusionPipeline.from_pretrained(folder)
    assert type(loaded.unet) is ToyModel and type(loaded.scheduler) is ToyScheduler
    torch.testing.assert_close(_run(loaded), _run(pipe), rtol=0, atol=0)


def test_model_index_without_class_name_needs_the_pipeline_class(saved):
    index = _index(saved[1])
    del index["_class_name"]
    (saved[1] / "model_index.json").write_text(json.dumps(index))
    with pytest.raises(PipelineError, match="has no _class_name"):
        DiffusionPipeline.from_pretrained(saved[1])
    assert type(ToyPipeline.from_pretrained(saved[1])) is ToyPipeline


def test_components_are_listed_and_rebuild_another_pipeline(saved):
    pipe, _ = saved
    assert list(pipe.components) == ["unet", "scheduler"]
    again = ToyPipeline(**pipe.components)
    assert again.unet is pipe.unet
    assert pipe.config["unet"] == ("kernel_toys", "ToyModel")


def test_override_replaces_a_component_without_reading_its_folder(saved):
    _, folder = saved
    for f in os.listdir(folder / "scheduler"):
        os.remove(folder / "scheduler" / f)
    other = ToyOtherScheduler()
    loaded = ToyPipeline.from_pretrained(folder, scheduler=other)
    assert loaded.scheduler is other


def test_non_component_constructor_arguments_pass_through(saved):
    assert ToyPipeline.from_pretrained(saved[1], guidance=3.0).guidance == 3.0


def test_plain_values_in_model_index_reach_the_constructor(saved):
    _write_index(saved[1], guidance=2.5)  # like "requires_safety_checker": true in diffusers
    assert ToyPipeline.from_pretrained(saved[1]).guidance == 2.5
    assert ToyPipeline.from_pretrained(saved[1], guidance=4.0).guidance == 4.0


def test_diffusers_loading_flags_are_accepted(saved):
    loaded = ToyPipeline.from_pretrained(saved[1], use_safetensors=True, low_cpu_mem_usage=True)
    assert "use_safetensors" not in loaded.unet.config


def test_unknown_keyword_arguments_are_rejected(saved):
    with pytest.raises(PipelineError, match=r"got unknown arguments \['vae'\]"):
        ToyPipeline.from_pretrained(saved[1], vae=object())


def test_a_missing_component_is_named(saved):
    index = _index(saved[1])
    del index["scheduler"]
    (saved[1] / "model_index.json").write_text(json.dumps(index))
    with pytest.raises(PipelineError, match=r"needs components \['scheduler'\]"):
        ToyPipeline.from_pretrained(saved[1])


def test_a_malformed_model_index_entry_is_named(saved):
    _write_index(saved[1], unet=["kernel_toys"])
    with pytest.raises(PipelineError, match="entry 'unet' of .* must be \\[library, class\\]"):
        ToyPipeline.from_pretrained(saved[1])


def test_an_unregistered_class_from_another_library_says_what_to_install(saved):
    _write_index(saved[1], unet=["other_lib", "MysteryModel"])
    with pytest.raises(PipelineError) as exc:
        ToyPipeline.from_pretrained(saved[1])
    message = str(exc.value)
    assert "entry 'unet' of" in message
    assert "names ['other_lib', 'MysteryModel'], which cannot be loaded" in message
    assert "install the diffusion-kernel plugin that registers it" in message


def test_a_folder_without_model_index_is_not_a_pipeline(tmp_path):
    with pytest.raises(PipelineError, match="no model_index.json"):
        DiffusionPipeline.from_pretrained(tmp_path)


def test_torch_dtype_applies_to_model_components(saved):
    loaded = ToyPipeline.from_pretrained(saved[1], torch_dtype=torch.float16)
    assert loaded.unet.dtype == torch.float16 and loaded.dtype == torch.float16


def test_to_moves_and_casts_every_module(saved):
    pipe, _ = saved
    assert pipe.to(torch.float64) is pipe
    assert pipe.unet.dtype == torch.float64 and pipe.dtype == torch.float64
    assert pipe.device.type == "cpu"


def test_variant_is_saved_and_loaded(tmp_path, toys):
    pipe = _pipe()
    pipe.unet.to(torch.float16)
    pipe.save_pretrained(tmp_path, variant="fp16")
    assert "diffusion_pytorch_model.fp16.safetensors" in os.listdir(tmp_path / "unet")
    loaded = ToyPipeline.from_pretrained(tmp_path, variant="fp16", torch_dtype=torch.float16)
    torch.testing.assert_close(loaded.unet.proj_in.weight, pipe.unet.proj_in.weight)


def test_a_component_without_the_variant_falls_back_to_its_plain_weights(tmp_path, toys):
    pipe = ToyTextPipeline(text_encoder=_tiny_clip(), unet=ToyModel(), scheduler=ToyScheduler())
    pipe.save_pretrained(tmp_path)
    pipe.text_encoder.save_pretrained(tmp_path / "text_encoder", variant="fp16")
    loaded = ToyTextPipeline.from_pretrained(tmp_path, variant="fp16")  # unet has no fp16
    torch.testing.assert_close(loaded.unet.proj_in.weight, pipe.unet.proj_in.weight)


def test_a_sharded_component_loads(saved):
    pipe, folder = saved
    pipe.unet.save_pretrained(folder / "unet", max_shard_size=100)
    assert "diffusion_pytorch_model.safetensors" not in os.listdir(folder / "unet")
    torch.testing.assert_close(_run(ToyPipeline.from_pretrained(folder)), _run(pipe),
                               rtol=0, atol=0)


def test_a_variant_no_component_has_is_an_error(saved):
    with pytest.raises(PipelineError, match="no component .* variant 'fp16'"):
        ToyPipeline.from_pretrained(saved[1], variant="fp16")


def test_pickle_only_components_are_refused_before_loading(saved):
    pipe, folder = saved
    os.remove(folder / "unet" / "diffusion_pytorch_model.safetensors")
    torch.save(pipe.unet.state_dict(), folder / "unet" / "diffusion_pytorch_model.bin")
    with pytest.raises(UnsafeCheckpointError, match="unet has only pickle weights"):
        ToyPipeline.from_pretrained(folder)
    loaded = ToyPipeline.from_pretrained(folder, allow_pickle=True)
    torch.testing.assert_close(loaded.unet.proj_in.weight, pipe.unet.proj_in.weight)


def test_crash_mid_save_keeps_the_old_pipeline(saved, monkeypatch):
    pipe, folder = saved

    def crash(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(modeling, "save_safetensors", crash)
    with pytest.raises(OSError, match="disk full"):
        ToyPipeline(unet=ToyModel(hidden=3), scheduler=ToyOtherScheduler()).save_pretrained(folder)
    assert _index(folder)["scheduler"] == ["kernel_toys", "ToyScheduler"]
    assert [p for p in os.listdir(folder.parent) if "partial" in p or ".old-" in p] == []
    monkeypatch.undo()
    torch.testing.assert_close(_run(ToyPipeline.from_pretrained(folder)), _run(pipe))


def test_resave_keeps_extra_files_and_replaces_components(saved):
    _, folder = saved
    (folder / "README.md").write_text("card")
    ToyPipeline(unet=ToyModel(hidden=3), scheduler=ToyOtherScheduler()).save_pretrained(folder)
    assert (folder / "README.md").read_text() == "card"
    assert os.listdir(folder / "scheduler") == ["scheduler_config.json"]
    assert ToyPipeline.from_pretrained(folder).unet.config.hidden == 3


def test_optional_component_set_to_none_is_saved_as_null_pair(tmp_path, toys):
    pipe = ToyTextPipeline(text_encoder=_tiny_clip(), unet=ToyModel(), scheduler=ToyScheduler())
    pipe.save_pretrained(tmp_path)
    assert _index(tmp_path)["safety_checker"] == [None, None]
    assert "safety_checker" not in os.listdir(tmp_path)
    assert ToyTextPipeline.from_pretrained(tmp_path).safety_checker is None


# transformers components ---------------------------------------------------------------------
def _tiny_clip():
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(0)
    return CLIPTextModel(CLIPTextConfig(hidden_size=8, intermediate_size=16, num_hidden_layers=1,
                                        num_attention_heads=2, vocab_size=32,
                                        max_position_embeddings=8, bos_token_id=0,
                                        eos_token_id=1, pad_token_id=1))


def test_transformers_component_loads_through_transformers(tmp_path, toys):
    pipe = ToyTextPipeline(text_encoder=_tiny_clip(), unet=ToyModel(), scheduler=ToyScheduler())
    pipe.save_pretrained(tmp_path)
    assert _index(tmp_path)["text_encoder"] == ["transformers", "CLIPTextModel"]
    assert "model.safetensors" in os.listdir(tmp_path / "text_encoder")
    loaded = DiffusionPipeline.from_pretrained(tmp_path, torch_dtype=torch.float16)
    assert type(loaded.text_encoder).__name__ == "CLIPTextModel"
    assert loaded.text_encoder.dtype == torch.float16
    ids = torch.tensor([[1, 2, 3]])
    with torch.no_grad():
        expected = pipe.text_encoder(ids).last_hidden_state
        got = loaded.text_encoder.float()(ids).last_hidden_state
    torch.testing.assert_close(got, expected, rtol=2e-2, atol=2e-2)


def test_pickle_only_transformers_component_loads_when_allowed(tmp_path, toys):
    pipe = ToyTextPipeline(text_encoder=_tiny_clip(), unet=ToyModel(), scheduler=ToyScheduler())
    pipe.save_pretrained(tmp_path)
    os.remove(tmp_path / "text_encoder" / "model.safetensors")
    torch.save(pipe.text_encoder.state_dict(), tmp_path / "text_encoder" / "pytorch_model.bin")
    with pytest.raises(UnsafeCheckpointError, match="text_encoder has only pickle weights"):
        ToyTextPipeline.from_pretrained(tmp_path)
    loaded = ToyTextPipeline.from_pretrained(tmp_path, allow_pickle=True)
    for key, value in pipe.text_encoder.state_dict().items():
        torch.testing.assert_close(loaded.text_encoder.state_dict()[key], value)


def test_unknown_transformers_class_says_to_upgrade(tmp_path, toys):
    pipe = ToyTextPipeline(text_encoder=_tiny_clip(), unet=ToyModel(), scheduler=ToyScheduler())
    pipe.save_pretrained(tmp_path)
    _write_index(tmp_path, text_encoder=["transformers", "FutureTextModel"])
    with pytest.raises(PipelineError, match="transformers has no class 'FutureTextModel'"):
        ToyTextPipeline.from_pretrained(tmp_path)


# Progress bars and callbacks -----------------------------------------------------------------
def test_progress_bar_shows_steps_unless_disabled(capsys, toys):
    pipe = _pipe()
    pipe.set_progress_bar_config(disable=False, ncols=40)
    pipe(num_inference_steps=4)
    assert "4/4" in capsys.readouterr().err
    pipe.set_progress_bar_config(disable=True)
    pipe(num_inference_steps=4)
    assert capsys.readouterr().err == ""


def test_callback_on_step_end_sees_each_step_and_the_asked_tensors(toys):
    seen = []

    def callback(pipe, step, timestep, tensors):
        seen.append((step, int(timestep), sorted(tensors), tensors["latents"].shape))
        return {}

    pipe = _pipe()
    _run(pipe, num_inference_steps=3, callback_on_step_end=callback,
         callback_on_step_end_tensor_inputs=("latents", "noise_pred"))
    assert [s[:2] for s in seen] == [(0, 99), (1, 50), (2, 0)]
    assert all(s[2] == ["latents", "noise_pred"] and s[3] == (2, 4) for s in seen)


def test_callback_on_step_end_can_replace_latents(toys):
    pipe = _pipe()
    out = _run(pipe, callback_on_step_end=lambda p, i, t, d: {"latents": d["latents"] * 0})
    assert torch.count_nonzero(out) == 0


def test_callback_asking_for_an_unknown_tensor_is_rejected(toys):
    with pytest.raises(PipelineError, match=r"asks for \['prompt_embeds'\].*choose from"):
        _run(_pipe(), callback_on_step_end=lambda *a: {},
             callback_on_step_end_tensor_inputs=("prompt_embeds",))


def test_repr_names_the_components(toys):
    assert repr(_pipe()) == "ToyPipeline(unet=ToyModel, scheduler=ToyScheduler)"


def test_diffusers_loads_a_pipeline_we_saved(tmp_path):
    """model_index.json, the component folders and their files are the reference's format:
    diffusers' own DiffusionPipeline loads what our base class saved."""
    import warnings

    import diffusers
    from diffusion_kernel.modeling import ModelMixin
    from diffusion_kernel.scheduling import SchedulerMixin

    reference = diffusers.UNet2DModel(sample_size=8, in_channels=1, out_channels=1,
                                      layers_per_block=1, block_out_channels=(8, 8),
                                      norm_num_groups=4,
                                      down_block_types=("DownBlock2D", "DownBlock2D"),
                                      up_block_types=("UpBlock2D", "UpBlock2D"))

    class UNet2DModel(ModelMixin):  # our side of the checkpoint: the reference's weights
        def __init__(self, **config):
            super().__init__()
            self.inner = reference

        def state_dict(self, *args, **kwargs):
            return self.inner.state_dict(*args, **kwargs)

    class DDPMScheduler(SchedulerMixin):
        def __init__(self, num_train_timesteps: int = 1000, beta_schedule: str = "linear"):
            pass

    class DDPMPipeline(DiffusionPipeline):
        def __init__(self, unet, scheduler):
            self.register_modules(unet=unet, scheduler=scheduler)

    for cls in (UNet2DModel, DDPMScheduler):
        cls.__module__ = "diffusion_kernel_fake.parts"  # as if a plugin of ours defined them
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the wrapper keeps the reference's config keys hidden
        unet = UNet2DModel.from_config(dict(reference.config))
    ours = DDPMPipeline(unet=unet, scheduler=DDPMScheduler(num_train_timesteps=50,
                                                          beta_schedule="squaredcos_cap_v2"))
    ours.save_pretrained(tmp_path)
    assert _index(tmp_path)["unet"] == ["diffusers", "UNet2DModel"]
    loaded = diffusers.DiffusionPipeline.from_pretrained(tmp_path)
    assert type(loaded) is diffusers.DDPMPipeline
    assert loaded.scheduler.config.num_train_timesteps == 50
    assert loaded.scheduler.config.beta_schedule == "squaredcos_cap_v2"
    for key, value in reference.state_dict().items():
        torch.testing.assert_close(loaded.unet.state_dict()[key], value, rtol=0, atol=0)
