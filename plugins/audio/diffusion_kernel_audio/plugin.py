"""Entry point of the audio plugin: registers the audio pipelines and the mel processor by module
path (imported on first use), and adds to the kernel's command verbs: the WAV writer of
``audios`` for ``generate``, the ``mel`` kind of ``train``, the ``spoken-digits`` kind of
``evaluate`` and the shipped ``spoken-digits`` model. The models the pipelines run
(UNet1DModel, UNet2DModel, AutoencoderKL) come from other plugins, through the registry."""

from pathlib import Path

from diffusion_kernel import hookimpl
from diffusion_kernel.plugins import lazy_hook

_PKG = "diffusion_kernel_audio"

PIPELINES = [
    ("DanceDiffusionPipeline", "pipelines.dance_diffusion", ("dance-diffusion",)),
    ("AudioDiffusionPipeline", "pipelines.audio_diffusion", ("audio-diffusion",)),
]
PROCESSORS = [
    ("Mel", "processing.mel", ("mel",)),
]

register_pipelines = lazy_hook(_PKG, PIPELINES)
register_processors = lazy_hook(_PKG, PROCESSORS)


@hookimpl
def register_output_writers(register):
    register("audios", f"{_PKG}.wav_writer:WavWriter")


@hookimpl
def register_train_kinds(register):
    register("mel", f"{_PKG}.commands:run_train_mel",
             arguments=f"{_PKG}.commands:add_train_mel_arguments",
             help="an Audio Diffusion model (UNet2DModel over mel spectrograms) on a folder of "
                  "WAV files or on spoken digits")


@hookimpl
def register_evaluate_kinds(register):
    register("spoken-digits", f"{_PKG}.commands:run_evaluate_spoken_digits",
             arguments=f"{_PKG}.commands:add_evaluate_spoken_digits_arguments",
             help="how recognisable a spoken-digits model's samples are, judged by a classifier "
                  "of voices the model never heard")


@hookimpl
def register_shipped_models(register):
    register("spoken-digits", str(Path(__file__).parent / "shipped" / "spoken-digits-mel"),
             summary="spoken digits 'zero'..'nine' as 32x32 mel spectrograms at 11,025 Hz, an "
                     "Audio Diffusion DDPM (docs/audio.md)")
