"""The DeepFloyd IF watermark: a small RGBA image (stored as the buffer ``watermark_image``, 62 x
62 x 4, values 0-255) pasted, alpha-blended, near the bottom-right corner of every PIL image the
IF pipelines return, scaled with the image's area (62 px at 1024 x 1024). Same placement and
resampling as the format's ``IFWatermarker``, whose checkpoints load here."""

from __future__ import annotations

import PIL.Image
import torch
from diffusion_kernel.modeling import ModelMixin


class IFWatermarker(ModelMixin):
    """``watermarker.apply_watermark(pil_images, sample_size)`` marks the images in place."""

    _library_name = "deepfloyd_if"  # model_index.json: ["deepfloyd_if", "IFWatermarker"]

    def __init__(self):
        super().__init__()
        self.register_buffer("watermark_image", torch.zeros((62, 62, 4)))
        self._mark: PIL.Image.Image | None = None

    def apply_watermark(self, images: list[PIL.Image.Image],
                        sample_size: int | None = None) -> list[PIL.Image.Image]:
        """Paste the watermark onto each image (all of one size); returns the same list.
        ``sample_size``: the resolution the generating U-Net was trained at (smaller images
        are marked as if enlarged to it)."""
        height, width = images[0].height, images[0].width
        sample_size = sample_size or height
        coef = min(height / sample_size, width / sample_size)
        if coef < 1:
            height, width = int(height / coef), int(width / coef)
        k = (width * height / 1024**2) ** 0.5  # the mark's scale: sqrt of the area ratio
        size, right, bottom = int(k * 62), width - int(14 * k), height - int(14 * k)
        if size < 1:  # below about 17 x 17 pixels the mark rounds to nothing (the reference
            return images  # fails on such images)
        if self._mark is None:
            pixels = self.watermark_image.to(torch.uint8).cpu().numpy()
            self._mark = PIL.Image.fromarray(pixels)  # (62, 62, 4) uint8: RGBA
        mark = self._mark.resize((size, size), PIL.Image.BICUBIC, reducing_gap=None)
        for image in images:
            image.paste(mark, box=(right - size, bottom - size, right, bottom),
                        mask=mark.split()[-1])
        return images
