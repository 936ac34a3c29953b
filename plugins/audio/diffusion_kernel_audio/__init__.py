"""diffusion-kernel audio plugin."""
