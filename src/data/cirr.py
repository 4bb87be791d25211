"""Reader for the CIRR annotations (rc2 release), in every layout people unpack it in.

The split files map an image name to a path such as "./train/34/x.png", relative to the
image root; the layouts differ in where the annotations and that image root sit
(docs/notes.md, "CIRR"):

- release: as the CIRR README ships it, `cirr/captions`, `cirr/image_splits` and
  `cirr/img_raw/{train,dev,test1}` (the dataset path is `cirr/` or the folder above it);
- CLIP4Cir: annotations under `cirr/`, images at the dataset root beside it;
- flat: `captions/`, `image_splits/` and the image folders all at the dataset root.

The reader takes the first layout whose annotation file exists and whose image root holds
the split's images, logs which one it used, and lists every place it looked when none
fits.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from functools import partial
from pathlib import Path

from src.data.records import Split, Triplet
from src.data.validation import (
    check_entries,
    check_image_files,
    check_items,
    check_known_image,
    entry_label,
    inside_root,
    read_json,
    require,
)
from src.errors import AnnotationError

logger = logging.getLogger(__name__)

CIRR_SPLITS = ("train", "val", "test1")
UNLABELLED_SPLITS = ("test1",)
PROBE_ENTRIES = 8  # split entries tried to tell which image root holds the images


@dataclass(frozen=True)
class CirrLayout:
    name: str
    captions: Path
    image_split: Path
    image_root: Path
    relative_paths: dict[str, str]  # the image split file's content: name -> path


def _annotation_dirs(root: Path) -> list[Path]:
    return [root, root / "cirr"]


def _image_roots(root: Path, annotations: Path) -> list[tuple[str, Path]]:
    candidates = [
        ("release", annotations / "img_raw"),
        ("release", root / "img_raw"),
        ("CLIP4Cir" if annotations != root else "flat", root),
    ]
    seen, unique = set(), []
    for name, path in candidates:
        if path not in seen:
            seen.add(path)
            unique.append((name, path))
    return unique


def find_layout(root: Path, split: str) -> CirrLayout:
    """The layout of a CIRR copy at `root` for `split`, or an error listing every place tried."""
    tried, found_annotations = [], None
    for folder in _annotation_dirs(root):
        captions = folder / "captions" / f"cap.rc2.{split}.json"
        image_split = folder / "image_splits" / f"split.rc2.{split}.json"
        tried.append(f"{captions}")
        if not captions.is_file():
            continue
        paths = read_json(image_split, dict, f"CIRR ({folder})")
        check_entries(paths, str, image_split)
        probes = [rel for rel in paths.values() if not os.path.isabs(rel)][:PROBE_ENTRIES]
        if not probes:  # nothing to tell the layouts apart by: the first one
            name, image_root = _image_roots(root, folder)[0]
            return CirrLayout(name, captions, image_split, image_root, paths)
        found_annotations = found_annotations or (image_split, probes[:1])
        hits = []
        for name, image_root in _image_roots(root, folder):
            tried.append(f"{image_root}/ (images of {image_split.name}, {name} layout)")
            found = sum(os.path.isfile(image_root / rel) for rel in probes)
            hits.append((found, name, image_root))
        found, name, image_root = max(hits, key=lambda hit: hit[0])  # the first of equals
        if found:
            return CirrLayout(name, captions, image_split, image_root, paths)
    listing = "\n  ".join(tried)
    if found_annotations is not None:
        image_split, example = found_annotations
        raise AnnotationError(
            f"CIRR {split}: no image folder under {root} holds the images that {image_split} "
            f"names (e.g. {example[0]!r}); looked in:\n  {listing}"
        )
    raise AnnotationError(
        f"no CIRR {split} split found under {root}; looked for:\n  {listing}\n"
        "Expected the release layout (cirr/captions, cirr/image_splits, cirr/img_raw/), the "
        "CLIP4Cir layout (cirr/ beside train/ dev/ test1/) or the flat one (captions/, "
        "image_splits/ and the image folders at the root)"
    )


def load_cirr_split(
    root: str | Path,
    split: str,
    check_files: bool = True,
    allow_external_images: bool = False,
) -> Split:
    """Read one CIRR split; `check_files` also checks that every image file exists.

    An image path that leaves the dataset root (after resolving `..` and symlinks) is an
    error unless `allow_external_images`.
    """
    if split not in CIRR_SPLITS:
        raise AnnotationError(f"unknown CIRR split {split!r}; expected one of {CIRR_SPLITS}")
    root = Path(root).absolute()
    layout = find_layout(root, split)
    logger.info(
        "CIRR %s: %s layout (annotations %s, images under %s)",
        split,
        layout.name,
        layout.captions.parent.parent,
        layout.image_root,
    )
    images = read_image_split(layout, root, allow_external_images)
    triplets = read_captions(layout.captions, images, split not in UNLABELLED_SPLITS)
    result = Split(name=split, triplets=triplets, images=images)
    if check_files:
        check_image_files(result, f"CIRR {split} split ({layout.image_split})")
    return result


def read_image_split(layout: CirrLayout, root: Path, allow_external: bool) -> dict[str, str]:
    """Map image name -> absolute path from a `split.rc2.*.json` file."""
    images = {}
    for name, rel in layout.relative_paths.items():
        path = os.path.normpath(layout.image_root / rel)
        if not allow_external:
            inside_root(path, root, layout.image_split, f"entry {name!r}")
        images[name] = path
    return images


def read_captions(path: Path, images: dict[str, str], labelled: bool) -> list[Triplet]:
    data = read_json(path, list, "CIRR")
    check_entries(data, dict, path)
    first_index: dict[str, int] = {}
    triplets = []
    for index, entry in enumerate(data):
        triplet = parse_entry(entry, path, index, labelled)
        if triplet.pairid in first_index:
            raise AnnotationError(
                f"{path}: duplicate pairid {triplet.pairid} in entries "
                f"{first_index[triplet.pairid]} and {index}"
            )
        first_index[triplet.pairid] = index
        check_triplet_images(triplet, images, path)
        triplets.append(triplet)
    return triplets


def parse_entry(entry: dict, path: Path, index: int, labelled: bool) -> Triplet:
    """Turn one caption entry into a Triplet; labels are required on labelled splits."""
    pairid = require(entry, "pairid", int, path, index)
    field = partial(require, entry, path=path, index=index, pairid=pairid)
    where = f"{path}: {entry_label(index, pairid)}"
    img_set = field("img_set", dict)
    members = require(img_set, "members", list, path, index, pairid, prefix="img_set.")
    check_items(members, str, where, "img_set.members")
    target, target_soft = None, {}
    if labelled or "target_hard" in entry:
        target = field("target_hard", str)
    if labelled or "target_soft" in entry:
        target_soft = field("target_soft", dict)
        check_items(target_soft, (int, float), where, "target_soft")
    return Triplet(
        pairid=str(pairid),
        reference=field("reference", str),
        caption=field("caption", str, nonblank=True),
        target=target,
        target_soft={name: float(score) for name, score in target_soft.items()},
        group=list(members),
        source="original",
    )


def check_triplet_images(triplet: Triplet, images: dict[str, str], path: Path) -> None:
    check = partial(check_known_image, images=images, path=path, pairid=triplet.pairid)
    check(triplet.reference, field="reference")
    if triplet.target is not None:
        check(triplet.target, field="target_hard")
    for member in triplet.group or []:
        check(member, field="img_set.members")
