"""diffusion-kernel molecules plugin: conformer generation with GeoDiff (Xu et al. 2022)."""
