"""The Mel processor on 10 s of audio: forward (waveform -> 8-bit mel image) and inverse (image ->
waveform by Griffin-Lim), ours against librosa's (what the reference ``Mel`` calls), when librosa
is installed; ours alone otherwise.

    python benchmarks/audio_mel.py [--repeat N] [--config default|spoken-digits]

The signal is a 220 Hz tone with overtones in white noise 40 dB down (tests/audio's
``tone_in_noise``). Forward: ``Mel.audio_to_bytes`` on the whole 10 s against librosa's
``melspectrogram`` + ``power_to_db(ref=max)`` + the same byte mapping; the images must agree to
one grey level on under 0.1 % of pixels. Inverse: ``Mel.bytes_to_audio`` against librosa's
``db_to_power`` + ``feature.inverse.mel_to_audio`` (both ``n_iter`` Griffin-Lim iterations from
random phases, so the waveforms differ); each is scored by how far the mel image of its audio is
from the input image (mean absolute grey-level difference where the image is above -40 dB).
librosa's first call compiles numba code (over a minute); it is warmed up before timing.
"""

from __future__ import annotations

import argparse
import importlib.util
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "audio"))
from audio_signals import tone_in_noise  # noqa: E402

CONFIGS = {"default": {},  # the diffusers Mel's defaults: 256 mel bins, 22,050 Hz, n_fft 2048
           "spoken-digits": dict(x_res=32, y_res=32, sample_rate=11025, n_fft=512,
                                 hop_length=256)}


def librosa_bytes(mel, audio):
    import librosa

    power = librosa.feature.melspectrogram(y=audio, sr=mel.sr, n_fft=mel.n_fft,
                                           hop_length=mel.hop_length, n_mels=mel.n_mels)
    db = librosa.power_to_db(power, ref=np.max, top_db=mel.top_db)
    return (((db + mel.top_db) * 255 / mel.top_db).clip(0, 255) + 0.5).astype(np.uint8)


def librosa_audio(mel, image):
    import librosa

    power = librosa.db_to_power(image.astype("float") * mel.top_db / 255 - mel.top_db)
    return librosa.feature.inverse.mel_to_audio(power, sr=mel.sr, n_fft=mel.n_fft,
                                                hop_length=mel.hop_length, n_iter=mel.n_iter)


def image_error(mel, image, audio) -> float:
    """Mean grey-level distance between ``image`` and the mel image of ``audio``, where the
    image is above -top_db / 2."""
    padding = max(0, image.shape[1] * mel.hop_length - len(audio))
    again = mel.audio_to_bytes(np.pad(audio, (0, padding)))[:, :image.shape[1]]
    loud = image > 255 // 2
    return float(np.abs(again.astype(int) - image)[loud].mean())


def medians(functions, repeat: int):
    """Run the functions in turn ``repeat`` times (so that a change in the machine's load hits
    each alike); the median time and the last result of each."""
    times, results = [[] for _ in functions], [None] * len(functions)
    for _ in range(repeat):
        for i, function in enumerate(functions):
            start = time.perf_counter()
            results[i] = function()
            times[i].append(time.perf_counter() - start)
    return [(statistics.median(t), r) for t, r in zip(times, results)]


def main() -> None:
    import torch
    from diffusion_kernel import registry

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--config", choices=sorted(CONFIGS), default="default")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    mel = registry.processors.get("Mel")(**CONFIGS[args.config])
    audio = tone_in_noise(10 * mel.sr, mel.sr)
    has_librosa = importlib.util.find_spec("librosa") is not None
    print(f"10 s at {mel.sr} Hz, {mel.n_mels} mel bins, n_fft {mel.n_fft}, hop {mel.hop_length},"
          f" {mel.n_iter} Griffin-Lim iterations; {args.threads} thread(s), median of "
          f"{args.repeat} (forward: {5 * args.repeat}), alternating; librosa "
          f"{'installed' if has_librosa else 'not installed'}")
    forward_repeat = 5 * args.repeat  # the forward takes a tenth of a second: more runs
    if not has_librosa:
        (t_fwd, image), = medians([lambda: mel.audio_to_bytes(audio)], forward_repeat)
        (t_inv, back), = medians([lambda: mel.bytes_to_audio(image)], args.repeat)
        rows = [("forward", t_fwd, None, ""),
                ("inverse", t_inv, None, f"image error {image_error(mel, image, back):.2f}")]
    else:
        librosa_bytes(mel, audio[: mel.sr])  # compile numba's code before timing
        (t_fwd, image), (t_ref, reference) = medians(
            [lambda: mel.audio_to_bytes(audio), lambda: librosa_bytes(mel, audio)],
            forward_repeat)
        difference = np.abs(image.astype(int) - reference)
        librosa_audio(mel, image[:, :8])
        (t_inv, back), (t_ref_inv, theirs) = medians(
            [lambda: mel.bytes_to_audio(image), lambda: librosa_audio(mel, image)], args.repeat)
        rows = [("forward", t_fwd, t_ref, f"images: max diff {difference.max()}, "
                                          f"{(difference > 0).mean():.2e} of pixels differ"),
                ("inverse", t_inv, t_ref_inv, f"image error ours "
                 f"{image_error(mel, image, back):.2f}, librosa "
                 f"{image_error(mel, image, theirs):.2f} grey levels")]
    print(f"{'':8s} {'ours s':>8s} {'librosa s':>10s} {'ratio':>7s}  same numbers?")
    for name, ours_t, ref_t, note in rows:
        ratio = f"{ours_t / ref_t:6.2f}x" if ref_t else "      -"
        ref = f"{ref_t:10.3f}" if ref_t else f"{'-':>10s}"
        print(f"{name:8s} {ours_t:8.3f} {ref} {ratio}  {note}")


if __name__ == "__main__":
    main()
