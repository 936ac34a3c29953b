"""Image data sets for training: a folder of images, or a named built-in set.

Images become float tensors in [-1, 1], shape (C, H, W). A folder whose images differ in size or
mode is refused with the files named, unless ``resolution`` / ``mode`` say how to unify them.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
from diffusion_kernel.errors import ConfigError, FileAccessError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff")
BUILT_IN = ("digits", "digits-train", "digits-test")
# The digits' fixed split: 600 held-out digits (a seeded permutation, the same on every machine)
# that the shipped model never sees, so its samples can be judged against unseen data.
DIGITS_HELD_OUT = 600
_SPLIT_SEED = 20240611


def load_digits(resolution: int = 16) -> tuple[torch.Tensor, torch.Tensor]:
    """scikit-learn's 1,797 handwritten 8x8 digits (values 0..16), upsampled bilinearly to
    ``resolution`` and scaled to [-1, 1]; returns (images (N, 1, R, R), labels (N,))."""
    try:
        from sklearn.datasets import load_digits as sklearn_digits
    except ImportError as exc:
        raise ConfigError("the built-in 'digits' data set needs scikit-learn: "
                          "pip install scikit-learn") from exc
    digits = sklearn_digits()
    images = torch.tensor(digits.images, dtype=torch.float32).unsqueeze(1) / 16.0
    if resolution != 8:
        images = torch.nn.functional.interpolate(images, size=(resolution, resolution),
                                                 mode="bilinear", align_corners=False)
    return images.clamp(0, 1) * 2 - 1, torch.tensor(digits.target)


def load_digits_split(split: str, resolution: int = 16) -> tuple[torch.Tensor, torch.Tensor]:
    """The training (``"train"``, 1,197 digits) or held-out (``"test"``, 600 digits) part of
    ``load_digits``: a fixed partition drawn with a seeded permutation (numpy's PCG64, stable
    across versions); returns (images, labels) as ``load_digits`` does."""
    if split not in ("train", "test"):
        raise ConfigError(f"digits split {split!r}: choose 'train' or 'test'")
    images, labels = load_digits(resolution)
    order = torch.from_numpy(np.random.default_rng(_SPLIT_SEED).permutation(len(images)))
    index = order[DIGITS_HELD_OUT:] if split == "train" else order[:DIGITS_HELD_OUT]
    return images[index], labels[index]


def load_image_folder(folder: str | os.PathLike, resolution: int | None = None,
                      mode: str | None = None) -> torch.Tensor:
    """Every image under ``folder`` as one (N, C, H, W) tensor in [-1, 1].

    ``resolution`` resizes (shorter side) and centre-crops to a square; ``mode`` ("L", "RGB")
    converts. Without them, all images must share one size and mode.
    """
    from PIL import Image, UnidentifiedImageError

    folder = Path(folder)
    if not folder.is_dir():
        raise FileAccessError(f"image folder {folder} does not exist; pass a folder of images "
                              f"or a built-in data set name ({', '.join(BUILT_IN)})")
    paths = sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
    if not paths:
        raise FileAccessError(f"no images ({', '.join(IMAGE_SUFFIXES)}) found in {folder}")
    images, sizes, modes = [], {}, {}
    for path in paths:
        try:
            with Image.open(path) as img:
                img.load()
                image = img.copy()
        except (UnidentifiedImageError, OSError) as exc:
            raise FileAccessError(f"cannot read image {path}: {exc}; remove or fix it") from exc
        if mode is not None:
            image = image.convert(mode)
        if resolution is not None:
            image = resize_and_crop(image, resolution)
        sizes.setdefault(image.size, path)
        modes.setdefault(image.mode, path)
        images.append(image)
    if len(sizes) > 1:
        examples = ", ".join(f"{p.name} is {s[0]}x{s[1]}" for s, p in list(sizes.items())[:3])
        raise ConfigError(f"images in {folder} have different sizes ({examples}); pass "
                          f"--resolution N to resize and crop them all to NxN")
    if len(modes) > 1:
        examples = ", ".join(f"{p.name} is {m}" for m, p in list(modes.items())[:3])
        raise ConfigError(f"images in {folder} have different modes ({examples}); pass "
                          f"--mode RGB (or L) to convert them all")
    if images[0].mode not in ("L", "RGB"):
        raise ConfigError(f"images in {folder} have mode {images[0].mode}; pass --mode RGB or L")
    array = np.stack([np.asarray(img, dtype=np.float32) for img in images]) / 255.0
    if array.ndim == 3:
        array = array[..., None]
    return torch.from_numpy(array).permute(0, 3, 1, 2).contiguous() * 2 - 1


def resize_and_crop(image, resolution: int):
    """A PIL image resized (bicubic) so its shorter side is ``resolution``, then centre-cropped
    to ``resolution`` x ``resolution``."""
    from PIL import Image

    scale = resolution / min(image.size)
    size = (max(resolution, round(image.width * scale)),
            max(resolution, round(image.height * scale)))
    image = image.resize(size, Image.Resampling.BICUBIC)
    left, top = (image.width - resolution) // 2, (image.height - resolution) // 2
    return image.crop((left, top, left + resolution, top + resolution))


def load_training_images(data: str, resolution: int | None = None,
                         mode: str | None = None) -> torch.Tensor:
    """A built-in set by name (``digits``: all 1,797; ``digits-train`` / ``digits-test``: the
    fixed 1,197 / 600 split), else a folder path."""
    if data == "digits":
        return load_digits(resolution or 16)[0]
    if data in BUILT_IN:
        return load_digits_split(data.removeprefix("digits-"), resolution or 16)[0]
    return load_image_folder(data, resolution, mode)
