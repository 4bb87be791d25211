"""Reader for the FashionIQ annotations.

Layout as released: `captions/cap.{cat}.{split}.json`, `image_splits/split.{cat}.{split}.json`
(the category's gallery) and `images/<id>.jpg` or `.png` (both occur in the copies people
use), at the dataset root or under its `fashionIQ_dataset/` folder (CLIP4Cir's name).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from functools import partial
from pathlib import Path

from src.data.records import Split, Triplet
from src.data.validation import (
    check_entries,
    check_image_files,
    check_items,
    entry_label,
    inside_root,
    read_json,
    require,
)
from src.errors import AnnotationError

FASHIONIQ_SPLITS = ("train", "val", "test")
FASHIONIQ_CATEGORIES = ("dress", "shirt", "toptee")
UNLABELLED_SPLITS = ("test",)
IMAGE_SUFFIXES = (".png", ".jpg")  # in order of preference when both exist
LAYOUT = "FashionIQ"
DATASET_FOLDERS = ("", "fashionIQ_dataset")  # the root itself, or CLIP4Cir's folder in it

logger = logging.getLogger(__name__)


def join_fashioniq_captions(captions: list[str]) -> str:
    """Join a FashionIQ entry's two relative captions into one modification text.

    Uses the deterministic convention of CLIP4Cir's validation (Baldrati et al.,
    `src/validate.py`, `compute_fiq_val_metrics`), which later FashionIQ work follows:
    `"{c0.strip('.?, ').capitalize()} and {c1.strip('.?, ')}"`.
    """
    first, second = (text.strip(".?, ").strip() for text in captions)
    if not (first and second):  # one of the two is empty: the other alone (a quirk of a few entries)
        return (first or second).capitalize()
    return f"{first.capitalize()} and {second}"


def find_dataset_folder(root: Path, split: str, category: str) -> Path:
    """The folder that holds captions/, image_splits/ and images/, or an error listing the
    places tried."""
    tried = []
    for folder in DATASET_FOLDERS:
        base = root / folder if folder else root
        captions = base / "captions" / f"cap.{category}.{split}.json"
        tried.append(str(captions))
        if captions.is_file():
            return base
    listing = "\n  ".join(tried)
    raise AnnotationError(
        f"no FashionIQ {split} split found under {root}; looked for:\n  {listing}\n"
        "Expected captions/cap.{dress,shirt,toptee}.{split}.json, "
        "image_splits/split.{category}.{split}.json and images/ at the root or in "
        "fashionIQ_dataset/"
    )


def load_fashioniq_split(
    root: str | Path,
    split: str,
    categories: Sequence[str] = FASHIONIQ_CATEGORIES,
    check_files: bool = True,
    allow_external_images: bool = False,
) -> Split:
    """Read one FashionIQ split over the given categories.

    Each category's gallery is its image split list; `Split.images` is the union of the
    galleries plus any reference/target outside them that exists under `images/`. An
    image file that leaves the dataset root (a symlink) is an error unless
    `allow_external_images`.
    """
    if split not in FASHIONIQ_SPLITS:
        raise AnnotationError(
            f"unknown FashionIQ split {split!r}; expected one of {FASHIONIQ_SPLITS}"
        )
    unknown = [c for c in categories if c not in FASHIONIQ_CATEGORIES]
    if unknown:
        raise AnnotationError(
            f"unknown FashionIQ categories {unknown}; expected {FASHIONIQ_CATEGORIES}"
        )
    dataset_root = Path(root).absolute()
    root = find_dataset_folder(dataset_root, split, categories[0])
    on_disk = list_image_files(root / "images")
    logger.info(
        "FashionIQ %s: annotations and images/ under %s (%d image files)", split, root, len(on_disk)
    )
    if not allow_external_images:
        for path in on_disk.values():
            inside_root(path, dataset_root, root / "images", f"image file {Path(path).name}")
    galleries = {cat: read_gallery(root, cat, split) for cat in categories}
    images = {
        name: on_disk.get(name, str(root / "images" / f"{name}{IMAGE_SUFFIXES[0]}"))
        for gallery in galleries.values()
        for name in gallery
    }
    triplets = []
    for cat in categories:
        triplets += read_captions(root, cat, split, images, on_disk)
    result = Split(name=split, triplets=triplets, images=images, categories=galleries)
    if check_files:
        check_image_files(result, f"FashionIQ {split} split ({root})")
    return result


def list_image_files(directory: Path) -> dict[str, str]:
    """Map image id -> path for the image files in `directory` (png preferred over jpg)."""
    if not directory.is_dir():
        return {}
    found: dict[str, str] = {}
    with os.scandir(directory) as entries:
        for entry in entries:
            stem, suffix = os.path.splitext(entry.name)
            if suffix in IMAGE_SUFFIXES and (stem not in found or suffix == IMAGE_SUFFIXES[0]):
                found[stem] = entry.path
    return found


def read_gallery(root: Path, category: str, split: str) -> list[str]:
    path = root / "image_splits" / f"split.{category}.{split}.json"
    data = read_json(path, list, LAYOUT)
    check_entries(data, str, path)
    return data


def read_captions(
    root: Path, category: str, split: str, images: dict[str, str], on_disk: dict[str, str]
) -> list[Triplet]:
    """Read a category's caption file, adding out-of-gallery images found on disk to `images`."""
    path = root / "captions" / f"cap.{category}.{split}.json"
    data = read_json(path, list, LAYOUT)
    check_entries(data, dict, path)
    triplets = []
    for index, entry in enumerate(data):
        triplet = parse_entry(entry, path, index, category, split not in UNLABELLED_SPLITS)
        for field, name in (("candidate", triplet.reference), ("target", triplet.target)):
            if name is not None:
                resolve_image(name, images, on_disk, path, triplet.pairid, field)
        triplets.append(triplet)
    return triplets


def parse_entry(entry: dict, path: Path, index: int, category: str, labelled: bool) -> Triplet:
    pairid = f"{category}_{index}"
    field = partial(require, entry, path=path, index=index, pairid=pairid)
    captions = field("captions", list)
    where = f"{path}: {entry_label(index, pairid)}"
    check_items(captions, str, where, "captions")
    if len(captions) != 2:
        raise AnnotationError(f"{where}: key 'captions' should hold 2 texts, got {len(captions)}")
    if not join_fashioniq_captions(captions):
        raise AnnotationError(f"{where}: key 'captions' holds only empty texts")
    return Triplet(
        pairid=pairid,
        reference=field("candidate", str),
        caption=join_fashioniq_captions(captions),
        target=field("target", str) if labelled or "target" in entry else None,
        category=category,
        source="original",
    )


def resolve_image(
    name: str,
    images: dict[str, str],
    on_disk: dict[str, str],
    path: Path,
    pairid: str,
    field: str,
) -> None:
    """Accept an image outside the galleries if its file exists, recording it in `images`."""
    if name in images:
        return
    if name not in on_disk:
        raise AnnotationError(
            f"{path}: pairid {pairid}: {field} '{name}' is not in the split's image list "
            f"and no file images/{name}.png or .jpg exists"
        )
    images[name] = on_disk[name]
