"""Image folders for the Stable Diffusion fine-tunes: images with captions in the Hugging Face
"imagefolder" layout, or plain images.

The captioned layout: a ``metadata.jsonl`` (one JSON object a line) or ``metadata.csv`` beside
the images, each record naming an image by ``file_name`` (relative to the metadata file's folder)
and giving its caption in a column (``text`` unless told otherwise; a list of captions means one
is drawn per use). Metadata files may also sit in subfolders, each for the images below it. A
dataset repo downloaded from the Hub in that layout, with the images under ``train/``, is read
from its ``train`` folder only (not from other splits beside it).

Every image is decoded once when the folder is read, so a broken file stops the run before any
model is loaded; pixels are read again when an image is first used (only latents are kept).
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from pathlib import Path

import torch
from diffusion_kernel.errors import ConfigError, FileAccessError

from ..datasets import IMAGE_SUFFIXES, resize_and_crop

METADATA_FILES = ("metadata.jsonl", "metadata.csv")


@dataclass(frozen=True)
class ImageSet:
    """Image files and, for a captioned folder, each one's captions (one or more)."""

    folder: Path
    paths: tuple[Path, ...]
    captions: tuple[tuple[str, ...], ...] | None = None

    def __len__(self) -> int:
        return len(self.paths)

    def pixels(self, index: int, resolution: int, flip: bool = False) -> torch.Tensor:
        """Image ``index`` as a (3, R, R) tensor in [-1, 1]: RGB, its shorter side resized to
        ``resolution``, centre-cropped, mirrored left-right if ``flip``."""
        import numpy as np

        image = resize_and_crop(_open(self.paths[index]).convert("RGB"), resolution)
        array = np.asarray(image, dtype=np.float32) / 127.5 - 1.0
        tensor = torch.from_numpy(array).permute(2, 0, 1)
        return tensor.flip(-1).contiguous() if flip else tensor.contiguous()


def image_folder(folder: str | Path, what: str = "image folder") -> ImageSet:
    """Every image under ``folder`` (sorted, subfolders included), each checked to decode."""
    folder = _existing_folder(folder, what)
    paths = image_files(folder)
    if not paths:
        raise FileAccessError(f"no images ({', '.join(IMAGE_SUFFIXES)}) found in {what} "
                              f"{folder}; put the training images there")
    for path in paths:
        _open(path)
    return ImageSet(folder, tuple(paths))


def captioned_folder(folder: str | Path, caption_column: str = "text") -> ImageSet:
    """The images of an imagefolder-layout folder with their captions (see the module doc)."""
    folder = _existing_folder(folder, "data folder")
    root = folder
    top_level = any((folder / name).is_file() for name in METADATA_FILES)
    if not top_level and (folder / "train").is_dir():
        root = folder / "train"  # a Hub dataset repo's training split (not its test split)
    metadata = _metadata_files(root)
    if not metadata:
        raise FileAccessError(
            f"no {' or '.join(METADATA_FILES)} in {folder}: a text-to-image data folder holds "
            f"the images and a metadata.jsonl with one line per image, e.g. "
            f'{{"file_name": "0001.png", "{caption_column}": "a photo of a cat"}}')
    captions: dict[Path, tuple[str, ...]] = {}
    for meta in metadata:
        for where, record in _records(meta):
            path, caption = _entry(meta, where, record, caption_column)
            if path in captions:
                raise ConfigError(f"{where}: {path.name} is listed twice; give each image one "
                                  f"line (a list of captions if it has several)")
            captions[path] = caption
    unlisted = [p for p in image_files(root) if p.resolve() not in captions]
    if unlisted:
        names = ", ".join(str(p.relative_to(root)) for p in unlisted[:3])
        raise ConfigError(f"{len(unlisted)} images in {root} have no metadata line ({names}"
                          f"{', ...' if len(unlisted) > 3 else ''}); add a line for each, or "
                          f"move them out of the folder")
    if not captions:
        raise FileAccessError(f"{', '.join(str(m) for m in metadata)} list no images; add one "
                              f"line per image")
    paths = sorted(captions)
    for path in paths:
        _open(path)
    return ImageSet(root, tuple(paths), tuple(captions[p] for p in paths))


# Reading ---------------------------------------------------------------------------------------
def _existing_folder(folder: str | Path, what: str) -> Path:
    folder = Path(folder)
    if not folder.is_dir():
        raise FileAccessError(f"{what} {folder} does not exist or is not a folder")
    return folder


def image_files(folder: Path) -> list[Path]:
    """The image files under ``folder`` (by suffix), sorted."""
    return sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES
                  and p.is_file())


def _metadata_files(folder: Path) -> list[Path]:
    return sorted(p for name in METADATA_FILES for p in folder.rglob(name) if p.is_file())


def _records(meta: Path):
    """``(where, record)`` for each record of a metadata file; ``where`` is "file:line"."""
    text = meta.read_text(encoding="utf-8")
    if meta.suffix == ".csv":
        for number, row in enumerate(csv.DictReader(text.splitlines()), 2):
            yield f"{meta}:{number}", row
        return
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise ConfigError(f"{meta}:{number} is not valid JSON ({exc.msg}); each line must be "
                              f"one object such as "
                              f'{{"file_name": "0001.png", "text": "a caption"}}') from None
        if not isinstance(record, dict):
            raise ConfigError(f"{meta}:{number} is a JSON {type(record).__name__}, not an "
                              f"object with file_name and a caption")
        yield f"{meta}:{number}", record


def _entry(meta: Path, where: str, record: dict, column: str) -> tuple[Path, tuple[str, ...]]:
    name = record.get("file_name")
    if not isinstance(name, str) or not name:
        raise ConfigError(f"{where} has no file_name; every line names its image: "
                          f'{{"file_name": "0001.png", "{column}": "a caption"}}')
    if column not in record:
        raise ConfigError(f"{where} ({name}) has no {column!r} caption (its keys: "
                          f"{sorted(record)}); add one, or pass --caption-column with the "
                          f"column that holds the captions")
    caption = record[column]
    captions = tuple(caption) if isinstance(caption, list) else (caption,)
    if not captions or not all(isinstance(c, str) for c in captions):
        raise ConfigError(f"{where} ({name}): the {column!r} caption must be a string or a "
                          f"non-empty list of strings, got {caption!r}")
    path = (meta.parent / name).resolve()
    if not path.is_file():
        raise FileAccessError(f"{where} names {name}, which is not in {meta.parent}")
    return path, captions


def _open(path: Path):
    """The decoded PIL image at ``path``; a file that does not decode is a clear error."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            image.load()
            return image.copy()
    except (UnidentifiedImageError, OSError, ValueError) as exc:
        raise FileAccessError(f"cannot read image {path}: {exc}; remove or fix it") from exc
