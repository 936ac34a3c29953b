"""The picture of a spoken-digits evaluation: for each digit the judge hears, a row of generated
mel spectrograms (low frequencies at the bottom) and a bar with that digit's share."""

from __future__ import annotations

import numpy as np

from .datasets.spoken_digits import DIGITS

PER_ROW = 12
SCALE = 3  # pixels per mel bin / frame


def draw_samples_by_digit(pixels: np.ndarray, verdict, report: dict):
    from PIL import Image, ImageDraw

    height, width = pixels.shape[1] * SCALE, pixels.shape[2] * SCALE
    label_w, bar_w, gap = 70, 160, 4
    canvas = Image.new("RGB", (label_w + PER_ROW * (width + gap) + bar_w + 20,
                               len(DIGITS) * (height + gap) + 40), "white")
    draw = ImageDraw.Draw(canvas)
    draw.text((5, 5), f"{report['samples']} samples, mean confidence "
                      f"{report['mean_confidence']:.3f}, FD {report['fd_to_training_voices']:.1f}"
                      f" (floor {report['fd_floor_training_voices']:.1f})", fill="black")
    shares = verdict.shares()
    for digit, word in enumerate(DIGITS):
        top = 30 + digit * (height + gap)
        draw.text((5, top + height // 2 - 5), word, fill="black")
        chosen = np.nonzero(verdict.digits == digit)[0][:PER_ROW]
        for column, index in enumerate(chosen):
            image = Image.fromarray(pixels[index][::-1]).resize((width, height), Image.NEAREST)
            canvas.paste(image, (label_w + column * (width + gap), top))
        left = label_w + PER_ROW * (width + gap) + 10
        draw.rectangle([left, top + 8, left + int(shares[digit] * 5 * bar_w), top + height - 8],
                       fill="#4477aa")
        draw.text((left + 2, top + height - 8), f"{shares[digit]:.1%}", fill="black")
    return canvas
