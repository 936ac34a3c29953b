"""Entry point of the vision plugin: registers image models, pipelines and the image processor by
module path (imported on first use), and adds to the kernel's command verbs: the
``unconditional``, ``text-to-image``, ``textual-inversion`` and ``dreambooth`` kinds of
``train``, the ``digits`` kind of ``evaluate``, the PNG writer of ``images`` for ``generate``,
and the shipped ``digits`` model."""

from pathlib import Path

from diffusion_kernel import hookimpl
from diffusion_kernel.plugins import lazy_hook

_PKG = "diffusion_kernel_vision"

MODELS = [
    ("UNet2DModel", "models.unet_2d", ("unet2d",)),
    ("UNet2DConditionModel", "models.unet_2d_condition", ("unet2d-condition",)),
    ("AutoencoderKL", "models.autoencoder_kl", ("vae", "autoencoder-kl")),
    ("VQModel", "models.vq_model", ("vqvae", "vq-model")),
]
PIPELINES = [
    ("DDPMPipeline", "pipelines.ddpm", ("ddpm-pipeline",)),
    ("DDIMPipeline", "pipelines.ddim", ("ddim-pipeline",)),
    ("PNDMPipeline", "pipelines.pndm", ("pndm-pipeline",)),
    ("LDMPipeline", "pipelines.ldm", ("ldm",)),
    ("ScoreSdeVePipeline", "pipelines.score_sde_ve", ("score-sde-ve-pipeline",)),
    ("StableDiffusionPipeline", "pipelines.stable_diffusion", ("sd", "text2img")),
    ("StableDiffusionImg2ImgPipeline", "pipelines.stable_diffusion_img2img", ("img2img",)),
    ("StableDiffusionInpaintPipeline", "pipelines.stable_diffusion_inpaint", ("inpaint",)),
]
TRAIN_KINDS = [
    ("text-to-image", "text_to_image",
     "fine-tune Stable Diffusion's U-Net (or LoRA adapters) on captioned images"),
    ("textual-inversion", "textual_inversion",
     "learn a new token's embedding for Stable Diffusion from a few images"),
    ("dreambooth", "dreambooth",
     "DreamBooth: fine-tune Stable Diffusion (or LoRA adapters) on a subject, with optional "
     "prior preservation"),
]
PROCESSORS = [
    ("VaeImageProcessor", "processing.image_processor", ("image",)),
]

register_models = lazy_hook(_PKG, MODELS)
register_pipelines = lazy_hook(_PKG, PIPELINES)
register_processors = lazy_hook(_PKG, PROCESSORS)


@hookimpl
def register_train_kinds(register):
    register("unconditional", f"{_PKG}.commands:run_train_unconditional",
             arguments=f"{_PKG}.commands:add_train_unconditional_arguments",
             help="an unconditional image DDPM (UNet2DModel) on a folder of images or digits")
    for name, run, help_text in TRAIN_KINDS:
        register(name, f"{_PKG}.training.arguments:run_{run}",
                 arguments=f"{_PKG}.training.arguments:add_{run}_arguments", help=help_text)


@hookimpl
def register_evaluate_kinds(register):
    register("digits", f"{_PKG}.digits_quality:run",
             arguments=f"{_PKG}.commands:add_evaluate_digits_arguments",
             help="sample quality of a digits model against the held-out digits: FD, classifier "
                  "confidence, class shares, nearest-training-digit (memorisation) check")


@hookimpl
def register_output_writers(register):
    register("images", f"{_PKG}.image_writer:ImageWriter")


@hookimpl
def register_shipped_models(register):
    register("digits", str(Path(__file__).parent / "shipped" / "digits-ddpm"), default=True,
             summary="16x16 handwritten digits, a 1.1M-parameter DDPM (docs/training.md)")
