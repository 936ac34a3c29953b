"""diffusion-kernel plugin: the text-conditioned image families beside Stable Diffusion.

DeepFloyd IF (Imagen's pixel cascade), unCLIP (DALL-E 2: prior, decoder, super-resolution) and
latent diffusion text-to-image with its LDMBert encoder. The U-Nets they run on are the vision
plugin's ``UNet2DConditionModel`` / ``UNet2DModel``; this package never imports the vision plugin,
it receives those models as components (or asks the registry for them).
"""
