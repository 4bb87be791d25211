"""Garments: one piece of clothing per image, described by six attributes.

`length` is the sleeve length of shirts and jackets and the hem length of dresses, skirts
and trousers; it keeps its value when the category changes.

`neckline` is the shape of the garment's top edge: the neck opening of shirts, jackets and
dresses (a round neck, a v-neck or a collar), the waistband of skirts and trousers, which
have no neck. Its three values are named after the neck; on a skirt or trousers "round" is
a straight waistband, "v-neck" a v-shaped waistband (dipping to a point at the front) and
"collared" a paperbag waist (a frill standing above the band), so that each value changes
the top edge the same way on every kind of garment. Like `length`, it keeps its value when
the category changes, and the captions name it as the garment they describe has it
(captions.py): "has a v-neck" on a shirt, "has a v-shaped waistband" on a skirt.

The trim colour is that of the neck's edging or collar and the cuffs (shirts), the neck's
edging or collar and the front edge (jackets), the neck's edging or collar and the belt
(dresses), or the waistband (skirts, trousers). A pattern is drawn in a shade of the main
colour, so it shows whatever the trim.

The atomic differences between two garments are the attributes whose values differ (a
change's `kind` is the attribute, its `subject` None: there is one object). Salience, most
salient first, is the order of ATTRIBUTES: the kind of garment, its main colour, its
pattern, its length, its neckline, its trim colour. The first three change the whole
garment; the length moves a large part of the silhouette (sleeves or hem); the neckline
reshapes a small region at the top edge; the trim only recolours small parts.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path

from src.offline.domain import Change

CATEGORIES = ("shirt", "dress", "skirt", "trousers", "jacket")
COLOURS = ("black", "white", "grey", "red", "pink", "navy", "teal", "beige", "brown", "olive")
PATTERNS = ("plain", "striped", "dotted", "checked")
LENGTHS = ("short", "medium", "long")
NECKLINES = ("round", "v-neck", "collared")
SLEEVED = ("shirt", "jacket")  # their length is the sleeves'; the others' the hem's
NECKED = ("shirt", "dress", "jacket")  # their neckline is the neck's; the others' the waist's
ATTRIBUTES = ("category", "colour", "pattern", "length", "neckline", "trim")  # salience order
VALUES: dict[str, tuple[str, ...]] = {
    "category": CATEGORIES,
    "colour": COLOURS,
    "pattern": PATTERNS,
    "length": LENGTHS,
    "neckline": NECKLINES,
    "trim": COLOURS,
}
GARMENTS_FILE = "garments.json"  # beside the CIRR files: every image's garment


@dataclass(frozen=True)
class Garment:
    category: str
    colour: str
    pattern: str
    length: str
    neckline: str
    trim: str

    def __post_init__(self) -> None:
        for attribute in ATTRIBUTES:
            if getattr(self, attribute) not in VALUES[attribute]:
                raise ValueError(f"bad {attribute} {getattr(self, attribute)!r}")


def length_part(category: str) -> str:
    """What `length` measures on this kind of garment: "sleeves" or "hem"."""
    return "sleeves" if category in SLEEVED else "hem"


def neckline_part(category: str) -> str:
    """What `neckline` shapes on this kind of garment: "neck" or "waist"."""
    return "neck" if category in NECKED else "waist"


PARTS = {"length": length_part, "neckline": neckline_part}
"""Attribute -> the part of a garment of a category that it measures or shapes."""


def garment_to_json(garment: Garment) -> dict[str, str]:
    return asdict(garment)


def garment_from_json(data: Mapping[str, str]) -> Garment:
    return Garment(**{attribute: data[attribute] for attribute in ATTRIBUTES})


def load_garments(path: str | Path) -> dict[str, Garment]:
    """Image name -> garment, from a benchmark directory or its garments.json."""
    path = Path(path)
    if path.is_dir():
        path = path / GARMENTS_FILE
    with open(path) as f:
        return {name: garment_from_json(data) for name, data in json.load(f).items()}


def apply_changes(garment: Garment, changes: list[Change]) -> Garment:
    """The garment with these attributes set; ValueError on a repeated attribute or a value
    the garment already has."""
    values = {}
    for change in changes:
        if change.kind in values or getattr(garment, change.kind) == change.value:
            raise ValueError(f"{change} is repeated or changes nothing")
        values[change.kind] = change.value
    return Garment(**(asdict(garment) | values))


def differences(reference: Garment, target: Garment) -> list[Change]:
    """Every attribute that differs, as a change to the target's value, most salient first."""
    return [
        Change(attribute, None, getattr(target, attribute))
        for attribute in ATTRIBUTES
        if getattr(reference, attribute) != getattr(target, attribute)
    ]


def alternatives(reference: Garment, change: Change) -> list[Change]:
    """The change with another value (neither the stated one nor the reference's)."""
    current = getattr(reference, change.kind)
    return [
        Change(change.kind, None, v)
        for v in VALUES[change.kind]
        if v not in (change.value, current)
    ]


def possible_changes(reference: Garment) -> list[Change]:
    """Every single change the reference allows: any attribute to any other value."""
    return [
        Change(attribute, None, v)
        for attribute in ATTRIBUTES
        for v in VALUES[attribute]
        if v != getattr(reference, attribute)
    ]
