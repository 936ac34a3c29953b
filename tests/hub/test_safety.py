"""Bad input through the Hub: each a clear error of the library's family, and nothing
half-written left in the cache or the output folder."""

import json
import os
import struct

import pytest
import torch
from diffusion_kernel import (
    CheckpointError,
    ConfigError,
    DiffusionPipeline,
    FileAccessError,
    ModelMixin,
    PipelineError,
    UnsafeCheckpointError,
)
from hub_toys import HubToyModel, HubToyPipeline, HubToyScheduler, same_weights, toy_model
from huggingface_hub import HfApi

REPO = "tester/bad"
WEIGHTS = "diffusion_pytorch_model.safetensors"


def _model_files(model=None, **extra) -> dict[str, bytes]:
    """The files of a saved model folder, as bytes (to be altered and committed directly)."""
    import tempfile
    from pathlib import Path

    with tempfile.TemporaryDirectory() as folder:
        (model or toy_model()).save_pretrained(folder)
        files = {p.name: p.read_bytes() for p in Path(folder).iterdir()}
    files.update(extra)
    return files


def _snapshot_files(hub_home) -> set[str]:
    return {p.name for p in (hub_home / "hub").rglob("snapshots/*/**/*") if p.is_file()}


# Pickles -------------------------------------------------------------------------------------
class _Evil:
    def __reduce__(self):
        return (os.system, ("echo pwned > /tmp/diffusion_kernel_pwned",))


def _pickle_bytes(obj, tmp_path) -> bytes:
    torch.save(obj, tmp_path / "w.bin")
    return (tmp_path / "w.bin").read_bytes()


def test_pickle_weights_are_refused_before_they_are_downloaded(hub, tmp_path):
    files = _model_files()
    del files[WEIGHTS]
    files["diffusion_pytorch_model.bin"] = _pickle_bytes(toy_model().state_dict(), tmp_path)
    hub.commit(REPO, files)
    with pytest.raises(UnsafeCheckpointError, match="pickle.*allow_pickle=True"):
        HubToyModel.from_pretrained(REPO)
    assert "diffusion_pytorch_model.bin" not in hub.downloaded_files(REPO)


def test_pickle_weights_load_when_allowed(hub, tmp_path):
    model = toy_model(seed=3)
    files = _model_files()
    del files[WEIGHTS]
    files["diffusion_pytorch_model.bin"] = _pickle_bytes(model.state_dict(), tmp_path)
    hub.commit(REPO, files)
    assert same_weights(HubToyModel.from_pretrained(REPO, allow_pickle=True), model)


def test_a_pickle_that_runs_code_is_refused_even_when_pickles_are_allowed(hub, tmp_path):
    files = _model_files()
    del files[WEIGHTS]
    files["diffusion_pytorch_model.bin"] = _pickle_bytes({"proj.weight": _Evil()}, tmp_path)
    hub.commit(REPO, files)
    with pytest.raises(CheckpointError, match="cannot load pickle checkpoint"):
        HubToyModel.from_pretrained(REPO, allow_pickle=True)
    assert not os.path.exists("/tmp/diffusion_kernel_pwned")


def test_pipeline_with_pickle_only_weights_is_refused(hub, upload, tmp_path):
    HubToyPipeline(unet=toy_model(), scheduler=HubToyScheduler()).save_pretrained(tmp_path / "p")
    unet = tmp_path / "p" / "unet"
    torch.save(toy_model().state_dict(), unet / "diffusion_pytorch_model.bin")
    (unet / WEIGHTS).unlink()
    upload(tmp_path / "p", REPO)
    hub.clear_log()
    with pytest.raises(UnsafeCheckpointError):
        DiffusionPipeline.from_pretrained(REPO)
    assert "unet/diffusion_pytorch_model.bin" not in hub.downloaded_files(REPO)


# Broken weight files -------------------------------------------------------------------------
def test_truncated_safetensors_file_is_a_checkpoint_error(hub):
    files = _model_files()
    files[WEIGHTS] = files[WEIGHTS][:-20]
    hub.commit(REPO, files)
    with pytest.raises(CheckpointError, match="truncated"):
        HubToyModel.from_pretrained(REPO)


def test_safetensors_header_that_is_not_json_is_a_checkpoint_error(hub):
    files = _model_files()
    data = files[WEIGHTS]
    (length,) = struct.unpack("<Q", data[:8])
    files[WEIGHTS] = data[:8] + b"\xff" * length + data[8 + length:]
    hub.commit(REPO, files)
    with pytest.raises(CheckpointError, match=r"\(rule: header JSON\): the header must begin"):
        HubToyModel.from_pretrained(REPO)


def test_header_claiming_more_bytes_than_the_file_has_is_a_checkpoint_error(hub):
    files = _model_files()
    files[WEIGHTS] = struct.pack("<Q", 10**6) + files[WEIGHTS][8:]
    hub.commit(REPO, files)
    with pytest.raises(CheckpointError, match=r"\(rule: header size\): the header claims 1000000"):
        HubToyModel.from_pretrained(REPO)


def test_weights_of_another_architecture_are_a_checkpoint_error(hub):
    files = _model_files(model=toy_model(in_features=7))
    files["config.json"] = _model_files()["config.json"]
    hub.commit(REPO, files)
    with pytest.raises(CheckpointError, match="mis-shaped keys: proj.weight"):
        HubToyModel.from_pretrained(REPO)


def test_integer_tensor_for_a_float_parameter_is_a_checkpoint_error(hub, tmp_path):
    from safetensors.torch import save_file

    state = {k: torch.ones_like(v, dtype=torch.int32) for k, v in toy_model().state_dict().items()}
    save_file(state, tmp_path / "w.safetensors")
    hub.commit(REPO, _model_files(**{WEIGHTS: (tmp_path / "w.safetensors").read_bytes()}))
    with pytest.raises(CheckpointError, match="has dtype torch.int32 but HubToyModel expects"):
        HubToyModel.from_pretrained(REPO)


# Broken configs ------------------------------------------------------------------------------
def test_config_that_is_not_json_is_a_config_error(hub):
    hub.commit(REPO, _model_files(**{"config.json": b'{"in_features": 4,'}))
    with pytest.raises(ConfigError, match="config.json is not valid JSON"):
        HubToyModel.from_pretrained(REPO)


def test_config_with_a_wrong_type_is_a_config_error(hub):
    config = json.loads(_model_files()["config.json"])
    config["in_features"] = "four"
    hub.commit(REPO, _model_files(**{"config.json": json.dumps(config).encode()}))
    with pytest.raises(ConfigError, match="'in_features' must be an int, got str 'four'"):
        HubToyModel.from_pretrained(REPO)


def test_config_that_is_a_list_is_a_config_error(hub):
    hub.commit(REPO, _model_files(**{"config.json": b"[1, 2]"}))
    with pytest.raises(ConfigError, match="must hold a JSON object"):
        HubToyModel.from_pretrained(REPO)


def test_model_index_that_is_not_json_is_a_config_error(hub, upload, tmp_path):
    HubToyPipeline(unet=toy_model(), scheduler=HubToyScheduler()).save_pretrained(tmp_path / "p")
    (tmp_path / "p" / "model_index.json").write_text("{not json")
    upload(tmp_path / "p", REPO)
    with pytest.raises(ConfigError, match="model_index.json is not valid JSON"):
        DiffusionPipeline.from_pretrained(REPO)


# Paths that escape the repo ------------------------------------------------------------------
def test_subfolder_with_dotdot_is_refused(hub, upload, tmp_path):
    toy_model().save_pretrained(tmp_path / "m")
    upload(tmp_path / "m", REPO)
    with pytest.raises(FileAccessError, match="refusing subfolder '../unet'"):
        HubToyModel.from_pretrained(REPO, subfolder="../unet")


@pytest.mark.parametrize("shard", ["../outside.safetensors", "/etc/passwd", "a/../../b"])
def test_shard_index_naming_a_path_outside_the_repo_is_refused(hub, shard):
    files = _model_files()
    index = {"metadata": {}, "weight_map": {"proj.weight": shard}}
    files["diffusion_pytorch_model.safetensors.index.json"] = json.dumps(index).encode()
    del files[WEIGHTS]
    hub.commit(REPO, files)
    with pytest.raises(FileAccessError, match="refusing shard file name"):
        HubToyModel.from_pretrained(REPO)


def test_shard_index_with_a_non_string_file_name_is_a_checkpoint_error(hub):
    files = _model_files()
    index = {"weight_map": {"proj.weight": 3}}
    files["diffusion_pytorch_model.safetensors.index.json"] = json.dumps(index).encode()
    del files[WEIGHTS]
    hub.commit(REPO, files)
    with pytest.raises(CheckpointError, match="weight_map"):
        HubToyModel.from_pretrained(REPO)


@pytest.mark.parametrize("name", ["../unet", "/abs", "unet/../../x"])
def test_model_index_component_escaping_the_folder_is_refused(hub, upload, tmp_path, name):
    HubToyPipeline(unet=toy_model(), scheduler=HubToyScheduler()).save_pretrained(tmp_path / "p")
    index = json.loads((tmp_path / "p" / "model_index.json").read_text())
    index[name] = index.pop("unet")
    (tmp_path / "p" / "model_index.json").write_text(json.dumps(index))
    upload(tmp_path / "p", REPO)
    with pytest.raises(PipelineError, match="component names must be Python identifiers"):
        DiffusionPipeline.from_pretrained(REPO)


def test_repo_file_with_dotdot_is_never_fetched(hub):
    hub.commit(REPO, _model_files(**{"../diffusion_pytorch_model.safetensors": b"x"}))
    HubToyModel.from_pretrained(REPO)
    assert hub.downloaded_files(REPO) == {"config.json", WEIGHTS}


# Repos, revisions, ids -----------------------------------------------------------------------
@pytest.mark.parametrize("repo_id", ["bad repo!", "a--b/c", "-dash/x"])
def test_invalid_repo_id_is_a_file_access_error(hub, repo_id):
    with pytest.raises(FileAccessError, match="not a valid Hub repo id"):
        HubToyModel.from_pretrained(repo_id)
    assert hub.count() == 0


def test_a_path_that_does_not_exist_is_not_mistaken_for_a_repo(hub):
    with pytest.raises(FileAccessError, match="neither an existing local folder nor a Hub repo"):
        HubToyModel.from_pretrained("./no/such/folder")
    assert hub.count() == 0


def test_missing_repo_is_a_file_access_error(hub):
    with pytest.raises(FileAccessError, match="Hub repo 'tester/absent' does not exist"):
        HubToyModel.from_pretrained("tester/absent")
    with pytest.raises(FileAccessError, match="Hub repo 'tester/absent' does not exist"):
        DiffusionPipeline.from_pretrained("tester/absent")
    with pytest.raises(FileAccessError, match="Hub repo 'tester/absent' does not exist"):
        HubToyScheduler.from_pretrained("tester/absent")


def test_missing_revision_is_a_file_access_error(hub):
    hub.commit(REPO, _model_files())
    with pytest.raises(FileAccessError, match="revision 'v9' does not exist in Hub repo"):
        HubToyModel.from_pretrained(REPO, revision="v9")
    with pytest.raises(FileAccessError, match="revision 'v9' does not exist in Hub repo"):
        HubToyScheduler.from_pretrained(REPO, revision="v9")


def test_repo_without_a_model_config_says_what_is_missing(hub):
    hub.commit(REPO, {"README.md": b"# empty\n"})
    with pytest.raises(FileAccessError, match="no config.json in 'tester/bad'"):
        ModelMixin.from_pretrained(REPO)


def test_missing_variant_names_the_variants_present(hub, tmp_path):
    files = _model_files()
    files["diffusion_pytorch_model.fp16.safetensors"] = files.pop(WEIGHTS)
    hub.commit(REPO, files)
    with pytest.raises(FileAccessError, match="variant 'bf16'.*Variants present: fp16"):
        HubToyModel.from_pretrained(REPO, variant="bf16")


def test_offline_without_a_cache_says_to_download_first(hub, offline):
    hub.commit(REPO, _model_files())
    offline()
    with pytest.raises(FileAccessError, match="not in the local cache.*download it once"):
        HubToyModel.from_pretrained(REPO)
    assert hub.count() == 0


def test_local_files_only_with_a_variant_never_downloaded_says_so(hub):
    files = _model_files()
    files["diffusion_pytorch_model.fp16.safetensors"] = files[WEIGHTS]
    hub.commit(REPO, files)
    HubToyModel.from_pretrained(REPO)
    with pytest.raises(FileAccessError, match="not in the local cache"):
        HubToyModel.from_pretrained(REPO, variant="fp16", local_files_only=True)


# The server failing --------------------------------------------------------------------------
def test_server_error_mid_load_names_the_file_and_leaves_no_partial_file(hub, tmp_path):
    hub.commit(REPO, _model_files())
    hub.inject_fault("GET", WEIGHTS, status=500, times=3)  # every attempt of the load
    with pytest.raises(FileAccessError, match=f"could not download .*{WEIGHTS}.*500"):
        HubToyModel.from_pretrained(REPO)
    assert WEIGHTS not in _snapshot_files(tmp_path / "hf_home")
    model = HubToyModel.from_pretrained(REPO)  # the next load works
    assert WEIGHTS in _snapshot_files(tmp_path / "hf_home")
    assert isinstance(model, HubToyModel)


def test_download_cut_mid_transfer_resumes(hub, monkeypatch):
    model = toy_model(seed=4)
    hub.commit(REPO, _model_files(model))
    monkeypatch.setattr("huggingface_hub.file_download.time.sleep", lambda s: None)
    hub.inject_fault("GET", WEIGHTS, cut_after=50)
    assert same_weights(HubToyModel.from_pretrained(REPO), model)
    assert hub.downloads(REPO)[f"{REPO}/{WEIGHTS}"] == 2


def test_server_dying_for_good_mid_download_is_a_file_access_error(hub, tmp_path, monkeypatch):
    hub.commit(REPO, _model_files())
    monkeypatch.setattr("huggingface_hub.file_download.time.sleep", lambda s: None)
    hub.inject_fault("GET", WEIGHTS, cut_after=50, times=100)
    expected = f"could not download config.json, {WEIGHTS} from '{REPO}'.*peer closed"
    with pytest.raises(FileAccessError, match=expected):
        HubToyModel.from_pretrained(REPO)
    assert WEIGHTS not in _snapshot_files(tmp_path / "hf_home")


def test_unreachable_hub_falls_back_to_the_cache(hub, upload, tmp_path, monkeypatch):
    model = toy_model(seed=5)
    upload_model = tmp_path / "m"
    model.save_pretrained(upload_model)
    upload(upload_model, REPO)
    HubToyModel.from_pretrained(REPO)
    monkeypatch.setattr("huggingface_hub.utils._http.time.sleep", lambda s: None)
    hub.inject_fault("GET", "/api/", status=503, times=100)
    hub.inject_fault("HEAD", "/", status=503, times=100)
    assert same_weights(HubToyModel.from_pretrained(REPO), model)


def test_failed_push_leaves_the_local_save_intact(hub, tmp_path, monkeypatch):
    model = toy_model(seed=6)
    monkeypatch.delenv("HF_TOKEN")
    with pytest.raises(FileAccessError):
        model.save_pretrained(tmp_path / "out", push_to_hub=True, repo_id=REPO)
    assert same_weights(HubToyModel.from_pretrained(tmp_path / "out"), model)
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".out")) == []
    assert REPO not in hub.repos


def test_no_request_leaves_the_machine(hub, upload, tmp_path):
    toy_model().push_to_hub(REPO)
    DiffusionPipeline.from_pretrained  # noqa: B018 (the Hub client only ever talks to 127.0.0.1)
    HubToyModel.from_pretrained(REPO)
    assert hub.outside_attempts == []
    assert HfApi().list_repo_files(REPO)
