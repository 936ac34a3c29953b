"""`diffusion-kernel train dreambooth` on the tiny Stable Diffusion: class images (made once,
deterministic, reused), learning of the subject, prior preservation's effect on the class prompt,
LoRA output in diffusers, two processes against one, and bad settings."""

import os
import socket
import subprocess
import sys

import numpy as np
import pytest
import torch
from finetune_helpers import (
    ROOT,
    data_latents,
    generated_distance,
    held_out_loss,
    image,
    image_data,
    load_ours,
    load_reference,
    single_thread,  # noqa: F401
    tiny_sd,
    train_cli,
)
from PIL import Image
from safetensors.torch import load_file

# Measured with these settings (30 steps of batch 2, lr 1e-3, gradients clipped to norm 1): the
# instance prompt's generated latents' distance to the instance latents fell from 8.79 to 6.25
# (ratio 0.71; the test asks for 0.8); the class prompt's held-out loss was 1.114 for the base
# model, 0.676 after DreamBooth without and 0.654 with prior preservation (the test asks for
# "below the base" and "0.01 below the run without"); two processes gave LoRA weights equal to
# one process's (max difference 0.0; the test allows 1e-5).
INSTANCE, CLASS = "a sks square", "a square"
COMMON = ["--instance-prompt", INSTANCE, "--train-batch-size", "2", "--learning-rate", "1e-3",
          "--seed", "1", "--checkpointing-steps", "0"]
PRIOR = ["--with-prior-preservation", "--class-prompt", CLASS, "--num-class-images", "4",
         "--class-inference-steps", "5"]


@pytest.fixture(scope="module")
def data():
    return image_data(ROOT / "db-instance")


@pytest.fixture(scope="module")
def no_prior(data):
    out = ROOT / "db-no-prior"
    assert train_cli("dreambooth", "--data", str(data), "--output-dir", str(out), *COMMON,
                     "--max-steps", "30") == 0
    return out


@pytest.fixture(scope="module")
def prior(data):
    out = ROOT / "db-prior"
    assert train_cli("dreambooth", "--data", str(data), "--output-dir", str(out), *COMMON,
                     *PRIOR, "--class-data-dir", str(ROOT / "db-class"), "--max-steps",
                     "30") == 0
    return out


@pytest.fixture(scope="module")
def held_out_class_latents():
    """Class images the training never saw: the base model's, for other seeds."""
    base = load_ours(tiny_sd())
    generators = [torch.Generator().manual_seed(9000 + i) for i in range(4)]
    folder = ROOT / "db-held-out-class"
    folder.mkdir()
    for i, picture in enumerate(base([CLASS] * 4, generator=generators, num_inference_steps=5,
                                     height=32, width=32).images):
        picture.save(folder / f"{i}.png")
    return data_latents(base, folder)


def test_missing_class_images_are_generated_once_and_reused(prior, data):
    folder = ROOT / "db-class"
    first = sorted(p.name for p in folder.iterdir())
    assert first == [f"class-0000{i}.png" for i in range(4)]
    before = {name: (folder / name).read_bytes() for name in first}
    assert train_cli("dreambooth", "--data", str(data), "--output-dir", str(ROOT / "db-rerun"),
                     *COMMON, *PRIOR, "--num-class-images", "5", "--class-data-dir", str(folder),
                     "--max-steps", "1", "--lora-rank", "1") == 0
    assert sorted(p.name for p in folder.iterdir()) == first + ["class-00004.png"]
    assert all((folder / name).read_bytes() == data for name, data in before.items())


def test_dreambooth_moves_the_instance_prompts_latents_toward_the_subject(no_prior, data):
    base = load_ours(tiny_sd())
    targets = data_latents(base, data)
    before = generated_distance(base, INSTANCE, targets)
    after = generated_distance(load_ours(no_prior), INSTANCE, targets)
    assert after < 0.8 * before, (before, after)


def test_prior_preservation_keeps_the_class_prompts_held_out_loss(no_prior, prior,
                                                                  held_out_class_latents):
    losses = [held_out_loss(load_ours(folder), held_out_class_latents, CLASS)
              for folder in (tiny_sd(), no_prior, prior)]
    base, without, with_prior = losses
    assert with_prior < base
    assert with_prior < without - 0.01, losses


def test_two_processes_give_the_weights_of_one_process_on_the_whole_batch(data, prior):
    args = ["--data", str(data), *COMMON, *PRIOR, "--max-steps", "3", "--lora-rank", "4",
            "--learning-rate", "1e-2"]
    one = ROOT / "db-one"
    assert train_cli("dreambooth", "--output-dir", str(one), "--class-data-dir",
                     str(ROOT / "db-class-one"), *args) == 0
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    two = ROOT / "db-two"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
           "--master_port", str(port), "-m", "diffusion_kernel.cli", "train", "dreambooth",
           "--model", str(tiny_sd()), "--output-dir", str(two), "--class-data-dir",
           str(ROOT / "db-class-two"), *args]
    result = subprocess.run(cmd, env={**os.environ, "OMP_NUM_THREADS": "1"},
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    a = load_file(one / "pytorch_lora_weights.safetensors")
    b = load_file(two / "pytorch_lora_weights.safetensors")
    assert a.keys() == b.keys() and len(a) == 64
    worst = max((a[k] - b[k]).abs().max().item() for k in a)
    assert worst < 1e-5
    # Each process made half of the class images; every image is the one its seed makes in one
    # process (and in the earlier run with the same seed).
    for i in range(4):
        name = f"class-0000{i}.png"
        pictures = [np.asarray(Image.open(ROOT / folder / name), dtype=np.int16)
                    for folder in ("db-class-one", "db-class-two", "db-class")]
        assert all(np.abs(p - pictures[0]).max() <= 1 for p in pictures[1:]), name


def test_a_dreambooth_lora_gives_the_same_image_here_and_in_diffusers():
    ours, reference = load_ours(tiny_sd()), load_reference(tiny_sd())
    ours.load_lora_weights(ROOT / "db-one")
    reference.load_lora_weights(ROOT / "db-one")
    assert np.abs(image(ours, INSTANCE) - image(reference, INSTANCE)).max() < 1e-4


def _fails(capsys, *args) -> str:
    capsys.readouterr()
    assert train_cli("dreambooth", *args) == 2
    return capsys.readouterr().err


def test_bad_settings_are_refused_before_training(data, tmp_path, capsys):
    out = ["--data", str(data), "--output-dir", str(tmp_path / "o"), "--instance-prompt", INSTANCE]
    assert "needs --class-prompt" in _fails(capsys, *out, "--with-prior-preservation")
    err = _fails(capsys, *out, "--class-prompt", CLASS)
    assert "--class-prompt only take effect with --with-prior-preservation" in err
    (tmp_path / "empty").mkdir()
    err = _fails(capsys, *out[2:], "--data", str(tmp_path / "empty"))
    assert "no images" in err and "instance image folder" in err
    broken = tmp_path / "class"
    broken.mkdir()
    (broken / "x.png").write_bytes(b"not an image")
    err = _fails(capsys, *out, *PRIOR, "--class-data-dir", str(broken))
    assert "cannot read image" in err and "x.png" in err
    assert not (tmp_path / "o").exists()
