"""A save killed part-way leaves the old folder or the new one, and the next save or load of it
cleans up what the save left (or moves the old copy back), with a warning. The saver is a
subprocess killed (SIGKILL) at a point the test chooses; a save still running in another process
is never touched."""

import os
import signal
import subprocess
import sys
import warnings

import pytest
from diffusion_kernel.hub import atomic_directory, list_files, recover_interrupted_save

# Saves version argv[2] of two files into folder argv[1] and is killed at point argv[3], or
# stops there until a line arrives on stdin ("wait:<point>").
SAVER = r"""
import os, shutil, signal, sys
from pathlib import Path
import diffusion_kernel.hub as hub

target, version, point = Path(sys.argv[1]), sys.argv[2], sys.argv[3]
wait = point.startswith("wait:")
point = point.removeprefix("wait:")

def stop():
    if wait:
        print("ready", flush=True)
        sys.stdin.readline()
    else:
        os.kill(os.getpid(), signal.SIGKILL)

real_rename, real_rmtree = os.rename, shutil.rmtree
def rename(src, dst):
    real_rename(src, dst)
    if point == "between-renames" and ".old-" in os.fspath(dst):
        stop()
def rmtree(path, *args, **kwargs):
    if ".old-" in os.fspath(path) and point == "before-removing-old":
        stop()
    if ".old-" in os.fspath(path) and point == "mid-removal":
        next(p for p in Path(path).rglob("*") if p.is_file()).unlink()
        stop()
    return real_rmtree(path, *args, **kwargs)
os.rename, shutil.rmtree = rename, rmtree

with hub.atomic_directory(target) as staging:
    (staging / "a.txt").write_text(version)
    if point == "while-writing":
        stop()
    (staging / "sub").mkdir()
    (staging / "sub" / "b.txt").write_text(version)
"""


def _save(target, version):
    with atomic_directory(target) as staging:
        (staging / "a.txt").write_text(version)
        (staging / "sub").mkdir()
        (staging / "sub" / "b.txt").write_text(version)


def _killed_save(target, version, point):
    result = subprocess.run([sys.executable, "-c", SAVER, str(target), version, point],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == -signal.SIGKILL, result.stderr


def _version(target):
    versions = {(target / "a.txt").read_text(), (target / "sub" / "b.txt").read_text()}
    assert len(versions) == 1, "a mix of two saves"
    return versions.pop()


def _debris(folder):
    return sorted(p.name.rsplit("-", 1)[0] for p in folder.parent.iterdir() if p != folder)


@pytest.mark.parametrize("point, left, survivor, said", [
    ("while-writing", [".model.partial"], "v1", r"removed \.model\.partial-\w+ \(an unfinished "
                                                r"save, 0\.0 MB\)"),
    ("between-renames", [".model.old", ".model.partial"], "v1",
     r"moved \.model\.old-\w+ back to model \(the last complete save: the save that replaced it "
     r"was killed between its two renames\)"),
    ("before-removing-old", [".model.old"], "v2",
     r"removed \.model\.old-\w+ \(the previous copy of a finished save"),
    ("mid-removal", [".model.old"], "v2", r"removed \.model\.old-\w+"),
])
def test_the_next_load_puts_a_killed_save_right(tmp_path, point, left, survivor, said):
    target = tmp_path / "model"
    _save(target, "v1")
    _killed_save(target, "v2", point)
    assert _debris(target) == left
    with pytest.warns(UserWarning, match=f"{target}: found what interrupted saves left behind; "
                                         f".*{said}"):
        assert list_files(target) == ["SHA256SUMS", "a.txt", "sub/b.txt"]
    assert _version(target) == survivor and _debris(target) == []


def test_the_next_save_puts_a_killed_save_right(tmp_path):
    target = tmp_path / "model"
    _save(target, "v1")
    _killed_save(target, "v2", "between-renames")
    with pytest.warns(UserWarning, match="moved .* back to model"):
        _save(target, "v3")
    assert _version(target) == "v3" and _debris(target) == []


def test_a_component_folder_killed_mid_save_is_put_right_by_loading_its_pipeline(tmp_path):
    target = tmp_path / "pipe" / "unet"
    _save(target, "v1")
    _killed_save(target, "v2", "between-renames")
    assert not target.exists()
    with pytest.warns(UserWarning, match="moved .* back to unet"):
        recover_interrupted_save(tmp_path / "pipe")  # what a load of the pipeline folder does
    assert _version(target) == "v1"


@pytest.mark.parametrize("point", ["while-writing", "between-renames"])
def test_a_save_running_in_another_process_is_left_alone(tmp_path, point):
    target = tmp_path / "model"
    _save(target, "v1")
    saver = subprocess.Popen([sys.executable, "-c", SAVER, str(target), "v2", f"wait:{point}"],
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert saver.stdout.readline() == "ready\n"
        before = _debris(target)
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # nothing found to put right
            recover_interrupted_save(target)
        assert _debris(target) == before and target.exists() == (point == "while-writing")
    finally:
        saver.communicate("go\n", timeout=60)
    assert saver.returncode == 0
    assert _version(target) == "v2" and _debris(target) == []


def test_a_model_whose_save_was_killed_between_the_renames_loads_its_last_save(tmp_path):
    """What the killed saver above leaves (the old copy aside, the new one unrenamed), for a
    real model: its next load restores the last complete save and loads it exactly."""
    import torch
    from diffusion_kernel import registry

    unet_cls = registry.models.get("UNet2DModel")
    torch.manual_seed(0)
    model = unet_cls(sample_size=8, in_channels=1, out_channels=1, block_out_channels=(8, 16),
                     norm_num_groups=4, down_block_types=("DownBlock2D", "DownBlock2D"),
                     up_block_types=("UpBlock2D", "UpBlock2D"), layers_per_block=1)
    model.save_pretrained(tmp_path / "unet")
    os.rename(tmp_path / "unet", tmp_path / ".unet.old-0123abcd")
    (tmp_path / ".unet.partial-0123abcd").mkdir()
    (tmp_path / ".unet.partial-0123abcd" / "config.json").write_text("{}")
    with pytest.warns(UserWarning, match="moved .* back to unet"):
        loaded = unet_cls.from_pretrained(tmp_path / "unet", verify=True)
    for key, value in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key
    assert sorted(p.name for p in tmp_path.iterdir()) == ["unet"]
