"""Entry point of the sequence plugin: registers the 1-D backbones by module path (imported on
first use). Audio and reinforcement learning ask the registry for them by name
(``registry.models.get("UNet1DModel")``), never import this package."""

from diffusion_kernel.plugins import lazy_hook

_PKG = "diffusion_kernel_sequence"

MODELS = [
    ("UNet1DModel", "models.unet_1d", ("unet1d",)),
]

register_models = lazy_hook(_PKG, MODELS)
