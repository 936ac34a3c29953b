"""Entry point of the audio plugin.

The audio models, pipelines and processors are not written yet, so this plugin registers nothing;
`diffusion-kernel plugins` reports it as installed with nothing registered.
"""
