"""Model save/load in the diffusers layout: safetensors, atomic saves, shards, variants, dtype and
device, meta-device construction, key checks, pickle refusal, legacy key renames."""

from __future__ import annotations

import copy
import json
import os

import diffusion_kernel.modeling as modeling
import pytest
import torch
from diffusion_kernel.errors import (
    CheckpointError,
    ConfigError,
    FileAccessError,
    UnsafeCheckpointError,
)
from diffusion_kernel.modeling import ModelMixin
from kernel_toys import ToyModel
from safetensors.torch import load_file, save_file
from torch import nn


def _same_weights(a: nn.Module, b: nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for key in sa:
        torch.testing.assert_close(sa[key], sb[key], rtol=0, atol=0)


def _leftovers(folder) -> list[str]:
    return [p for p in os.listdir(os.path.dirname(folder)) if ".partial-" in p or ".old-" in p]


@pytest.fixture
def saved(tmp_path):
    model = ToyModel(hidden=6)
    model.save_pretrained(tmp_path / "model")
    return model, tmp_path / "model"


def test_save_writes_config_and_safetensors_weights(saved):
    model, folder = saved
    assert sorted(os.listdir(folder)) == ["SHA256SUMS", "config.json",
                                          "diffusion_pytorch_model.safetensors"]
    config = json.loads((folder / "config.json").read_text())
    assert config["_class_name"] == "ToyModel" and config["hidden"] == 6
    tensors = load_file(folder / "diffusion_pytorch_model.safetensors")
    assert sorted(tensors) == sorted(model.state_dict())  # "scale" is not persistent
    assert "scale" not in tensors and tensors["step_ids"].dtype == torch.int64
    torch.testing.assert_close(tensors["proj_in.weight"], model.proj_in.weight.detach())


def test_round_trip_gives_identical_weights_and_outputs(saved):
    model, folder = saved
    loaded = ToyModel.from_pretrained(folder)
    _same_weights(model, loaded)
    x = torch.randn(2, 4)
    torch.testing.assert_close(loaded(x), model(x), rtol=0, atol=0)
    assert loaded.config == model.config
    assert not loaded.training


def test_loading_builds_parameters_on_meta_without_random_init(saved, monkeypatch):
    calls = []
    monkeypatch.setattr(nn.init, "kaiming_uniform_", lambda t, *a, **k: calls.append(t) or t)
    loaded = ToyModel.from_pretrained(saved[1])
    assert loaded.built_on == "meta"
    assert all(t.device.type == "meta" for t in calls)  # init ran on nothing
    assert all(p.device.type == "cpu" for p in loaded.parameters())
    assert loaded.scale.item() == 2.0  # non-persistent buffer computed by the constructor


def test_loaded_parameters_keep_requires_grad_and_are_parameters(saved):
    loaded = ToyModel.from_pretrained(saved[1])
    assert all(isinstance(p, nn.Parameter) and p.requires_grad for p in loaded.parameters())


def test_loaded_weights_are_memory_mapped_and_writable_without_touching_the_file(saved):
    model, folder = saved
    before = (folder / "diffusion_pytorch_model.safetensors").read_bytes()
    loaded = ToyModel.from_pretrained(folder)
    with torch.no_grad():
        loaded.proj_in.weight.add_(1.0)  # copy-on-write: the file stays as saved
    assert (folder / "diffusion_pytorch_model.safetensors").read_bytes() == before
    _same_weights(model, ToyModel.from_pretrained(folder))


def test_loaded_weights_point_into_one_mapping_of_the_file(saved):
    """No copy: parameters sit in the mapped file at the offsets its header gives."""
    from diffusion_kernel.weights import SafetensorsFile

    with SafetensorsFile(saved[1] / "diffusion_pytorch_model.safetensors") as file:
        offsets = {k: v["data_offsets"][0] for k, v in file.header.items()}
    loaded = ToyModel.from_pretrained(saved[1])
    state = loaded.state_dict()
    base = state["proj_in.weight"].data_ptr() - offsets["proj_in.weight"]
    assert all(state[k].data_ptr() - base == offsets[k] for k in offsets)
    converted = ToyModel.from_pretrained(saved[1], torch_dtype=torch.float64).state_dict()
    assert converted["proj_in.weight"].data_ptr() - base != offsets["proj_in.weight"]


def test_streamed_loading_without_mmap_gives_the_same_weights(saved):
    _same_weights(saved[0], ToyModel.from_pretrained(saved[1], mmap=False))


def test_torch_dtype_converts_floating_weights_only(saved):
    loaded = ToyModel.from_pretrained(saved[1], torch_dtype=torch.float16)
    assert loaded.proj_in.weight.dtype == torch.float16
    assert loaded.step_ids.dtype == torch.int64
    assert loaded.dtype == torch.float16
    torch.testing.assert_close(loaded.proj_in.weight.float(), saved[0].proj_in.weight,
                               rtol=1e-3, atol=1e-3)


def test_keep_in_fp32_modules_stay_float32(saved, monkeypatch):
    monkeypatch.setattr(ToyModel, "_keep_in_fp32_modules", ("norm",))
    loaded = ToyModel.from_pretrained(saved[1], torch_dtype=torch.bfloat16)
    assert loaded.norm.weight.dtype == torch.float32
    assert loaded.proj_out.weight.dtype == torch.bfloat16


def test_without_torch_dtype_a_half_checkpoint_loads_in_the_model_dtype(tmp_path):
    model = ToyModel().to(torch.float16)
    model.save_pretrained(tmp_path)
    assert load_file(tmp_path / "diffusion_pytorch_model.safetensors")["norm.weight"].dtype \
        == torch.float16
    assert ToyModel.from_pretrained(tmp_path).dtype == torch.float32


def test_device_argument_places_weights_and_buffers(saved):
    loaded = ToyModel.from_pretrained(saved[1], device="cpu")
    assert loaded.device.type == "cpu" and loaded.scale.device.type == "cpu"


def test_torch_dtype_must_be_a_dtype(saved):
    with pytest.raises(ConfigError, match="torch_dtype must be a torch.dtype"):
        ToyModel.from_pretrained(saved[1], torch_dtype="float16")


def test_config_overrides_apply_when_loading(saved):
    with pytest.raises(CheckpointError, match="mis-shaped"):
        ToyModel.from_pretrained(saved[1], hidden=7)


def test_subfolder(tmp_path):
    model = ToyModel()
    model.save_pretrained(tmp_path / "unet")
    _same_weights(model, ToyModel.from_pretrained(tmp_path, subfolder="unet"))


def test_model_mixin_resolves_the_class_through_the_registry(toys, saved):
    loaded = ModelMixin.from_pretrained(saved[1])
    assert type(loaded) is ToyModel
    _same_weights(saved[0], loaded)


def test_model_mixin_without_class_name_asks_for_the_class(saved):
    config = json.loads((saved[1] / "config.json").read_text())
    del config["_class_name"]
    (saved[1] / "config.json").write_text(json.dumps(config))
    with pytest.raises(ConfigError, match="no _class_name"):
        ModelMixin.from_pretrained(saved[1])


def test_a_folder_without_config_raises_naming_the_fix(tmp_path):
    with pytest.raises(FileAccessError, match=r"no config.json .* pass subfolder='unet'"):
        ToyModel.from_pretrained(tmp_path)


def test_a_path_that_does_not_exist_raises_file_access_error(tmp_path):
    with pytest.raises(FileAccessError, match="neither an existing local folder nor a Hub repo"):
        ToyModel.from_pretrained(str(tmp_path / "missing" / "model"))


# Variants ------------------------------------------------------------------------------------
def test_variant_is_saved_beside_the_default_weights(saved):
    model, folder = saved
    half = ToyModel(hidden=6).to(torch.float16)
    half.save_pretrained(folder, variant="fp16")
    assert "diffusion_pytorch_model.fp16.safetensors" in os.listdir(folder)
    assert "diffusion_pytorch_model.safetensors" in os.listdir(folder)  # kept
    loaded = ToyModel.from_pretrained(folder, variant="fp16", torch_dtype=torch.float16)
    _same_weights(half, loaded)
    _same_weights(model, ToyModel.from_pretrained(folder))


def test_missing_variant_raises_listing_the_variants_present(saved):
    ToyModel(hidden=6).save_pretrained(saved[1], variant="ema")
    with pytest.raises(FileAccessError) as exc:
        ToyModel.from_pretrained(saved[1], variant="fp16")
    assert "no weights for variant 'fp16'" in str(exc.value)
    assert "Variants present: ema." in str(exc.value)


# Sharding ------------------------------------------------------------------------------------
def test_sharded_save_writes_shards_and_a_diffusers_index(tmp_path):
    model = ToyModel(hidden=16)
    model.save_pretrained(tmp_path, max_shard_size=300)  # bytes: several shards
    shards = sorted(f for f in os.listdir(tmp_path) if f.endswith(".safetensors"))
    assert len(shards) > 2
    assert shards[0] == f"diffusion_pytorch_model-00001-of-{len(shards):05d}.safetensors"
    index = json.loads((tmp_path / "diffusion_pytorch_model.safetensors.index.json").read_text())
    assert set(index["weight_map"]) == set(model.state_dict())
    assert set(index["weight_map"].values()) == set(shards)
    total = sum(t.numel() * t.element_size() for t in model.state_dict().values())
    assert index["metadata"]["total_size"] == total
    for shard in shards:
        assert sum(t.numel() * t.element_size() for t in load_file(tmp_path / shard).values()) \
            <= 300 or len(load_file(tmp_path / shard)) == 1
    _same_weights(model, ToyModel.from_pretrained(tmp_path))


def test_sharded_checkpoint_loads_in_diffusers(tmp_path):
    """The index format is the reference's: diffusers' own loader reads our shards."""
    from diffusers import UNet2DModel

    reference = UNet2DModel(sample_size=8, in_channels=1, out_channels=1, layers_per_block=1,
                            block_out_channels=(8, 8), norm_num_groups=4,
                            down_block_types=("DownBlock2D", "DownBlock2D"),
                            up_block_types=("UpBlock2D", "UpBlock2D"))

    class UNet2DModel(ModelMixin):  # noqa: F811 - wraps the reference module under its name
        def __init__(self, **config):
            super().__init__()
            self.inner = reference

        def state_dict(self, *args, **kwargs):
            return self.inner.state_dict(*args, **kwargs)

    ours = UNet2DModel.from_config(dict(reference.config))  # keys kept hidden, and logged
    ours.save_pretrained(tmp_path, max_shard_size="20KB")
    assert (tmp_path / "diffusion_pytorch_model.safetensors.index.json").exists()
    from diffusers import UNet2DModel as ReferenceUNet

    again = ReferenceUNet.from_pretrained(tmp_path)
    _same_weights(reference, again)


def test_sharded_variant_uses_the_diffusers_names_and_loads(tmp_path):
    model = ToyModel(hidden=16).to(torch.float16)
    model.save_pretrained(tmp_path, variant="fp16", max_shard_size=200)
    files = sorted(os.listdir(tmp_path))
    assert "diffusion_pytorch_model.safetensors.index.fp16.json" in files
    shards = [f for f in files if f.endswith(".safetensors")]
    assert len(shards) > 1
    assert shards[0] == f"diffusion_pytorch_model.fp16-00001-of-{len(shards):05d}.safetensors"
    _same_weights(model, ToyModel.from_pretrained(tmp_path, variant="fp16",
                                                  torch_dtype=torch.float16))


def test_resaving_unsharded_removes_stale_shards(tmp_path):
    model = ToyModel(hidden=16)
    model.save_pretrained(tmp_path, max_shard_size=300)
    (tmp_path / "README.md").write_text("kept")
    model.save_pretrained(tmp_path)
    assert sorted(os.listdir(tmp_path)) == ["README.md", "SHA256SUMS", "config.json",
                                            "diffusion_pytorch_model.safetensors"]
    assert (tmp_path / "README.md").read_text() == "kept"


def test_index_naming_a_missing_shard_raises(tmp_path):
    ToyModel(hidden=16).save_pretrained(tmp_path, max_shard_size=300)
    os.remove(tmp_path / sorted(f for f in os.listdir(tmp_path) if f.endswith("safetensors"))[0])
    with pytest.raises(CheckpointError, match="names files that are missing"):
        ToyModel.from_pretrained(tmp_path)


def test_bad_shard_size_raises_config_error(tmp_path):
    with pytest.raises(ConfigError, match="is not a size like '5GB'"):
        ToyModel().save_pretrained(tmp_path, max_shard_size="lots")
    assert modeling.parse_size("1.5KB") == 1500 and modeling.parse_size("2MiB") == 2 * 2**20


# Atomic saves --------------------------------------------------------------------------------
def test_crash_mid_save_leaves_the_old_checkpoint_and_no_staging_folder(saved, monkeypatch):
    model, folder = saved
    written = []

    def crash(tensors, path, metadata=None):
        written.append(sorted(os.listdir(os.path.dirname(path))))  # config.json already there
        raise OSError("disk full")

    monkeypatch.setattr(modeling, "save_safetensors", crash)
    with pytest.raises(OSError, match="disk full"):
        ToyModel(hidden=6, act="gelu").save_pretrained(folder)
    assert written == [["config.json"]]
    assert _leftovers(folder) == []
    assert json.loads((folder / "config.json").read_text())["act"] == "silu"
    _same_weights(model, ToyModel.from_pretrained(folder))


def test_crash_while_writing_a_later_shard_keeps_the_old_shards(tmp_path, monkeypatch):
    model = ToyModel(hidden=16)
    model.save_pretrained(tmp_path / "m", max_shard_size=300)
    before = sorted(os.listdir(tmp_path / "m"))
    real = modeling.save_safetensors
    calls = []

    def crash_on_third(tensors, path, metadata=None):
        calls.append(path)
        if len(calls) == 3:
            raise KeyboardInterrupt
        real(tensors, path, metadata)

    monkeypatch.setattr(modeling, "save_safetensors", crash_on_third)
    with pytest.raises(KeyboardInterrupt):
        ToyModel(hidden=16).save_pretrained(tmp_path / "m", max_shard_size=300)
    assert sorted(os.listdir(tmp_path / "m")) == before
    assert _leftovers(tmp_path / "m") == []
    _same_weights(model, ToyModel.from_pretrained(tmp_path / "m"))


def test_a_loaded_model_saves_back_into_the_folder_it_was_mapped_from(saved):
    loaded = ToyModel.from_pretrained(saved[1])
    with torch.no_grad():
        loaded.proj_in.weight.mul_(3.0)
    loaded.save_pretrained(saved[1])
    again = ToyModel.from_pretrained(saved[1])
    _same_weights(loaded, again)
    torch.testing.assert_close(again.proj_in.weight, saved[0].proj_in.weight * 3.0)
    assert _leftovers(saved[1]) == []


def test_save_over_a_file_raises_and_keeps_the_file(tmp_path):
    (tmp_path / "model").write_text("not a folder")
    with pytest.raises(FileAccessError, match="it is a file, not a folder"):
        ToyModel().save_pretrained(tmp_path / "model")
    assert (tmp_path / "model").read_text() == "not a folder"
    assert _leftovers(tmp_path / "model") == []


def test_pickle_serialization_is_refused_on_save(tmp_path):
    with pytest.raises(CheckpointError, match="writes safetensors only"):
        ToyModel().save_pretrained(tmp_path, safe_serialization=False)


def test_tied_weights_are_saved(tmp_path):
    model = ToyModel(in_features=8, hidden=8)
    model.proj_out.weight = model.proj_in.weight
    model.save_pretrained(tmp_path)
    loaded = ToyModel.from_pretrained(tmp_path, in_features=8, hidden=8)
    torch.testing.assert_close(loaded.proj_out.weight, model.proj_in.weight)


# Bad checkpoints -----------------------------------------------------------------------------
def _rewrite_weights(folder, edit) -> None:
    path = folder / "diffusion_pytorch_model.safetensors"
    tensors = load_file(path)
    edit(tensors)
    save_file(tensors, path)


def test_missing_unexpected_and_mis_shaped_keys_are_listed(saved):
    def edit(t):
        del t["norm.bias"]
        t["extra.weight"] = torch.zeros(1)
        t["proj_in.bias"] = torch.zeros(5)

    _rewrite_weights(saved[1], edit)
    with pytest.raises(CheckpointError) as exc:
        ToyModel.from_pretrained(saved[1])
    message = str(exc.value)
    assert "1 missing keys: norm.bias" in message
    assert "1 unexpected keys: extra.weight" in message
    assert "1 mis-shaped keys: proj_in.bias: checkpoint (5,) vs model (6,)" in message
    assert "Check that config.json belongs to these weights" in message


def test_weight_files_are_closed_when_the_keys_do_not_match(saved, monkeypatch):
    from diffusion_kernel.weights import SafetensorsFile

    closed = []
    real_close = SafetensorsFile.close
    monkeypatch.setattr(SafetensorsFile, "close", lambda f: closed.append(f) or real_close(f))
    with pytest.raises(CheckpointError):
        ToyModel.from_pretrained(saved[1], hidden=7)
    assert len(closed) == 1 and closed[0]._file.closed


def test_truncated_weights_raise_checkpoint_error(saved):
    path = saved[1] / "diffusion_pytorch_model.safetensors"
    path.write_bytes(path.read_bytes()[:-16])
    with pytest.raises(CheckpointError, match="the file is truncated"):
        ToyModel.from_pretrained(saved[1])


def test_garbage_weights_raise_checkpoint_error(saved):
    (saved[1] / "diffusion_pytorch_model.safetensors").write_bytes(b"\x05" * 64)
    with pytest.raises(CheckpointError, match="not a valid safetensors file"):
        ToyModel.from_pretrained(saved[1])


def test_rename_checkpoint_keys_maps_legacy_names(tmp_path):
    class Renamed(ToyModel):
        @classmethod
        def _rename_checkpoint_keys(cls, sources):
            return {k.replace("old_in.", "proj_in."): v for k, v in sources.items()}

    model = Renamed()
    model.save_pretrained(tmp_path)
    _rewrite_weights(tmp_path, lambda t: t.update(
        {k.replace("proj_in.", "old_in."): t.pop(k) for k in list(t) if "proj_in." in k}))
    _same_weights(model, Renamed.from_pretrained(tmp_path))


# Pickles -------------------------------------------------------------------------------------
def _as_pickle(folder, state) -> None:
    os.remove(folder / "diffusion_pytorch_model.safetensors")
    torch.save(state, folder / "diffusion_pytorch_model.bin")


def test_pickle_weights_are_refused_by_default(saved):
    _as_pickle(saved[1], saved[0].state_dict())
    with pytest.raises(UnsafeCheckpointError, match="pass allow_pickle=True if you trust"):
        ToyModel.from_pretrained(saved[1])


def test_pickle_weights_load_when_allowed(saved):
    _as_pickle(saved[1], saved[0].state_dict())
    _same_weights(saved[0], ToyModel.from_pretrained(saved[1], allow_pickle=True))


class _Exploit:
    def __reduce__(self):
        return (os.system, ("echo pwned",))


def test_allowed_pickles_still_refuse_code(saved):
    _as_pickle(saved[1], {"proj_in.weight": _Exploit()})
    with pytest.raises(CheckpointError, match="cannot load pickle checkpoint"):
        ToyModel.from_pretrained(saved[1], allow_pickle=True)


def test_safetensors_are_preferred_over_pickles(saved):
    torch.save({"garbage": torch.zeros(1)}, saved[1] / "diffusion_pytorch_model.bin")
    _same_weights(saved[0], ToyModel.from_pretrained(saved[1]))


# Conveniences --------------------------------------------------------------------------------
def test_gradient_checkpointing_flags_every_submodule_that_has_it():
    model = ToyModel()
    model.enable_gradient_checkpointing()
    assert model.gradient_checkpointing is True
    model.disable_gradient_checkpointing()
    assert model.gradient_checkpointing is False


def test_gradient_checkpointing_on_an_unsupported_model_raises(monkeypatch):
    monkeypatch.setattr(ToyModel, "_supports_gradient_checkpointing", False)
    with pytest.raises(ConfigError, match="does not support gradient checkpointing"):
        ToyModel().enable_gradient_checkpointing()


def test_num_parameters_and_deepcopy():
    model = ToyModel(in_features=2, hidden=3)
    assert model.num_parameters() == (2 * 3 + 3) + (3 + 3) + (3 * 2 + 2)
    model.proj_in.requires_grad_(False)
    assert model.num_parameters(trainable_only=True) == (3 + 3) + (3 * 2 + 2)
    clone = copy.deepcopy(model)
    assert clone.config == model.config and clone.proj_in.weight is not model.proj_in.weight


# Concurrency ---------------------------------------------------------------------------------
def test_loading_in_one_thread_does_not_put_other_threads_models_on_meta(saved, monkeypatch):
    import threading

    inside, release = threading.Event(), threading.Event()
    real_init = nn.LayerNorm.__init__

    def slow_init(self, *args, **kwargs):  # holds the loading thread inside the constructor
        real_init(self, *args, **kwargs)
        if threading.current_thread().name == "loader":
            inside.set()
            release.wait(10)

    monkeypatch.setattr(nn.LayerNorm, "__init__", slow_init)
    results = {}
    load = lambda: results.update(loaded=ToyModel.from_pretrained(saved[1]))
    loader = threading.Thread(name="loader", target=load)
    loader.start()
    assert inside.wait(10)
    built_meanwhile = ToyModel()  # another thread builds a model while the load is under way
    release.set()
    loader.join(10)
    assert built_meanwhile.built_on == "cpu"
    assert all(p.device.type == "cpu" for p in built_meanwhile.parameters())
    assert results["loaded"].built_on == "meta"


def test_overlapping_loads_leave_parameter_registration_as_it_was(saved):
    import threading

    original = nn.Module.register_parameter
    threads = [threading.Thread(target=ToyModel.from_pretrained, args=(saved[1],))
               for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert nn.Module.register_parameter is original
    assert ToyModel().built_on == "cpu"


def test_diffusers_loading_flags_are_accepted_and_stay_out_of_the_config(saved):
    loaded = ToyModel.from_pretrained(saved[1], use_safetensors=True, low_cpu_mem_usage=False)
    assert "use_safetensors" not in loaded.config and "low_cpu_mem_usage" not in loaded.config
    assert loaded.built_on == "meta"


def test_use_safetensors_refuses_pickles_even_when_allowed(saved):
    _as_pickle(saved[1], saved[0].state_dict())
    with pytest.raises(UnsafeCheckpointError):
        ToyModel.from_pretrained(saved[1], allow_pickle=True, use_safetensors=True)


def test_saved_files_get_the_usual_permissions_not_those_of_temporary_files(tmp_path):
    import stat

    from diffusion_kernel.hub import default_file_mode

    ToyModel().save_pretrained(tmp_path / "m")
    for name in ("config.json", "diffusion_pytorch_model.safetensors"):
        mode = stat.S_IMODE(os.stat(tmp_path / "m" / name).st_mode)
        assert mode == default_file_mode(), (name, oct(mode))


@pytest.mark.parametrize("umask", [0o022, 0o027, 0o002])
def test_saved_files_follow_the_process_umask_read_without_changing_it(tmp_path, umask,
                                                                       monkeypatch):
    import stat

    from diffusion_kernel import hub

    previous = os.umask(umask)
    try:
        calls = []
        real_umask = os.umask
        monkeypatch.setattr(hub.os, "umask", lambda m: calls.append(m) or real_umask(m))
        ToyModel().save_pretrained(tmp_path / "m")
        mode = stat.S_IMODE(os.stat(tmp_path / "m" / "config.json").st_mode)
        assert mode == 0o666 & ~umask
        if os.path.exists("/proc/self/status"):  # read from /proc: the umask is never set
            assert calls == []
    finally:
        os.umask(previous)


def test_without_proc_the_umask_is_read_by_setting_it_back(monkeypatch):
    from diffusion_kernel import hub

    def no_proc(*args, **kwargs):
        raise FileNotFoundError("/proc/self/status")

    monkeypatch.setattr(hub, "open", no_proc, raising=False)
    previous = os.umask(0o027)
    try:
        assert hub.default_file_mode() == 0o640
        assert os.umask(0o027) == 0o027  # left as it was
    finally:
        os.umask(previous)
