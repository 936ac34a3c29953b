"""The vision plugin's trainers: ``loop`` (the one training loop, checkpoints and resume, on
accelerate), ``loss_curve`` (the PNG), ``captioned_images`` (image folders with
``metadata.jsonl``), ``latents`` (VAE latents encoded once per image), ``stable_diffusion`` (what
the Stable Diffusion fine-tunes share), and one module per command: ``text_to_image``,
``textual_inversion``, ``dreambooth``. ``arguments`` holds their command-line options (argparse
only, so ``--help`` stays quick)."""
