"""WAV in and out with the standard library: 16-bit PCM round trips, what another reader sees, and
the files the readers refuse (other bit depths, sample rates the mel config does not use, no
sound)."""

import wave

import numpy as np
import pytest
from audio_signals import SIGNALS
from diffusion_kernel import registry
from diffusion_kernel.errors import PipelineError

Mel = registry.processors.get("Mel")


def _wav_module():
    import importlib

    return importlib.import_module(type(Mel()).__module__.split(".")[0] + ".wav")


def _write_raw(path, frames: bytes, channels=1, width=2, rate=16000):
    with wave.open(str(path), "wb") as file:
        file.setnchannels(channels)
        file.setsampwidth(width)
        file.setframerate(rate)
        file.writeframes(frames)
    return path


@pytest.mark.parametrize("channels", [1, 2])
def test_round_trip_keeps_16_bit_samples(tmp_path, channels):
    wav = _wav_module()
    audio = np.stack([SIGNALS["chirp"](4000, 16000), SIGNALS["clicks"](4000, 16000)])[:channels]
    wav.write_wav(tmp_path / "a.wav", audio, 16000)
    back, rate = wav.read_wav(tmp_path / "a.wav")
    assert rate == 16000 and back.shape == (channels, 4000) and back.dtype == np.float32
    np.testing.assert_allclose(back, audio, atol=0.5 / 32767 + 1e-7)


def test_written_files_read_the_same_in_another_reader(tmp_path):
    from scipy.io import wavfile

    wav = _wav_module()
    audio = np.stack([SIGNALS["chirp"](800, 8000), -SIGNALS["chirp"](800, 8000)])
    wav.write_wav(tmp_path / "s.wav", np.clip(audio * 3, -2, 2), 8000)  # beyond full scale: clipped
    rate, data = wavfile.read(tmp_path / "s.wav")
    assert rate == 8000 and data.dtype == np.int16 and data.shape == (800, 2)
    np.testing.assert_array_equal(data.T, np.round(np.clip(audio * 3, -1, 1) * 32767))


def test_a_mono_signal_may_be_written_without_a_channel_axis(tmp_path):
    wav = _wav_module()
    wav.write_wav(tmp_path / "m.wav", np.zeros(10, np.float32), 22050)
    assert wav.read_wav(tmp_path / "m.wav")[0].shape == (1, 10)


@pytest.mark.parametrize("width, bits", [(1, 8), (3, 24), (4, 32)])
def test_other_bit_depths_are_refused_naming_the_conversion(tmp_path, width, bits):
    path = _write_raw(tmp_path / "x.wav", b"\x00" * width * 16, width=width)
    with pytest.raises(PipelineError, match=f"{bits}-bit samples; only 16-bit PCM"):
        _wav_module().read_wav(path)


def test_a_file_that_is_not_a_wav_is_refused(tmp_path):
    (tmp_path / "n.wav").write_bytes(b"ID3 this is an mp3")
    with pytest.raises(PipelineError, match="not a PCM WAV file"):
        _wav_module().read_wav(tmp_path / "n.wav")


@pytest.mark.parametrize("audio, rate, message", [
    (np.zeros((3, 10)), 16000, "mono or stereo"),
    (np.zeros(10), 0, "positive integer"),
])
def test_writing_bad_audio_is_refused(tmp_path, audio, rate, message):
    with pytest.raises(PipelineError, match=message):
        _wav_module().write_wav(tmp_path / "b.wav", audio, rate)


def test_mel_refuses_a_wav_at_another_sample_rate_naming_the_resampling(tmp_path):
    path = _wav_module().write_wav(tmp_path / "r.wav", SIGNALS["chirp"](20000, 44100), 44100)
    with pytest.raises(PipelineError, match="44100 Hz, the mel config 16000 Hz; resample"):
        Mel(sample_rate=16000).load_audio(audio_file=path)


@pytest.mark.parametrize("frames, message", [(b"", "holds no samples"),
                                             (b"\x00\x00" * 400, "is silent")])
def test_mel_refuses_an_empty_or_silent_file(tmp_path, frames, message):
    path = _write_raw(tmp_path / "e.wav", frames, rate=22050)
    with pytest.raises(PipelineError, match=message):
        Mel().load_audio(audio_file=path)


def test_mel_averages_a_stereo_file_to_mono(tmp_path):
    left, right = SIGNALS["chirp"](9000, 16000), SIGNALS["clicks"](9000, 16000)
    path = _wav_module().write_wav(tmp_path / "st.wav", np.stack([left, right]), 16000)
    mel = Mel(sample_rate=16000, x_res=16, y_res=16, hop_length=256, n_fft=512)
    mel.load_audio(audio_file=path)
    np.testing.assert_allclose(mel.audio[:9000], (left + right) / 2, atol=1e-4)
