"""The Mel processor: the reference's mel images byte for byte (recorded fixtures; directly when
librosa is installed), the Slaney mel scale and filterbank by their definitions, the Griffin-Lim
inverse by what it reproduces, the config file, and the errors."""

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from audio_signals import MEL_CONFIGS, SIGNALS
from diffusion_kernel import registry
from diffusion_kernel.errors import PipelineError

Mel = registry.processors.get("Mel")
FIXTURES = np.load(Path(__file__).with_name("fixtures") / "mel_images.npz")
HAS_LIBROSA = importlib.util.find_spec("librosa") is not None
MEL_CONFIG_KEYS = {"x_res", "y_res", "sample_rate", "n_fft", "hop_length", "top_db", "n_iter"}


def _spectral():
    import importlib

    return importlib.import_module(type(Mel()).__module__.rsplit(".", 1)[0] + ".spectral")


def _assert_images_match(ours: np.ndarray, reference: np.ndarray) -> None:
    """At most one grey level apart, on fewer than 0.1 % of the pixels (float rounding at the
    byte boundaries)."""
    assert ours.shape == reference.shape and ours.dtype == np.uint8
    difference = np.abs(ours.astype(int) - reference.astype(int))
    assert difference.max() <= 1
    assert (difference > 0).mean() < 1e-3


@pytest.mark.parametrize("signal", sorted(SIGNALS))
@pytest.mark.parametrize("config", sorted(MEL_CONFIGS))
def test_images_equal_the_recorded_reference(config, signal):
    mel = Mel(**MEL_CONFIGS[config])
    mel.load_audio(raw_audio=SIGNALS[signal](int(1.5 * mel.slice_size), mel.get_sample_rate()))
    image = mel.audio_slice_to_image(0)
    assert image.mode == "L" and image.size == (mel.x_res, mel.y_res)
    _assert_images_match(np.asarray(image), FIXTURES[f"{config}/{signal}/0"])


@pytest.mark.skipif(not HAS_LIBROSA, reason="librosa (the reference Mel's dependency) is not "
                                            "installed; the recorded fixtures cover this")
def test_images_and_filterbank_equal_the_live_reference():
    import librosa
    from diffusers import Mel as ReferenceMel

    config = MEL_CONFIGS["small_16k"]
    ours, reference = Mel(**config), ReferenceMel(**config)
    audio = SIGNALS["tone_in_noise"](3 * ours.slice_size, 16000) * np.float32(0.3)
    ours.load_audio(raw_audio=audio)
    reference.load_audio(raw_audio=audio)
    assert ours.get_number_of_slices() == reference.get_number_of_slices() == 3
    for index in range(3):
        _assert_images_match(np.asarray(ours.audio_slice_to_image(index)),
                             np.asarray(reference.audio_slice_to_image(index)))
    np.testing.assert_allclose(_spectral().mel_filterbank(16000, 1024, 64).numpy(),
                               librosa.filters.mel(sr=16000, n_fft=1024, n_mels=64), atol=1e-7)


def test_slaney_mel_scale_is_linear_below_1khz_and_logarithmic_above():
    spectral = _spectral()
    assert spectral.hz_to_mel(1000.0) == pytest.approx(15.0)  # 1000 Hz / (200/3 Hz per mel)
    assert spectral.hz_to_mel(200.0) == pytest.approx(3.0)
    # 27 mels per factor 6.4 above the break
    assert spectral.hz_to_mel(6400.0) - spectral.hz_to_mel(1000.0) == pytest.approx(27.0)
    hz = np.array([0.0, 440.0, 999.0, 1000.0, 4000.0, 11025.0])
    np.testing.assert_allclose(spectral.mel_to_hz(spectral.hz_to_mel(hz)), hz, rtol=1e-12)


def test_filters_are_unit_area_triangles_between_neighbouring_centres():
    spectral = _spectral()
    sample_rate, n_fft, n_mels = 16000, 4096, 20  # fine bins: the triangles are well sampled
    weights = spectral.mel_filterbank(sample_rate, n_fft, n_mels).double().numpy()
    bin_hz = sample_rate / n_fft
    np.testing.assert_allclose(weights.sum(axis=1) * bin_hz, 1.0, rtol=0.02)
    edges = spectral.mel_to_hz(np.linspace(0, spectral.hz_to_mel(8000.0), n_mels + 2))
    peaks = weights.argmax(axis=1) * bin_hz
    np.testing.assert_allclose(peaks, edges[1:-1], atol=bin_hz)
    assert (weights >= 0).all()


def test_bytes_map_decibels_below_the_loudest_bin():
    mel = Mel(**MEL_CONFIGS["spoken_digits"])
    audio = SIGNALS["chirp"](mel.slice_size, mel.sr)
    image = mel.audio_to_bytes(audio)
    assert image.max() == 255  # the loudest bin is 0 dB
    quieter = mel.audio_to_bytes(audio * 0.1)  # 20 dB quieter everywhere: same relative image
    assert np.abs(quieter.astype(int) - image).max() <= 1
    power = _spectral().mel_power_spectrogram(torch.from_numpy(audio), mel.sr, mel.n_fft,
                                              mel.hop_length, mel.n_mels)
    db = 10 * torch.log10(power.clamp(min=1e-10) / power.max())
    expected = ((db.clamp(min=-80) + 80) * 255 / 80 + 0.5).floor().numpy()
    assert np.abs(expected - image).max() <= 1


def test_inverse_gives_audio_whose_image_is_the_input():
    mel = Mel(**MEL_CONFIGS["small_16k"])
    mel.load_audio(raw_audio=SIGNALS["tone_in_noise"](mel.slice_size, mel.sr))
    image = np.asarray(mel.audio_slice_to_image(0))
    audio = mel.image_to_audio(image)
    assert audio.dtype == np.float32 and audio.shape == (mel.hop_length * (mel.x_res - 1),)
    again = mel.audio_to_bytes(np.pad(audio, (0, mel.slice_size - len(audio))))
    # Griffin-Lim recovers a consistent phase: the round trip keeps the picture (mean grey-level
    # error where the image is above -60 dB: about 12.6 here; the reference's inverse, librosa's
    # mel_to_audio with the same 32 iterations, scores about 23.5, measured with librosa 0.11)
    loud = image > 64
    assert np.abs(again.astype(int) - image)[loud].mean() < 15
    same_seed = mel.image_to_audio(image, torch.Generator().manual_seed(0))
    np.testing.assert_array_equal(audio, same_seed)


def test_config_file_holds_the_formats_seven_keys(tmp_path):
    mel = Mel(**MEL_CONFIGS["small_16k"])
    mel.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "mel_config.json").read_text())
    assert {k for k in saved if not k.startswith("_")} == MEL_CONFIG_KEYS
    assert saved["_class_name"] == "Mel"
    assert Mel.from_pretrained(tmp_path).config == mel.config


def test_short_audio_is_padded_to_one_slice():
    mel = Mel(**MEL_CONFIGS["spoken_digits"])
    mel.load_audio(raw_audio=np.full(100, 0.5, dtype=np.float32))
    assert mel.get_number_of_slices() == 1
    assert len(mel.get_audio_slice(0)) == mel.slice_size


@pytest.mark.parametrize("audio, message", [
    (np.zeros(0, np.float32), "holds no samples"),
    (np.zeros(5000, np.float32), "is silent"),
    (np.zeros((2, 5000), np.float32), "mono waveform"),
])
def test_audio_that_cannot_make_an_image_is_refused(audio, message):
    with pytest.raises(PipelineError, match=message):
        Mel().load_audio(raw_audio=audio)


def test_a_slice_past_the_end_and_no_audio_are_errors():
    mel = Mel(**MEL_CONFIGS["spoken_digits"])
    with pytest.raises(PipelineError, match="call load_audio"):
        mel.audio_slice_to_image(0)
    mel.load_audio(raw_audio=SIGNALS["chirp"](mel.slice_size, mel.sr))
    with pytest.raises(PipelineError, match="slice 1 does not exist: the loaded audio has 1"):
        mel.audio_slice_to_image(1)


def test_frames_that_do_not_overlap_are_a_config_error():
    from diffusion_kernel.errors import ConfigError

    with pytest.raises(ConfigError, match="hop_length .256. must be positive and below n_fft"):
        Mel(n_fft=256, hop_length=256)
