"""diffusion-kernel vision plugin."""
