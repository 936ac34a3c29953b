"""Entry point of the audio plugin: registers the audio pipelines and the mel processor by module
path (imported on first use). The models they run (UNet1DModel, UNet2DModel, AutoencoderKL) come
from other plugins, through the registry."""

from diffusion_kernel import hookimpl

_PKG = "diffusion_kernel_audio"

PIPELINES = [
    ("DanceDiffusionPipeline", "pipelines.dance_diffusion", ("dance-diffusion",)),
    ("AudioDiffusionPipeline", "pipelines.audio_diffusion", ("audio-diffusion",)),
]
PROCESSORS = [
    ("Mel", "processing.mel", ("mel",)),
]


def _register_all(register, table):
    for name, module, aliases in table:
        register(f"{_PKG}.{module}:{name}", name=name, aliases=aliases)


@hookimpl
def register_pipelines(register):
    _register_all(register, PIPELINES)


@hookimpl
def register_processors(register):
    _register_all(register, PROCESSORS)
