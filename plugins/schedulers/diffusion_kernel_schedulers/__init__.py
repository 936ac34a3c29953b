"""diffusion-kernel schedulers plugin."""
