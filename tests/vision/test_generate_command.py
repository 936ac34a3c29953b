"""`diffusion-kernel generate` on a Stable Diffusion folder: the prompt is required, reaches the
pipeline, and the PNG grid holds exactly what the pipeline returns for per-sample seeds."""

import numpy as np
import torch
from diffusion_kernel import DiffusionPipeline
from diffusion_kernel.cli import main
from PIL import Image

from . import tiny
from .tiny import single_thread  # noqa: F401  (autouse: one thread)


def test_a_text_to_image_folder_without_a_prompt_fails_before_sampling(tmp_path, capsys):
    folder = str(tiny.stable_diffusion_folder())
    assert main(["generate", "--model", folder, "--out", str(tmp_path / "x.png")]) == 2
    err = capsys.readouterr().err
    assert "StableDiffusionPipeline needs an input for its 'prompt' argument" in err
    assert not (tmp_path / "x.png").exists()


def test_the_prompt_reaches_the_pipeline_and_the_grid_holds_its_images(tmp_path):
    folder = tiny.stable_diffusion_folder()
    out = tmp_path / "cats"
    assert main(["generate", "a cat", "--model", str(folder), "--num", "2", "--steps", "2",
                 "--seed", "5", "--out", str(out)]) == 0
    pipe = DiffusionPipeline.from_pretrained(folder)
    pipe.set_progress_bar_config(disable=True)
    expected = pipe("a cat", num_images_per_prompt=2, num_inference_steps=2,
                    generator=[torch.Generator().manual_seed(s) for s in (5, 6)]).images
    for i, image in enumerate(expected):
        assert np.array_equal(np.asarray(Image.open(out / f"{i:04d}.png")), np.asarray(image))
    assert sorted(p.name for p in out.iterdir()) == ["0000.png", "0001.png", "grid.png"]
