"""Entry point of the text2image plugin: registers its models and pipelines by module path
(imported on first use)."""

from diffusion_kernel import hookimpl

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


def _register_all(register, table):
    for name, module, aliases in table:
        register(f"{_PKG}.{module}:{name}", name=name, aliases=aliases)


@hookimpl
def register_models(register):
    _register_all(register, MODELS)


@hookimpl
def register_pipelines(register):
    _register_all(register, PIPELINES)
