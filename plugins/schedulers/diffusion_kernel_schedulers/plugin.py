"""Entry point of the schedulers plugin: registers every scheduler by module path (lazy)."""

from diffusion_kernel import hookimpl


@hookimpl
def register_schedulers(register):
    pass
