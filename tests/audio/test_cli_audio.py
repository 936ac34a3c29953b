"""The audio plugin on the command line: ``generate`` writes WAV files (one per sample, or one file
of all) and, for Audio Diffusion, the mel images on request (``--out mels.png``); ``train mel``
trains on a folder of WAV files and writes a pipeline that ``generate`` runs."""

import json

import numpy as np
import pytest
import torch
from audio_diffusion_setup import MEL, SCHEDULER, UNET
from audio_signals import SIGNALS
from diffusion_kernel import DiffusionPipeline, registry
from diffusion_kernel.cli import main
from PIL import Image

DANCE_TINY = dict(block_out_channels=(32, 32, 32), extra_in_channels=16, sample_size=256,
                  sample_rate=8000, in_channels=1, out_channels=1, time_embedding_dim=16,
                  down_block_types=("DownBlock1DNoSkip", "DownBlock1D", "AttnDownBlock1D"),
                  up_block_types=("AttnUpBlock1D", "UpBlock1D", "UpBlock1DNoSkip"))


def _wav():
    import importlib

    return importlib.import_module("diffusion_kernel_audio.wav")


@pytest.fixture(scope="module")
def dance_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("dance")
    torch.manual_seed(0)
    pipe = registry.pipelines.get("DanceDiffusionPipeline")(
        unet=registry.models.get("UNet1DModel")(**DANCE_TINY),
        scheduler=registry.schedulers.get("IPNDMScheduler")())
    pipe.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def mel_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("audio-diffusion")
    torch.manual_seed(0)
    pipe = registry.pipelines.get("AudioDiffusionPipeline")(
        vqvae=None, unet=registry.models.get("UNet2DModel")(**UNET),
        mel=registry.processors.get("Mel")(**MEL),
        scheduler=registry.schedulers.get("DDIMScheduler")(**SCHEDULER))
    pipe.save_pretrained(folder)
    return folder


def test_generate_writes_one_wav_per_sample_equal_to_the_pipelines_audio(dance_folder,
                                                                          tmp_path):
    assert main(["generate", "--model", str(dance_folder), "--num", "3", "--steps", "3",
                 "--seed", "7", "--out", str(tmp_path / "clips"), "--threads", "1"]) == 0
    files = sorted(p.name for p in (tmp_path / "clips").iterdir())
    assert files == ["0000.wav", "0001.wav", "0002.wav"]
    pipe = DiffusionPipeline.from_pretrained(dance_folder)
    pipe.set_progress_bar_config(disable=True)
    expected = pipe(batch_size=3, num_inference_steps=3,
                    generator=[torch.Generator().manual_seed(7 + i) for i in range(3)]).audios
    for i in range(3):
        audio, rate = _wav().read_wav(tmp_path / "clips" / f"{i:04d}.wav")
        assert rate == 8000 and audio.shape == (1, 256)
        np.testing.assert_allclose(audio, expected[i], atol=1 / 32767)


def test_generate_into_one_wav_file_puts_the_samples_in_turn(dance_folder, tmp_path):
    assert main(["generate", "--model", str(dance_folder), "--num", "2", "--steps", "2",
                 "--out", str(tmp_path / "all.wav"), "--threads", "1"]) == 0
    audio, rate = _wav().read_wav(tmp_path / "all.wav")
    assert audio.shape == (1, 256 + int(0.25 * 8000) + 256)
    assert not audio[:, 256:256 + 2000].any()  # the quarter second of silence between


def test_generate_refuses_an_image_file_for_audio_before_sampling(dance_folder, tmp_path,
                                                                  capsys):
    assert main(["generate", "--model", str(dance_folder), "--out",
                 str(tmp_path / "x.png")]) != 0
    assert "written as a .wav file or a folder of .wav files" in capsys.readouterr().err


def test_audio_diffusion_writes_wavs_and_the_mel_images_on_request(mel_folder, tmp_path):
    assert main(["generate", "--model", str(mel_folder), "--num", "2", "--steps", "3",
                 "--out", str(tmp_path / "clips"), "--threads", "1"]) == 0
    audio, rate = _wav().read_wav(tmp_path / "clips" / "0001.wav")
    assert rate == MEL["sample_rate"] and audio.shape == (1, 256 * 31)
    assert main(["generate", "--model", str(mel_folder), "--num", "2", "--steps", "3",
                 "--out", str(tmp_path / "mels.png"), "--threads", "1"]) == 0
    assert Image.open(tmp_path / "mels.png").size[0] >= 2 * MEL["x_res"]


def test_train_mel_on_a_folder_of_wavs_writes_a_pipeline_generate_runs(tmp_path):
    data = tmp_path / "wavs"
    for name, make in SIGNALS.items():
        _wav().write_wav(data / f"{name}.wav", make(3 * 2047, 8000), 8000)  # 3 slices each
    out = tmp_path / "trained"
    assert main(["train", "mel", "--data", str(data), "--output-dir", str(out),
                 "--max-steps", "3", "--train-batch-size", "4", "--block-out-channels", "8,16",
                 "--attention-levels", "1", "--norm-num-groups", "4", "--checkpointing-steps",
                 "2", "--x-res", "8", "--y-res", "16", "--sample-rate", "8000", "--n-fft",
                 "512", "--hop-length", "256", "--threads", "1"]) == 0
    index = json.loads((out / "model_index.json").read_text())
    assert index["_class_name"] == "AudioDiffusionPipeline"
    # it recommends the sampler measured best on the spoken digits: DDPM, 50 steps
    assert index["scheduler"] == ["diffusers", "DDPMScheduler"]
    assert index["_default_num_inference_steps"] == 50
    state = json.loads((out / "training-state" / "trainer_state.json").read_text())
    assert state["state"]["step"] == 3 and len(state["state"]["losses"]) == 3
    assert main(["verify", str(out)]) == 0  # two saves: the record matches every file
    assert main(["generate", "--model", str(out), "--num", "1", "--steps", "2",
                 "--out", str(tmp_path / "gen"), "--threads", "1"]) == 0
    assert _wav().read_wav(tmp_path / "gen" / "0000.wav")[1] == 8000


def test_train_mel_refuses_a_folder_without_wavs(tmp_path, capsys):
    assert main(["train", "mel", "--data", str(tmp_path), "--output-dir",
                 str(tmp_path / "o"), "--threads", "1"]) != 0
    assert "not a folder of .wav files" in capsys.readouterr().err
