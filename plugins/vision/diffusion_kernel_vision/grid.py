"""Image grids: many samples in one PNG."""

from __future__ import annotations

import math
from pathlib import Path


def make_grid(images: list, columns: int | None = None, padding: int = 2):
    """Paste PIL images (all one size) into a grid, ``columns`` wide (default: square-ish)."""
    from PIL import Image

    if not images:
        raise ValueError("make_grid needs at least one image")
    columns = columns or math.ceil(math.sqrt(len(images)))
    rows = math.ceil(len(images) / columns)
    width, height = images[0].size
    grid = Image.new(images[0].mode, (columns * (width + padding) + padding,
                                      rows * (height + padding) + padding))
    for i, image in enumerate(images):
        row, column = divmod(i, columns)
        x, y = padding + column * (width + padding), padding + row * (height + padding)
        grid.paste(image, (x, y))
    return grid


def save_grid(images: list, path: str | Path, columns: int | None = None) -> Path:
    """Write a grid PNG atomically (the kernel's one atomic-write mechanism)."""
    import io

    from diffusion_kernel.hub import atomic_write_bytes

    buffer = io.BytesIO()
    make_grid(images, columns).save(buffer, format="PNG")
    atomic_write_bytes(path, buffer.getvalue())
    return Path(path)
