"""Reader for the CIRR annotations (rc2 release).

Annotations sit at `root/captions/cap.rc2.{split}.json` and
`root/image_splits/split.rc2.{split}.json`, or under `root/cirr/` as in the official
release; image paths in the split file are relative to `root` in both layouts.
"""

from __future__ import annotations

import os
from functools import partial
from pathlib import Path

from src.data.records import Split, Triplet
from src.data.validation import (
    check_entries,
    check_image_files,
    check_items,
    check_known_image,
    entry_label,
    find_layout,
    read_json,
    require,
)
from src.errors import AnnotationError

CIRR_SPLITS = ("train", "val", "test1")
UNLABELLED_SPLITS = ("test1",)


def load_cirr_split(root: str | Path, split: str, check_files: bool = True) -> Split:
    """Read one CIRR split; `check_files` also checks that every image file exists."""
    if split not in CIRR_SPLITS:
        raise ValueError(f"unknown CIRR split {split!r}; expected one of {CIRR_SPLITS}")
    root = Path(root).absolute()
    layout, captions_path = find_layout(
        {
            "CIRR root/captions": root / "captions" / f"cap.rc2.{split}.json",
            "CIRR release root/cirr/captions": root / "cirr" / "captions" / f"cap.rc2.{split}.json",
        },
        f"CIRR {split} captions",
    )
    split_path = captions_path.parent.parent / "image_splits" / f"split.rc2.{split}.json"
    images = read_image_split(split_path, root, layout)
    triplets = read_captions(captions_path, layout, images, split not in UNLABELLED_SPLITS)
    result = Split(name=split, triplets=triplets, images=images)
    if check_files:
        check_image_files(result, f"CIRR {split} split ({split_path})")
    return result


def read_image_split(path: Path, root: Path, layout: str) -> dict[str, str]:
    """Map image name -> absolute path from a `split.rc2.*.json` file."""
    data = read_json(path, dict, layout)
    check_entries(data, str, path)
    return {name: os.path.normpath(root / rel) for name, rel in data.items()}


def read_captions(path: Path, layout: str, images: dict[str, str], labelled: bool) -> list[Triplet]:
    data = read_json(path, list, layout)
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
        caption=field("caption", str),
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
