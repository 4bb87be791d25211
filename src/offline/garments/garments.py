"""Garments: one piece of clothing per image, described by five attributes.

`length` is the sleeve length of shirts and jackets and the hem length of dresses, skirts
and trousers; it keeps its value when the category changes. The trim colour is that of
the collar and cuffs, the waistband or the belt. A pattern is drawn in a shade of the main
colour, so it shows whatever the trim.

The atomic differences between two garments are the attributes whose values differ (a
change's `kind` is the attribute, its `subject` None: there is one object). Salience, most
salient first, is the order of ATTRIBUTES: the kind of garment, its main colour, its
pattern, its length, its trim colour.
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
SLEEVED = ("shirt", "jacket")  # their length is the sleeves'; the others' the hem's
ATTRIBUTES = ("category", "colour", "pattern", "length", "trim")  # salience order
VALUES: dict[str, tuple[str, ...]] = {
    "category": CATEGORIES,
    "colour": COLOURS,
    "pattern": PATTERNS,
    "length": LENGTHS,
    "trim": COLOURS,
}
GARMENTS_FILE = "garments.json"  # beside the CIRR files: every image's garment


@dataclass(frozen=True)
class Garment:
    category: str
    colour: str
    pattern: str
    length: str
    trim: str

    def __post_init__(self) -> None:
        for attribute in ATTRIBUTES:
            if getattr(self, attribute) not in VALUES[attribute]:
                raise ValueError(f"bad {attribute} {getattr(self, attribute)!r}")


def length_part(category: str) -> str:
    """What `length` measures on this kind of garment: "sleeves" or "hem"."""
    return "sleeves" if category in SLEEVED else "hem"


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
