"""The loss curve of a run as a PNG (drawn with Pillow: no plotting library needed): the loss of
every step in light grey, its running mean over a window of about 5 % of the run in blue, a
logarithmic loss axis when the loss spans more than a factor of 10."""

from __future__ import annotations

import io
import math
from pathlib import Path

WIDTH, HEIGHT = 640, 400
LEFT, RIGHT, TOP, BOTTOM = 70, 20, 30, 50


def running_mean(values: list[float], window: int) -> list[float]:
    """Mean of the last ``window`` values at each position (fewer at the start)."""
    out, total = [], 0.0
    for i, value in enumerate(values):
        total += value
        if i >= window:
            total -= values[i - window]
        out.append(total / min(i + 1, window))
    return out


def save_loss_curve(steps: list[int], losses: list[float], path: str | Path,
                    title: str = "training loss") -> Path:
    """Write the curve of ``losses`` against ``steps`` to ``path`` (atomically)."""
    from diffusion_kernel.hub import atomic_write_bytes
    from PIL import Image, ImageDraw

    finite = [(s, v) for s, v in zip(steps, losses) if math.isfinite(v)]
    image = Image.new("RGB", (WIDTH, HEIGHT), "white")
    draw = ImageDraw.Draw(image)
    draw.text((LEFT, 8), f"{title} ({len(steps)} steps)", fill="black")
    if finite:
        _plot(draw, [s for s, _ in finite], [v for _, v in finite])
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    atomic_write_bytes(path, buffer.getvalue())
    return Path(path)


def _plot(draw, steps: list[int], losses: list[float]) -> None:
    log_axis = min(losses) > 0 and max(losses) / min(losses) > 10
    f = math.log10 if log_axis else (lambda v: v)
    low, high = f(min(losses)), f(max(losses))
    high = high if high > low else low + 1.0
    first, last = steps[0], steps[-1] if steps[-1] > steps[0] else steps[0] + 1
    plot_w, plot_h = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM

    def x(step):
        return LEFT + (step - first) / (last - first) * plot_w

    def y(value):
        return TOP + (1 - (f(value) - low) / (high - low)) * plot_h

    draw.rectangle((LEFT, TOP, LEFT + plot_w, TOP + plot_h), outline="black")
    for k in range(5):  # axis labels: 5 ticks each
        frac = k / 4
        value = low + frac * (high - low)
        label = f"{10 ** value:.3g}" if log_axis else f"{value:.3g}"
        ty = TOP + (1 - frac) * plot_h
        draw.line((LEFT - 4, ty, LEFT, ty), fill="black")
        draw.text((4, ty - 6), label, fill="black")
        tx = LEFT + frac * plot_w
        draw.line((tx, TOP + plot_h, tx, TOP + plot_h + 4), fill="black")
        draw.text((tx - 10, TOP + plot_h + 8), f"{round(first + frac * (last - first))}",
                  fill="black")
    draw.text((LEFT + plot_w // 2 - 10, HEIGHT - 18), "step", fill="black")
    window = max(1, len(losses) // 20)
    for values, colour in ((losses, (190, 190, 190)), (running_mean(losses, window),
                                                        (30, 90, 200))):
        points = [(x(s), y(v)) for s, v in zip(steps, values)]
        if len(points) == 1:
            px, py = points[0]
            draw.ellipse((px - 2, py - 2, px + 2, py + 2), fill=colour)
        else:
            draw.line(points, fill=colour, width=2 if colour[2] == 200 else 1)
