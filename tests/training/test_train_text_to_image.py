"""`diffusion-kernel train text-to-image` on the tiny Stable Diffusion: full fine-tuning and LoRA,
their files in diffusers, learning, resume, and the errors a user can cause."""

import json

import numpy as np
import pytest
import torch
from diffusion_kernel.cli import main
from finetune_helpers import (
    ROOT,
    captioned_data,
    data_latents,
    generated_distance,
    image,
    load_ours,
    load_reference,
    single_thread,  # noqa: F401
    tiny_sd,
    train_cli,
    unet_weights,
)
from PIL import Image

# 30 steps of batch 2, gradients clipped to norm 1 (the default): the generated latents' distance
# to the training latents fell from 8.80 to 6.24 with full fine-tuning at lr 1e-3 (ratio 0.71)
# and to 6.82 with a rank-4 LoRA on the attention projections, conv_in and conv_out at lr 1e-2
# (ratio 0.77) when measured; the tests ask for ratios below 0.8 and 0.85.
FAST = ["--train-batch-size", "2", "--learning-rate", "1e-3", "--seed", "1"]


@pytest.fixture(scope="module")
def data():
    return captioned_data(ROOT / "t2i-data")


@pytest.fixture(scope="module")
def full_run(data):
    out = ROOT / "t2i-full"
    assert train_cli("text-to-image", "--data", str(data), "--output-dir", str(out), *FAST,
                     "--max-steps", "30", "--checkpointing-steps", "15",
                     "--validation-prompt", "a square", "--validation-steps", "15",
                     "--num-validation-images", "2", "--validation-inference-steps", "2") == 0
    return out


@pytest.fixture(scope="module")
def lora_run(data):
    from diffusion_kernel_vision.training.text_to_image import (
        TextToImageConfig,
        TextToImageTrainer,
    )

    cfg = TextToImageConfig(model=str(tiny_sd()), data=str(data), output_dir=str(ROOT / "t2i-lora"),
                            max_steps=30, train_batch_size=2, learning_rate=1e-2, seed=1,
                            lora_rank=4, checkpointing_steps=0,
                            lora_target_modules=("to_q", "to_k", "to_v", "to_out.0", "conv_in",
                                                 "conv_out"))
    trainer = TextToImageTrainer(cfg)
    trainer.run()
    return trainer


def _fails(capsys, *args) -> str:
    """Run the command expecting a user error: exit status 2 and the message on stderr."""
    capsys.readouterr()
    assert train_cli("text-to-image", *args) == 2
    return capsys.readouterr().err


# What a run writes ---------------------------------------------------------------------------
def test_each_fine_tuning_kind_has_help(capsys):
    for kind, option in (("text-to-image", "--lora-rank"),
                         ("textual-inversion", "--placeholder-token"),
                         ("dreambooth", "--with-prior-preservation")):
        with pytest.raises(SystemExit) as exit_:
            main(["train", kind, "--help"])
        assert exit_.value.code == 0
        assert option in capsys.readouterr().out


def test_a_full_run_writes_a_pipeline_logs_a_loss_curve_checkpoints_and_validation_images(
        full_run):
    index = json.loads((full_run / "model_index.json").read_text())
    assert index["_class_name"] == "StableDiffusionPipeline"
    assert index["unet"] == ["diffusers", "UNet2DConditionModel"]
    logs = [json.loads(line) for line in (full_run / "logs.jsonl").read_text().splitlines()]
    assert [r["step"] for r in logs] == list(range(1, 31))
    assert all(np.isfinite(r["loss"]) for r in logs)
    curve = Image.open(full_run / "loss_curve.png")
    assert curve.format == "PNG" and curve.size == (640, 400)
    assert sorted(p.name for p in (full_run / "validation").iterdir()) == ["step-15.png",
                                                                          "step-30.png"]
    assert Image.open(full_run / "validation" / "step-30.png").size == (2 * 32 + 6, 32 + 4)
    assert sorted(p.name for p in (full_run / "checkpoints").iterdir()) == ["step-15",
                                                                           "step-30"]


def test_full_fine_tuning_moves_generated_latents_toward_the_data(full_run, data):
    base, trained = load_ours(tiny_sd()), load_ours(full_run)
    targets = data_latents(base, data)
    before = generated_distance(base, "a square", targets)
    after = generated_distance(trained, "a square", targets)
    assert after < 0.8 * before, (before, after)


def test_the_fine_tuned_pipeline_gives_the_same_image_in_diffusers(full_run):
    ours = image(load_ours(full_run), "a square")
    reference = image(load_reference(full_run), "a square")
    assert np.abs(ours - reference).max() < 1e-4
    assert np.abs(ours - image(load_ours(tiny_sd()), "a square")).max() > 1e-2  # it trained


def _short_run(data, out, **options):
    from diffusion_kernel_vision.training.text_to_image import (
        TextToImageConfig,
        TextToImageTrainer,
    )

    trainer = TextToImageTrainer(TextToImageConfig(
        model=str(tiny_sd()), data=str(data), output_dir=str(out), train_batch_size=2,
        learning_rate=1e-3, seed=1, checkpointing_steps=0, **options))
    trainer.run()
    return trainer


def _first_loss(out) -> float:
    return json.loads((out / "logs.jsonl").read_text().splitlines()[0])["loss"]


def test_min_snr_and_offset_noise_change_the_loss_as_defined(data):
    plain = _short_run(data, ROOT / "t2i-plain", max_steps=1)
    snr = _short_run(data, ROOT / "t2i-snr", max_steps=1, snr_gamma=0.5)
    offset = _short_run(data, ROOT / "t2i-offset", max_steps=1, noise_offset=0.5)
    # min(SNR, gamma) / SNR <= 1 weighs the same per-sample errors (same draws) down.
    assert _first_loss(snr.output) < _first_loss(plain.output)
    assert abs(_first_loss(offset.output) - _first_loss(plain.output)) > 1e-3


def test_ema_under_bf16_saves_the_averaged_unet_and_the_base_frozen_weights(data):
    run = _short_run(data, ROOT / "t2i-ema", max_steps=3, use_ema=True, mixed_precision="bf16",
                     random_flip=True)
    saved = unet_weights(run.output)
    live = run.pipe.unet.state_dict()
    ema = dict(zip((k for k, _ in run.pipe.unet.named_parameters()), run.ema.shadow_params))
    assert saved.keys() == live.keys()
    assert all(torch.equal(saved[k], ema[k]) for k in ema)
    assert any(not torch.equal(saved[k], live[k]) for k in ema)  # the average, not the last
    assert run.pipe.vae.dtype == torch.bfloat16  # frozen weights held in bf16 while training
    base, written = load_ours(tiny_sd()), load_ours(run.output)
    for key, value in base.vae.state_dict().items():  # saved as the base model had them
        assert torch.equal(written.vae.state_dict()[key], value), key


# LoRA ----------------------------------------------------------------------------------------
def test_lora_training_leaves_every_base_weight_bit_identical(lora_run):
    from diffusion_kernel.nn.lora import lora_layers

    base = load_ours(tiny_sd())
    trained = lora_run.pipe
    # to_q/k/v/out.0 of the 8 attention layers, and the first and last convolutions
    assert len(list(lora_layers(trained.unet))) == 34
    for name in ("unet", "vae", "text_encoder"):
        ours = {k: v for k, v in getattr(trained, name).state_dict().items() if ".lora_" not in k}
        want = getattr(base, name).state_dict()
        assert ours.keys() == want.keys()
        for key in want:
            assert torch.equal(ours[key], want[key]), f"{name}.{key}"
    saved = lora_run.output / "pytorch_lora_weights.safetensors"
    assert sorted(p.name for p in lora_run.output.iterdir()) == [
        "logs.jsonl", "loss_curve.png", saved.name]


def test_the_lora_file_gives_the_same_image_here_and_in_diffusers(lora_run):
    ours, reference = load_ours(tiny_sd()), load_reference(tiny_sd())
    base = image(ours, "a square")
    ours.load_lora_weights(lora_run.output)
    reference.load_lora_weights(lora_run.output)
    with_lora = image(ours, "a square")
    assert np.abs(with_lora - image(reference, "a square")).max() < 1e-4
    assert np.abs(with_lora - base).max() > 1e-2


def test_lora_training_moves_generated_latents_toward_the_data(lora_run, data):
    base = load_ours(tiny_sd())
    targets = data_latents(base, data)
    before = generated_distance(base, "a square", targets)
    after = generated_distance(lora_run.pipe, "a square", targets)
    assert after < 0.85 * before, (before, after)


# Resume --------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def resumed(data):
    """A LoRA run of 4 steps (checkpoints at 2 and 4), and the same run killed after step 3 and
    resumed with --resume latest."""
    import unittest.mock

    from diffusion_kernel_vision.training import stable_diffusion
    from diffusion_kernel_vision.training.text_to_image import (
        TextToImageConfig,
        TextToImageTrainer,
    )

    def config(out, **kw):
        return TextToImageConfig(model=str(tiny_sd()), data=str(data), output_dir=str(out),
                                 max_steps=4, train_batch_size=2, learning_rate=1e-2,
                                 lora_rank=2, checkpointing_steps=2, **kw)

    def interrupt(self, step):
        if step == 3:
            raise KeyboardInterrupt

    straight = TextToImageTrainer(config(ROOT / "resume-straight"))
    straight.run()
    out = ROOT / "resume-interrupted"
    with unittest.mock.patch.object(stable_diffusion.StableDiffusionTrainer, "every_step",
                                    interrupt), pytest.raises(KeyboardInterrupt):
        TextToImageTrainer(config(out)).run()
    checkpoints = [p.name for p in (out / "checkpoints").iterdir()]
    resumed = TextToImageTrainer(config(out, resume="latest"))
    resumed.run()
    return straight, resumed, checkpoints


def test_an_interrupted_run_resumes_with_nothing_lost(resumed):
    from diffusion_kernel.nn.lora import lora_state_dict

    straight, resumed, checkpoints_at_interruption = resumed
    assert checkpoints_at_interruption == ["step-2"]
    want = lora_state_dict(straight.pipe.unet, "default_0")
    got = lora_state_dict(resumed.pipe.unet, "default_0")
    for key in want:
        assert torch.equal(got[key], want[key]), key
    logs = (resumed.output / "logs.jsonl").read_text().splitlines()
    assert [json.loads(line)["step"] for line in logs] == [1, 2, 3, 4]
    name = "pytorch_lora_weights.safetensors"
    assert (resumed.output / name).read_bytes() == (straight.output / name).read_bytes()


def test_checkpoints_hold_only_the_trained_parameters(full_run, resumed):
    from safetensors import safe_open

    with safe_open(full_run / "checkpoints" / "step-30" / "model.safetensors", "pt") as f:
        assert set(f.keys()) == set(unet_weights(full_run))
    lora = resumed[0].output / "checkpoints" / "step-4" / "model.safetensors"
    with safe_open(lora, "pt") as f:
        keys = set(f.keys())
    assert len(keys) == 64 and all(".lora_A." in k or ".lora_B." in k for k in keys)


# Errors before any training step --------------------------------------------------------------
def test_an_empty_data_folder_is_a_clear_error(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    err = _fails(capsys, "--data", str(tmp_path / "empty"), "--output-dir", str(tmp_path / "o"))
    assert "no metadata.jsonl" in err and "file_name" in err
    assert not (tmp_path / "o").exists()


def test_a_metadata_line_without_text_is_a_clear_error(tmp_path, capsys):
    folder = captioned_data(tmp_path / "d")
    lines = (folder / "metadata.jsonl").read_text().splitlines()
    lines[2] = json.dumps({"file_name": "02.png", "caption": "a dog"})
    (folder / "metadata.jsonl").write_text("\n".join(lines) + "\n")
    err = _fails(capsys, "--data", str(folder), "--output-dir", str(tmp_path / "o"))
    assert "metadata.jsonl:3" in err and "'text'" in err and "--caption-column" in err
    assert not (tmp_path / "o").exists()
    assert train_cli("text-to-image", "--data", str(folder), "--output-dir",
                     str(tmp_path / "o"), "--caption-column", "nope") == 2


def test_an_image_that_does_not_decode_is_a_clear_error(tmp_path, capsys):
    folder = captioned_data(tmp_path / "d")
    (folder / "01.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    err = _fails(capsys, "--data", str(folder), "--output-dir", str(tmp_path / "o"))
    assert "cannot read image" in err and "01.png" in err
    assert not (tmp_path / "o").exists()


def test_resume_latest_without_a_checkpoint_is_a_clear_error(tmp_path, capsys, data):
    err = _fails(capsys, "--data", str(data), "--output-dir", str(tmp_path / "o"),
                 "--resume", "latest")
    assert "no checkpoints" in err and "start without --resume" in err
    assert not (tmp_path / "o").exists()


def test_settings_no_run_can_use_are_refused(tmp_path, capsys, data):
    out = ["--data", str(data), "--output-dir", str(tmp_path / "o")]
    assert "--use-ema" in _fails(capsys, *out, "--lora-rank", "4", "--use-ema")
    assert "multiple of 8" in _fails(capsys, *out, "--resolution", "30")
    assert "fewer than one batch" in _fails(capsys, *out, "--train-batch-size", "8")
    assert "0: no clipping" in _fails(capsys, *out, "--max-grad-norm", "-1")
    assert not (tmp_path / "o").exists()
