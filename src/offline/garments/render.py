"""Rendering a garment as an anti-aliased PNG image: PIL polygons on a plain backdrop.

Shapes are drawn in unit coordinates (0-1 across the image), four times larger than the
output and box-filtered down. The body is filled with the main colour and its pattern
(in a shade of that colour), then outlined; the trim and the neck opening are drawn over it
in order. The neckline (garments.py) is drawn at the garment's top edge: on shirts, jackets
and dresses a neck opening cut out of the body (the backdrop shows through) and edged in the
trim colour: a round scoop, a deep v, or a small scoop under two pointed collar flaps; on
skirts and trousers the waistband: straight, v-shaped (dipping to a point at the front), or
a paperbag waist (a zigzag frill in the main colour standing above the band).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from PIL import Image, ImageDraw

from src.offline.garments.garments import Garment

Polygon = list[tuple[float, float]]
Layer = tuple[str, Polygon]  # ("trim" or "opening", polygon): filled with the trim colour
# or cut out of the garment (the backdrop shows through), then outlined

_RGB = {
    "black": (28, 28, 30),
    "white": (250, 250, 248),
    "grey": (140, 140, 140),
    "red": (200, 30, 45),
    "pink": (240, 140, 180),
    "navy": (25, 40, 100),
    "teal": (0, 130, 128),
    "beige": (220, 200, 160),
    "brown": (115, 70, 35),
    "olive": (115, 125, 40),
}
_BACKGROUND = (176, 196, 214)
_OUTLINE = (35, 30, 30)
_SUPERSAMPLE = 4
_LENGTH_INDEX = {"short": 0, "medium": 1, "long": 2}


def _sleeves(length: str, shoulder_y: float, body: tuple[float, float]) -> list[Polygon]:
    """Two sleeves hanging from the shoulders, ending at the cuff (short, elbow, wrist)."""
    reach = (0.16, 0.3, 0.46)[_LENGTH_INDEX[length]]
    left, right = body
    sleeves = []
    for x, direction in ((left, -1), (right, 1)):
        sleeves.append(
            [
                (x, shoulder_y),
                (x + direction * 0.5 * reach, shoulder_y + 0.85 * reach),
                (x + direction * (0.5 * reach - 0.1), shoulder_y + 0.85 * reach + 0.07),
                (x, shoulder_y + 0.16),
            ]
        )
    return sleeves


def _cuffs(sleeves: Sequence[Polygon]) -> list[Polygon]:
    """A band across each sleeve's end."""
    cuffs = []
    for _, a, b, _ in sleeves:
        inward = (0.035 if a[0] < 0.5 else -0.035, -0.045)
        cuffs.append(
            [a, b, (b[0] + inward[0], b[1] + inward[1]), (a[0] + inward[0], a[1] + inward[1])]
        )
    return cuffs


def _hem_y(length: str, short: float, long: float) -> float:
    return short + (long - short) * _LENGTH_INDEX[length] / 2


def _half_ellipse(top: float, rx: float, ry: float, steps: int = 12) -> Polygon:
    """The lower half of an ellipse centred on (0.5, top)."""
    return [
        (0.5 + rx * math.cos(math.pi * k / steps), top + ry * math.sin(math.pi * k / steps))
        for k in range(steps + 1)
    ]


def _v(top: float, half_width: float, depth: float) -> Polygon:
    return [(0.5 - half_width, top), (0.5 + half_width, top), (0.5, top + depth)]


def _neck(neckline: str, top: float, half_width: float) -> list[Layer]:
    """The neck opening cut into a top edge at `top`, edged in the trim colour: a round
    scoop, a deep v, or a small scoop under two pointed collar flaps."""
    edge = 0.028
    if neckline == "round":
        return [
            ("trim", _half_ellipse(top, half_width + edge, 0.07 + edge)),
            ("opening", _half_ellipse(top, half_width, 0.07)),
        ]
    if neckline == "v-neck":
        return [
            ("trim", _v(top, half_width + edge, 0.17 + 1.6 * edge)),
            ("opening", _v(top, half_width, 0.17)),
        ]
    flaps = [
        [
            (0.5 + side * (half_width + 0.025), top - 0.035),
            (0.5, top + 0.03),
            (0.5 + side * 0.035, top + 0.13),
            (0.5 + side * (half_width + 0.04), top + 0.05),
        ]
        for side in (-1, 1)
    ]
    return [("opening", _half_ellipse(top, half_width, 0.05)), *(("trim", f) for f in flaps)]


def _waistband(neckline: str) -> tuple[list[Polygon], list[Layer]]:
    """(extra body polygons, layers) of the waistband of a skirt or trousers: straight
    ("round"), dipping to a point at the front ("v-neck"), or gathered under a frill that
    stands above it ("collared": a paperbag waist)."""
    if neckline == "v-neck":
        band = [(0.33, 0.16), (0.5, 0.22), (0.67, 0.16), (0.67, 0.23), (0.5, 0.3), (0.33, 0.23)]
        return [], [("trim", band)]
    band = [(0.33, 0.16), (0.67, 0.16), (0.67, 0.23), (0.33, 0.23)]
    if neckline == "round":
        return [], [("trim", band)]
    frill = [(0.33, 0.17), (0.31, 0.08)]
    for k in range(1, 8):  # a zigzag top edge, seven points
        frill.append((0.31 + 0.38 * k / 8, 0.12 if k % 2 else 0.08))
    frill += [(0.69, 0.08), (0.67, 0.17)]
    return [frill], [("trim", band)]


def _shapes(garment: Garment) -> tuple[list[Polygon], list[Layer]]:
    """(body polygons, layers drawn over the body in order) of the garment."""
    kind, length = garment.category, garment.length
    if kind in ("shirt", "jacket"):
        bottom = 0.74 if kind == "shirt" else 0.86
        body = [(0.33, 0.2), (0.67, 0.2), (0.68, bottom), (0.32, bottom)]
        sleeves = _sleeves(length, 0.2, (0.33, 0.67))
        if kind == "shirt":
            edges = _cuffs(sleeves)
        else:  # the front edges meeting down the middle
            edges = [[(0.485, 0.25), (0.515, 0.25), (0.515, bottom), (0.485, bottom)]]
        layers = [*(("trim", e) for e in edges), *_neck(garment.neckline, 0.2, 0.085)]
        return [body, *sleeves], layers
    if kind == "dress":
        hem = _hem_y(length, 0.6, 0.92)
        spread = 0.12 + 0.1 * _LENGTH_INDEX[length]
        bodice = [(0.38, 0.14), (0.62, 0.14), (0.6, 0.42), (0.4, 0.42)]
        skirt = [(0.4, 0.42), (0.6, 0.42), (0.5 + spread + 0.06, hem), (0.5 - spread - 0.06, hem)]
        straps = [
            [(0.38, 0.14), (0.31, 0.24), (0.38, 0.26)],
            [(0.62, 0.14), (0.69, 0.24), (0.62, 0.26)],
        ]
        belt = [(0.395, 0.39), (0.605, 0.39), (0.605, 0.45), (0.395, 0.45)]
        layers = [("trim", belt), *_neck(garment.neckline, 0.14, 0.075)]
        return [bodice, skirt, *straps], layers
    frill, layers = _waistband(garment.neckline)
    if kind == "skirt":
        hem = _hem_y(length, 0.48, 0.88)
        widen = 0.08 + 0.05 * _LENGTH_INDEX[length]
        body = [[(0.33, 0.23), (0.67, 0.23), (0.67 + widen, hem), (0.33 - widen, hem)]]
    else:
        hem = _hem_y(length, 0.46, 0.9)
        body = [
            [(0.33, 0.23), (0.5, 0.23), (0.5, 0.36), (0.48, hem), (0.3, hem)],
            [(0.5, 0.23), (0.67, 0.23), (0.7, hem), (0.52, hem), (0.5, 0.36)],
        ]
    return [*frill, *body], layers


def _shade(rgb: tuple[int, int, int]) -> tuple[int, int, int]:
    """A darker shade of a light colour, a lighter one of a dark colour."""
    if sum(rgb) > 3 * 110:
        return tuple(round(0.55 * c) for c in rgb)
    return tuple(round(c + 0.5 * (255 - c)) for c in rgb)


def _pattern(side: int, pattern: str, colour: tuple, ink: tuple) -> Image.Image:
    fill = Image.new("RGB", (side, side), colour)
    draw = ImageDraw.Draw(fill)
    step = side / 12
    if pattern == "striped":
        for k in range(0, 12, 2):
            draw.rectangle((0, k * step, side, (k + 1) * step), fill=ink)
    elif pattern == "checked":
        for row in range(12):
            for col in range(row % 2, 12, 2):
                draw.rectangle(
                    (col * step, row * step, (col + 1) * step, (row + 1) * step), fill=ink
                )
    elif pattern == "dotted":
        radius = step / 3.2
        for row in range(12):
            for col in range(12):
                x, y = (col + 0.5 * (1 + row % 2)) * step, (row + 0.5) * step
                draw.ellipse((x - radius, y - radius, x + radius, y + radius), fill=ink)
    return fill


def render_garment(garment: Garment, image_size: int = 84) -> Image.Image:
    side = image_size * _SUPERSAMPLE
    body, layers = _shapes(garment)

    def scaled(polygon: Polygon) -> Polygon:
        return [(x * side, y * side) for x, y in polygon]

    mask = Image.new("L", (side, side), 0)
    mask_draw = ImageDraw.Draw(mask)
    for polygon in body:
        mask_draw.polygon(scaled(polygon), fill=255)
    colour = _RGB[garment.colour]
    image = Image.new("RGB", (side, side), _BACKGROUND)
    image.paste(_pattern(side, garment.pattern, colour, _shade(colour)), mask=mask)
    draw = ImageDraw.Draw(image)
    width = max(1, round(side / 110))
    for polygon in body:
        draw.polygon(scaled(polygon), outline=_OUTLINE, width=width)
    fills = {"trim": _RGB[garment.trim], "opening": _BACKGROUND}
    for fill, polygon in layers:
        draw.polygon(scaled(polygon), fill=fills[fill], outline=_OUTLINE, width=width)
    return image.resize((image_size, image_size), Image.Resampling.BOX)
