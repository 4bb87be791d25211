"""Image loading with errors that name the file."""

from __future__ import annotations

from pathlib import Path

from PIL import Image, UnidentifiedImageError


class ImageLoadError(OSError):
    """An image file that cannot be read; the message names it."""


def load_image(path: str | Path) -> Image.Image:
    """Open an image as RGB, failing with the file's path on a missing or corrupt file."""
    try:
        with Image.open(path) as image:
            return image.convert("RGB")
    except (FileNotFoundError, UnidentifiedImageError, OSError) as error:
        raise ImageLoadError(f"cannot read image {path}: {error}") from error
