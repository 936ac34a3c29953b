"""``diffusion-kernel generate`` on the text2image families: a prompt and a folder give a grid
of the pipeline's images (the last stage's, for unCLIP's cascade); stage II alone is refused
with a message naming what to run instead."""

import numpy as np
import PIL.Image
import pytest
from diffusion_kernel.cli import main

from . import tiny
from .tiny import single_thread  # noqa: F401


@pytest.mark.parametrize("folder,num,size", [
    (tiny.if_stage_1_folder, 2, 16),
    (tiny.unclip_folder, 1, 32),  # the super-resolution stage's size
    (tiny.ldm_text2img_folder, 2, 4),  # the format's factor 8 on latents of 8 x 8 / 2
])
def test_generate_writes_a_grid_of_the_last_stages_images(folder, num, size, tmp_path, capsys):
    out = tmp_path / "grid.png"
    assert main(["generate", "a cat", "--model", str(folder()), "--num", str(num), "--steps",
                 "2", "--threads", "1", "--out", str(out)]) == 0
    assert "wrote" in capsys.readouterr().out
    grid = np.asarray(PIL.Image.open(out))
    assert grid.shape[0] >= size and grid.shape[1] >= num * size and grid.std() > 5


def test_generate_refuses_stage_2_alone_before_sampling(tmp_path, capsys):
    out = tmp_path / "grid.png"
    assert main(["generate", "a cat", "--model", str(tiny.if_stage_2_folder()), "--out",
                 str(out)]) == 2
    assert "enlarges the images of an IF stage I" in capsys.readouterr().err
    assert not out.exists()
