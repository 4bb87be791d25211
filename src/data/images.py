"""Image loading, and the check of every image file before any work.

`load_image` turns any image PIL reads into RGB: 16-bit grayscale is scaled to 8 bits,
an image with transparency (RGBA, LA, or a palette with a transparent colour) is
composited on white, CMYK, palette and grayscale images are converted.

`check_images` opens every image a job will read before round 0 (in threads, with a
progress bar): a file that cannot be read, is truncated, exceeds the pixel limit or has an
aspect ratio above 200 (which the Qwen2-VL processor refuses) is listed in one error, so
a bad file stops the run in seconds instead of in the middle of a round. PNG files are
verified chunk by chunk (CRCs, without decompressing), other formats are decoded at a
reduced size (JPEG draft mode), which still reads the whole file. The result is cached
per file (size and mtime), so the second run costs a `stat` per image.
"""

from __future__ import annotations

import contextlib
import json
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError
from tqdm.auto import tqdm

from src.errors import AnnotationError
from src.experiment_io import write_json_atomic

MAX_ASPECT_RATIO = 200
BAD_SHOWN = 5
_SIXTEEN_BIT = ("I;16", "I;16B", "I;16L", "I;16N", "I")


class ImageLoadError(AnnotationError):
    """An image file that cannot be read; the message names it."""


def to_rgb(image: Image.Image) -> Image.Image:
    """RGB of any PIL image (see the module docstring for the conversions)."""
    if image.mode in _SIXTEEN_BIT:
        values = np.asarray(image, dtype=np.int64)
        scale = 256 if image.mode != "I" or values.max(initial=0) > 255 else 1
        gray = np.clip(values // scale, 0, 255).astype(np.uint8)
        return Image.fromarray(gray, "L").convert("RGB")
    if image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = image.convert("RGBA")
        canvas = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(canvas, rgba).convert("RGB")
    return image.convert("RGB")


def load_image(path: str | Path) -> Image.Image:
    """Open an image as RGB, failing with the file's path on a missing or corrupt file."""
    try:
        with Image.open(path) as image:
            return to_rgb(image)
    except (FileNotFoundError, UnidentifiedImageError, OSError, Image.DecompressionBombError) as error:
        raise ImageLoadError(f"cannot read image {path}: {error}") from error


def _inspect(path: str, max_pixels: int) -> tuple[int, int]:
    """(width, height) of a readable image within the limits; raises ValueError saying why not."""
    try:
        with Image.open(path) as image:
            width, height = image.size
            if width * height > max_pixels:
                raise ValueError(
                    f"{width} x {height} = {width * height:,} pixels, above the limit of "
                    f"{max_pixels:,} (--max_image_pixels)"
                )
            if max(width, height) > MAX_ASPECT_RATIO * min(width, height):
                raise ValueError(
                    f"{width} x {height}: aspect ratio above {MAX_ASPECT_RATIO}, which the "
                    "Qwen2-VL processor refuses"
                )
            if image.format == "PNG":
                image.verify()
            else:
                image.draft("RGB", (max(1, width // 8), max(1, height // 8)))
                image.load()
            return width, height
    except ValueError:
        raise
    except (UnidentifiedImageError, OSError, SyntaxError, Image.DecompressionBombError) as error:
        raise ValueError(f"cannot be read ({type(error).__name__}: {error})") from None


def _stamp(path: str) -> list[int]:
    info = os.stat(path)
    return [info.st_size, info.st_mtime_ns]


def check_images(
    paths: list[str],
    cache_file: str | Path | None = None,
    max_pixels: int = 50_000_000,
    workers: int | None = None,
    description: str = "checking images",
) -> dict[str, tuple[int, int]]:
    """{path: (width, height)} of every image; one AnnotationError lists the bad ones.

    Files whose size and mtime match `cache_file`'s record of an earlier check are not
    opened again; good results are written back to it.
    """
    cache: dict[str, list[int]] = {}
    if cache_file is not None and Path(cache_file).is_file():
        with contextlib.suppress(OSError, ValueError):
            loaded = json.loads(Path(cache_file).read_text())
            cache = loaded if isinstance(loaded, dict) and loaded.get("max_pixels") == max_pixels else {}
    known = cache.get("images", {})
    sizes, pending, bad = {}, [], []
    for path in dict.fromkeys(paths):
        try:
            stamp = _stamp(path)
        except OSError as error:
            bad.append((path, f"cannot be read ({error.strerror})"))
            continue
        record = known.get(path)
        if record is not None and record[:2] == stamp:
            sizes[path] = (record[2], record[3])
        else:
            pending.append((path, stamp))

    def inspect(item: tuple[str, list[int]]) -> tuple[str, list[int], tuple[int, int] | str]:
        path, stamp = item
        try:
            return path, stamp, _inspect(path, max_pixels)
        except ValueError as error:
            return path, stamp, str(error)

    if pending:
        threads = workers or min(16, os.cpu_count() or 1)
        with ThreadPoolExecutor(threads) as pool:
            results = tqdm(
                pool.map(inspect, pending), total=len(pending), desc=description, unit="image"
            )
            for path, stamp, outcome in results:
                if isinstance(outcome, str):
                    bad.append((path, outcome))
                else:
                    sizes[path] = outcome
                    known[path] = [*stamp, *outcome]
        if cache_file is not None:
            with contextlib.suppress(OSError):  # only a memory: a failed write costs a re-check
                write_json_atomic(cache_file, {"max_pixels": max_pixels, "images": known}, None)
    if bad:
        shown = "\n  ".join(f"{path}: {reason}" for path, reason in bad[:BAD_SHOWN])
        raise AnnotationError(
            f"{len(bad)} of {len(set(paths))} image files cannot be used; first "
            f"{min(len(bad), BAD_SHOWN)}:\n  {shown}\nReplace or remove them (and their "
            "entries) before training"
        )
    return sizes
