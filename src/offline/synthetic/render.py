"""Rendering a scene as an anti-aliased PNG image."""

from __future__ import annotations

import math
from collections.abc import Sequence

from PIL import Image, ImageDraw

from src.offline.synthetic.scenes import GRID, Scene

_RGB = {
    "red": (220, 38, 38),
    "green": (34, 160, 60),
    "blue": (37, 99, 235),
    "yellow": (250, 204, 21),
    "purple": (147, 51, 234),
    "orange": (249, 115, 22),
}
_BACKGROUND = (232, 232, 232)
_OUTLINE = (30, 30, 30)
_SUPERSAMPLE = 4  # draw large, then box-filter down: anti-aliased edges at 56 px too
_RADIUS = {"small": 0.24, "large": 0.42}  # as a fraction of the cell width


def _polygon(
    cx: float, cy: float, radii: Sequence[float], start: float
) -> list[tuple[float, float]]:
    n = len(radii)
    return [
        (
            cx + r * math.cos(start + 2 * math.pi * k / n),
            cy + r * math.sin(start + 2 * math.pi * k / n),
        )
        for k, r in enumerate(radii)
    ]


def render_scene(scene: Scene, image_size: int = 112) -> Image.Image:
    side = image_size * _SUPERSAMPLE
    image = Image.new("RGB", (side, side), _BACKGROUND)
    draw = ImageDraw.Draw(image)
    cell = side / GRID
    width = max(1, round(side / 120))
    for obj in scene:
        row, col = divmod(obj.cell, GRID)
        cx, cy = (col + 0.5) * cell, (row + 0.5) * cell
        r = _RADIUS[obj.size] * cell
        style = {"fill": _RGB[obj.colour], "outline": _OUTLINE, "width": width}
        if obj.shape == "circle":
            draw.ellipse((cx - r, cy - r, cx + r, cy + r), **style)
        elif obj.shape == "square":
            s = 0.85 * r
            draw.rectangle((cx - s, cy - s, cx + s, cy + s), **style)
        elif obj.shape == "triangle":
            draw.polygon(_polygon(cx, cy + 0.15 * r, [1.15 * r] * 3, -math.pi / 2), **style)
        else:
            draw.polygon(_polygon(cx, cy + 0.05 * r, [1.1 * r, 0.5 * r] * 5, -math.pi / 2), **style)
    return image.resize((image_size, image_size), Image.Resampling.BOX)

