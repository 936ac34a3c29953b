"""The files people download for Stable Diffusion: LoRA adapters (``lora_pipeline``,
``lora_formats``), textual-inversion embeddings (``textual_inversion``) and original single-file
checkpoints (``single_file``, with the one original <-> diffusers key map in ``ldm_keys``)."""
