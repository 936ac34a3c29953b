"""diffusion-kernel sequence plugin: 1-D backbones that several modalities share (audio, RL)."""
