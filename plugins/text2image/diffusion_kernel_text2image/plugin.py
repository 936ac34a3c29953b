"""Entry point of the text2image plugin: registers its models and pipelines by module path
(imported on first use)."""

from diffusion_kernel.plugins import lazy_hook

_PKG = "diffusion_kernel_text2image"

MODELS = [
    ("PriorTransformer", "models.prior_transformer", ("prior-transformer",)),
    ("UnCLIPTextProjModel", "models.unclip_text_proj", ("unclip-text-proj",)),
    ("LDMBertModel", "models.ldm_bert", ("ldm-bert",)),
    ("IFWatermarker", "models.if_watermarker", ("if-watermarker",)),
]
PIPELINES = [
    ("IFPipeline", "pipelines.deepfloyd_if", ("if", "deepfloyd-if")),
    ("IFSuperResolutionPipeline", "pipelines.deepfloyd_if_superresolution",
     ("if-superresolution", "if-sr")),
    ("UnCLIPPipeline", "pipelines.unclip", ("unclip-pipeline", "dalle2")),
    ("LDMTextToImagePipeline", "pipelines.latent_diffusion_text2img", ("ldm-text2img",)),
]

register_models = lazy_hook(_PKG, MODELS)
register_pipelines = lazy_hook(_PKG, PIPELINES)
