"""`diffusion-kernel train unconditional` end to end, on scikit-learn's digits at 8x8."""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from diffusion_kernel import ConfigError, FileAccessError
from diffusion_kernel.cli import main
from diffusion_kernel.weights import SafetensorsFile
from PIL import Image

TINY = ["--data", "digits", "--resolution", "8", "--block-out-channels", "16,32",
        "--attention-levels", "1", "--norm-num-groups", "8", "--train-batch-size", "8",
        "--num-train-timesteps", "100", "--lr-warmup-steps", "2", "--seed", "3"]


def _train(out, *extra):
    assert main(["train", "unconditional", *TINY, "--output-dir", str(out), *extra]) == 0


def _fails(capsys, args) -> str:
    """Run the CLI expecting a user error: exit status 2 and the message on stderr."""
    capsys.readouterr()
    assert main(["train", "unconditional", *args]) == 2
    return capsys.readouterr().err


def _unet_weights(folder) -> dict[str, torch.Tensor]:
    with SafetensorsFile(Path(folder) / "unet" / "diffusion_pytorch_model.safetensors",
                         mmap_file=False) as f:
        return {k: t.clone() for k, t in f.items()}


def _assert_same_weights(a, b, atol=0.0, key_bias_atol=None):
    wa, wb = _unet_weights(a), _unet_weights(b)
    assert wa.keys() == wb.keys()
    for key in wa:
        tol = key_bias_atol if key_bias_atol and key.endswith("to_k.bias") else atol
        torch.testing.assert_close(wa[key], wb[key], rtol=0, atol=tol, msg=key)


def test_training_writes_a_pipeline_that_lowers_the_loss(tmp_path):
    _train(tmp_path / "run", "--max-steps", "30", "--checkpointing-steps", "0",
           "--learning-rate", "3e-3")
    logs = [json.loads(line) for line in (tmp_path / "run" / "logs.jsonl").read_text().splitlines()]
    assert [entry["step"] for entry in logs] == list(range(1, 31))
    first, last = sum(e["loss"] for e in logs[:5]) / 5, sum(e["loss"] for e in logs[-5:]) / 5
    assert last < 0.8 * first
    index = json.loads((tmp_path / "run" / "model_index.json").read_text())
    assert index["_class_name"] == "DDPMPipeline"
    assert index["unet"] == ["diffusers", "UNet2DModel"]


def test_the_saved_pipeline_loads_in_the_reference_and_samples_identically(tmp_path):
    from diffusers import DDPMPipeline as ReferencePipeline
    from diffusion_kernel import DiffusionPipeline

    _train(tmp_path / "run", "--max-steps", "2", "--checkpointing-steps", "0")
    ours = DiffusionPipeline.from_pretrained(tmp_path / "run")
    ref = ReferencePipeline.from_pretrained(tmp_path / "run")
    ours.set_progress_bar_config(disable=True)
    ref.set_progress_bar_config(disable=True)
    a = ours(batch_size=2, generator=torch.Generator().manual_seed(0), num_inference_steps=5,
             output_type="np").images
    b = ref(batch_size=2, generator=torch.Generator().manual_seed(0), num_inference_steps=5,
            output_type="np").images
    assert abs(a - b).max() < 1e-4


def test_resume_continues_with_the_same_step_count_and_data_order(tmp_path):
    _train(tmp_path / "straight", "--max-steps", "6", "--checkpointing-steps", "3")
    _train(tmp_path / "resumed", "--max-steps", "3", "--checkpointing-steps", "3")
    assert (tmp_path / "resumed" / "checkpoints" / "step-3").is_dir()
    _train(tmp_path / "resumed", "--max-steps", "6", "--checkpointing-steps", "3",
           "--resume", "latest")
    _assert_same_weights(tmp_path / "straight", tmp_path / "resumed")
    steps = [json.loads(line)["step"]
             for line in (tmp_path / "resumed" / "logs.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3, 4, 5, 6]


def test_two_processes_equal_one_process_on_the_whole_batch(tmp_path):
    # Both runs use one thread per process, whatever the machine has. Torch splits a
    # convolution's weight-gradient sum (over the batch and the pixels) between its threads, so
    # the thread count changes the summation order. Measured on this model: two threads against
    # one change mid_block.resnets.0.conv1.weight's gradient by ~8e-9 (its largest entry is 6e-3),
    # but a few of its entries are themselves ~1e-8, and Adam, which divides by the gradient's
    # running RMS, turns an O(1) relative change there into a difference of up to a learning-rate
    # step (1e-3) per step. With one thread each, the runs differ only in where the batch sum is
    # split (two halves, then the all-reduce), and agree to 1e-5.
    _train(tmp_path / "one", "--max-steps", "4", "--checkpointing-steps", "0", "--no-ema",
           "--threads", "1")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    with socket.socket() as s:  # a free port: a fixed one collides with another run's test
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
           "--master_port", str(port), "-m", "diffusion_kernel.cli", "train", "unconditional",
           *TINY, "--output-dir", str(tmp_path / "two"), "--max-steps", "4",
           "--checkpointing-steps", "0", "--no-ema"]
    result = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    # Softmax attention is invariant to the key bias, so its true gradient is zero; what reaches it
    # is float round-off, which Adam rescales to full-size steps. Those differ by reduction order.
    _assert_same_weights(tmp_path / "one", tmp_path / "two", atol=1e-5, key_bias_atol=2e-4)


def test_resume_from_a_missing_checkpoint_is_a_clear_error(tmp_path, capsys):
    out = ["--output-dir", str(tmp_path / "run"), "--max-steps", "2"]
    assert "no checkpoints" in _fails(capsys, [*TINY, *out, "--resume", "latest"])
    err = _fails(capsys, [*TINY, *out, "--resume", str(tmp_path / "nowhere")])
    assert "not a checkpoint folder" in err
    assert not (tmp_path / "run").exists()


def test_resume_from_a_corrupt_checkpoint_is_a_clear_error(tmp_path, capsys):
    _train(tmp_path / "run", "--max-steps", "2", "--checkpointing-steps", "2")
    checkpoint = tmp_path / "run" / "checkpoints" / "step-2"
    for f in checkpoint.iterdir():
        if f.suffix == ".safetensors":
            f.write_bytes(f.read_bytes()[:100])
    before = (tmp_path / "run" / "unet" / "diffusion_pytorch_model.safetensors").read_bytes()
    err = _fails(capsys, [*TINY, "--output-dir", str(tmp_path / "run"), "--max-steps", "4",
                          "--resume", "latest"])
    assert "step-2" in err and "corrupt" in err
    after = (tmp_path / "run" / "unet" / "diffusion_pytorch_model.safetensors").read_bytes()
    assert before == after  # the finished pipeline of the first run is untouched


def test_an_empty_image_folder_is_a_clear_error(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    err = _fails(capsys, ["--data", str(tmp_path / "empty"), "--output-dir", str(tmp_path / "out")])
    assert "no images" in err
    assert not (tmp_path / "out").exists()


def test_an_unreadable_image_is_named(tmp_path):
    from diffusion_kernel_vision.datasets import load_image_folder

    (tmp_path / "imgs").mkdir()
    (tmp_path / "imgs" / "broken.png").write_bytes(b"not a png")
    with pytest.raises(FileAccessError, match="broken.png"):
        load_image_folder(tmp_path / "imgs")


def test_images_of_mixed_sizes_or_modes_are_refused_unless_unified(tmp_path, capsys):
    folder = tmp_path / "imgs"
    folder.mkdir()
    Image.new("RGB", (8, 8), "red").save(folder / "a.png")
    Image.new("RGB", (10, 10), "blue").save(folder / "b.png")
    Image.new("L", (8, 8), 100).save(folder / "c.png")
    err = _fails(capsys, ["--data", str(folder), "--output-dir", str(tmp_path / "o")])
    assert "different sizes" in err and "--resolution" in err
    from diffusion_kernel_vision.datasets import load_image_folder

    with pytest.raises(ConfigError, match="different modes.*--mode"):
        load_image_folder(folder, resolution=8)
    images = load_image_folder(folder, resolution=8, mode="RGB")
    assert images.shape == (3, 3, 8, 8)
    assert images.min() >= -1 and images.max() <= 1


def test_an_unknown_sample_scheduler_fails_before_training(tmp_path, capsys):
    err = _fails(capsys, [*TINY, "--output-dir", str(tmp_path / "run"), "--max-steps", "2",
                          "--sample-scheduler", "eulr"])
    assert "Did you mean" in err and "euler" in err
    assert not (tmp_path / "run").exists()
