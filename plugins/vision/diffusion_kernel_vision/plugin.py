"""Entry point of the vision plugin: registers models, pipelines and processors (lazy)."""

from diffusion_kernel import hookimpl


@hookimpl
def register_models(register):
    pass
