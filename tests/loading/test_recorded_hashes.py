"""Saves record every file's sha256 in SHA256SUMS (the format ``sha256sum -c`` reads, ignored by
diffusers); ``verify=True`` and ``diffusion-kernel verify`` check a folder against it."""

import hashlib
import shutil
import subprocess

import pytest
import torch
from diffusion_kernel import CheckpointError, registry
from diffusion_kernel.cli import main
from diffusion_kernel.integrity import MANIFEST, read_manifest

WEIGHTS = "diffusion_pytorch_model.safetensors"
TINY = {"sample_size": 8, "in_channels": 1, "out_channels": 1, "block_out_channels": (8, 16),
        "norm_num_groups": 4, "down_block_types": ("DownBlock2D", "DownBlock2D"),
        "up_block_types": ("UpBlock2D", "UpBlock2D"), "layers_per_block": 1}


def _unet():
    return registry.models.get("UNet2DModel")


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return _unet()(**TINY)


@pytest.fixture
def saved(model, tmp_path):
    model.save_pretrained(tmp_path / "unet")
    return tmp_path / "unet"


def _sha(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _flip_last_byte(path):
    data = bytearray(path.read_bytes())
    data[-1] ^= 0x01
    path.write_bytes(bytes(data))


def test_a_save_records_the_sha256_of_every_file(saved):
    assert read_manifest(saved) == {"config.json": _sha(saved / "config.json"),
                                    WEIGHTS: _sha(saved / WEIGHTS)}


@pytest.mark.skipif(shutil.which("sha256sum") is None, reason="no sha256sum on this machine")
def test_the_record_is_what_sha256sum_checks(saved):
    result = subprocess.run(["sha256sum", "-c", MANIFEST], cwd=saved, capture_output=True,
                            text=True)
    assert result.returncode == 0 and f"{WEIGHTS}: OK" in result.stdout


def test_diffusers_loads_a_folder_with_the_record(saved, model):
    from diffusers import UNet2DModel

    reference = UNet2DModel.from_pretrained(saved)
    assert torch.equal(reference.conv_in.weight, model.conv_in.weight)


def test_a_variant_saved_beside_keeps_the_record_of_the_other_weights(saved, model, monkeypatch):
    before = read_manifest(saved)[WEIGHTS]
    hashed = []
    import diffusion_kernel.integrity as integrity

    original = integrity.file_sha256
    monkeypatch.setattr(integrity, "file_sha256", lambda p: hashed.append(p.name) or original(p))
    model.half().save_pretrained(saved, variant="fp16")
    model.float()
    record = read_manifest(saved)
    assert record[WEIGHTS] == before and WEIGHTS not in hashed  # kept as recorded, not re-read
    assert record["diffusion_pytorch_model.fp16.safetensors"] == _sha(
        saved / "diffusion_pytorch_model.fp16.safetensors")


def test_a_file_kept_by_a_save_but_rewritten_in_place_since_the_record_is_hashed_again(
        saved, model):
    # a training state saved inside a pipeline folder is rewritten in place between two saves of
    # the pipeline; the second save must record its new bytes, not the first save's hash
    extra = saved / "training-state" / "optimizer.bin"
    extra.parent.mkdir()
    extra.write_bytes(b"step 1")
    model.save_pretrained(saved)
    assert read_manifest(saved)["training-state/optimizer.bin"] == _sha(extra)
    with open(extra, "r+b") as f:  # the same inode: the next save hard-links it
        f.write(b"step 2")
    model.save_pretrained(saved)
    assert read_manifest(saved)["training-state/optimizer.bin"] == _sha(extra)
    assert extra.read_bytes() == b"step 2"


def test_a_pipeline_records_each_component_folder_once(tmp_path, model):
    pipe = registry.pipelines.get("DDPMPipeline")(unet=model,
                                                  scheduler=registry.schedulers.get("ddpm")())
    pipe.save_pretrained(tmp_path / "pipe")
    assert set(read_manifest(tmp_path / "pipe")) == {"model_index.json",
                                                     "scheduler/scheduler_config.json"}
    assert set(read_manifest(tmp_path / "pipe" / "unet")) == {"config.json", WEIGHTS}
    loaded = registry.pipelines.get("DDPMPipeline").from_pretrained(tmp_path / "pipe",
                                                                   verify=True)
    assert torch.equal(loaded.unet.conv_in.weight, model.conv_in.weight)


def test_verify_loads_an_intact_folder(saved, model):
    loaded = _unet().from_pretrained(saved, verify=True)
    assert torch.equal(loaded.conv_in.weight, model.conv_in.weight)


def test_verify_refuses_weights_changed_after_the_save(saved, model):
    _flip_last_byte(saved / WEIGHTS)  # a bit flip: the file still parses and loads
    loaded = _unet().from_pretrained(saved).state_dict()
    assert not all(torch.equal(loaded[k], v) for k, v in model.state_dict().items())
    with pytest.raises(CheckpointError, match=f"does not match its recorded hashes: {WEIGHTS}: "
                                              "sha256 is .* but .* was recorded"):
        _unet().from_pretrained(saved, verify=True)


def test_verify_refuses_a_config_edited_after_the_save(saved):
    (saved / "config.json").write_text((saved / "config.json").read_text().replace("8", "9", 1))
    with pytest.raises(CheckpointError, match="config.json: sha256 is"):
        _unet().from_pretrained(saved, verify=True)


def test_verify_without_a_record_says_there_is_nothing_to_check_against(saved):
    (saved / MANIFEST).unlink()
    with pytest.raises(CheckpointError, match=f"cannot verify .*no hash is recorded for "
                                              f"config.json, {WEIGHTS}"):
        _unet().from_pretrained(saved, verify=True)


def test_the_verify_command(saved, capsys):
    assert main(["verify", str(saved)]) == 0
    out = capsys.readouterr().out
    assert f"ok          {WEIGHTS} (sha256)" in out and "2 ok, 0 corrupt" in out
    (saved / "README.md").write_text("notes")
    _flip_last_byte(saved / WEIGHTS)
    assert main(["verify", str(saved)]) == 1
    out = capsys.readouterr().out
    assert f"CORRUPT     {WEIGHTS}: sha256 is" in out and "unrecorded  README.md" in out
    (saved / "config.json").unlink()
    assert main(["verify", str(saved)]) == 1
    assert "MISSING     config.json" in capsys.readouterr().out


def test_the_verify_command_with_nothing_recorded_fails(saved, capsys):
    (saved / MANIFEST).unlink()
    assert main(["verify", str(saved)]) == 1
    assert "no file has a recorded hash" in capsys.readouterr().out


def test_hashes_recorded_for_a_folder_saved_elsewhere_are_checked(saved, capsys):
    (saved / MANIFEST).unlink()  # as diffusers saves it
    assert main(["verify", "--record", str(saved)]) == 0
    assert read_manifest(saved) == {"config.json": _sha(saved / "config.json"),
                                    WEIGHTS: _sha(saved / WEIGHTS)}
    _flip_last_byte(saved / WEIGHTS)
    with pytest.raises(CheckpointError, match="does not match its recorded hashes"):
        _unet().from_pretrained(saved, verify=True)


def _assert_every_file_verified(source, capsys):
    assert main(["verify", source]) == 0, source
    summary = capsys.readouterr().out.strip().splitlines()[-1]
    assert summary.endswith(", 0 corrupt, 0 missing, 0 unrecorded"), (source, summary)


def test_every_shipped_model_is_verified_by_name(capsys):
    from diffusion_kernel.cli_extensions import shipped_models

    names = sorted(shipped_models())
    assert names, "no shipped model registered"
    for name in names:
        _assert_every_file_verified(name, capsys)


def test_every_folder_a_plugin_ships_has_its_record(capsys):
    # the ones without a name too (the maze planner's value function)
    from pathlib import Path

    folders = sorted(Path(__file__).parents[2].glob("plugins/*/diffusion_kernel_*/shipped/*/"))
    assert len(folders) >= 5, folders
    for folder in folders:
        _assert_every_file_verified(str(folder), capsys)
