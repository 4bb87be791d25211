"""The caption grammar of the garment benchmark: FashionIQ-like relative captions.

A caption is one clause per changed attribute, joined "A and B" / "A, B and also C", in
any order: "is a dress instead of a skirt", "is red and has stripes", "has longer sleeves
and has white trim". Every clause is a fixed string of a finite table (`CLAUSES`), so a
caption parses by splitting it at the joins and looking each clause up. Clauses are read
against the reference: "instead of a skirt" must name the reference's category,
"longer" means one length longer than the reference's, and a length clause speaks of
sleeves or of the hem as the garment it describes (the target) has them.

`describe_difference` is the scene oracle of this domain: the exact caption between two
garments one or two attributes apart (the canonical one, or with `rng` a random phrasing).
"""

from __future__ import annotations

import random
import re
from collections.abc import Sequence
from dataclasses import dataclass

from src.offline.domain import Change
from src.offline.garments.garments import (
    CATEGORIES,
    COLOURS,
    LENGTHS,
    Garment,
    apply_changes,
    differences,
    length_part,
)

NOUNS = {c: f"a {c}" for c in CATEGORIES} | {"trousers": "a pair of trousers"}
# The first phrasing of each attribute is the canonical one.
CATEGORY_TEMPLATES = (
    "is {noun} instead of {old}",
    "is {noun}",
    "is {noun} rather than {old}",
    "should be {noun}",
)
COLOUR_TEMPLATES = (
    "is {colour}",
    "is {colour} instead of {old}",
    "comes in {colour}",
    "is in {colour}",
)
TRIM_TEMPLATES = ("has {colour} trim", "is trimmed in {colour}", "has {colour} edging")
PATTERN_PHRASES = {
    "plain": ("is plain", "has no pattern"),
    "striped": ("has stripes", "is striped"),
    "dotted": ("has polka dots", "is dotted"),
    "checked": ("has checks", "is checked"),
}
LENGTH_WORDS = {
    "sleeves": {"short": "short", "medium": "elbow-length", "long": "long"},
    "hem": {"short": "short", "medium": "knee-length", "long": "long"},
}
LENGTH_TEMPLATES = {"sleeves": ("has {word} sleeves",), "hem": ("is {word}", "is cut {word}")}
# One length step from the reference's length.
RELATIVE_LENGTH = {
    ("sleeves", 1): "has longer sleeves",
    ("sleeves", -1): "has shorter sleeves",
    ("hem", 1): "is longer",
    ("hem", -1): "is shorter",
}
LAST_JOINS = (" and ", " and also ")  # before the last clause; ", " before the others
_SPLIT = re.compile(r", | and also | and ")


@dataclass(frozen=True)
class _Meaning:
    """What one clause says: `attribute` becomes `value`, or (length) moves `step` lengths
    from the reference's; `old` is the reference value it names, `part` the part (sleeves or
    hem) its garment must measure by."""

    attribute: str
    value: str | None
    old: str | None = None
    part: str | None = None
    step: int = 0


def _clause_table() -> dict[str, _Meaning]:
    table: dict[str, _Meaning] = {}

    def add(text: str, meaning: _Meaning) -> None:
        if text in table:  # every clause must read one way
            raise ValueError(f"clause {text!r} is ambiguous")
        table[text] = meaning

    for template in CATEGORY_TEMPLATES:
        for new in CATEGORIES:
            olds = [o for o in CATEGORIES if o != new] if "{old}" in template else [None]
            for old in olds:
                add(
                    template.format(noun=NOUNS[new], old=NOUNS.get(old)),
                    _Meaning("category", new, old),
                )
    for attribute, templates in (("colour", COLOUR_TEMPLATES), ("trim", TRIM_TEMPLATES)):
        for template in templates:
            for new in COLOURS:
                olds = [o for o in COLOURS if o != new] if "{old}" in template else [None]
                for old in olds:
                    add(template.format(colour=new, old=old), _Meaning(attribute, new, old))
    for pattern, phrases in PATTERN_PHRASES.items():
        for phrase in phrases:
            add(phrase, _Meaning("pattern", pattern))
    for part, templates in LENGTH_TEMPLATES.items():
        for template in templates:
            for length in LENGTHS:
                add(
                    template.format(word=LENGTH_WORDS[part][length]),
                    _Meaning("length", length, part=part),
                )
    for (part, step), text in RELATIVE_LENGTH.items():
        add(text, _Meaning("length", None, part=part, step=step))
    return table


CLAUSES = _clause_table()


def _value(meaning: _Meaning, reference: Garment) -> str:
    if not meaning.step:
        return meaning.value
    index = LENGTHS.index(reference.length) + meaning.step
    if not 0 <= index < len(LENGTHS):
        raise ValueError(f"no length {meaning.step:+d} from {reference.length!r}")
    return LENGTHS[index]


def _fits(meaning: _Meaning, reference: Garment, change: Change, target: Garment) -> bool:
    if meaning.attribute != change.kind:
        return False
    if meaning.old not in (None, getattr(reference, change.kind)):
        return False
    if meaning.part not in (None, length_part(target.category)):
        return False
    try:
        return _value(meaning, reference) == change.value
    except ValueError:
        return False


def _join(clauses: Sequence[str], last_join: str) -> str:
    if len(clauses) == 1:
        return clauses[0]
    return ", ".join(clauses[:-1]) + last_join + clauses[-1]


def render_changes(
    reference: Garment, changes: Sequence[Change], rng: random.Random | None = None
) -> str | None:
    """A caption stating exactly these changes: the canonical one (clauses in the order
    given, first phrasings, " and ") without `rng`, else a random order and phrasing; None
    when there are none or they repeat an attribute or change nothing."""
    if not changes:
        return None
    try:
        target = apply_changes(reference, list(changes))
    except ValueError:
        return None
    clauses = []
    for change in changes:
        options = [t for t, m in CLAUSES.items() if _fits(m, reference, change, target)]
        clauses.append(options[0] if rng is None else rng.choice(options))
    if rng is None:
        return _join(clauses, LAST_JOINS[0])
    rng.shuffle(clauses)
    return _join(clauses, rng.choice(LAST_JOINS))


def stated_changes(reference: Garment, text: str) -> list[Change]:
    """The changes a caption states, in its order; ValueError when a clause is not of the
    grammar, names another reference value, repeats an attribute, changes nothing, or
    speaks of sleeves (hem) when the garment it describes has a hem (sleeves)."""
    meanings = []
    for clause in _SPLIT.split(text):
        if clause not in CLAUSES:
            raise ValueError(f"cannot parse {clause!r} in {text!r}")
        meanings.append(CLAUSES[clause])
    changes = []
    for meaning in meanings:
        if meaning.old not in (None, getattr(reference, meaning.attribute)):
            raise ValueError(f"{text!r}: the reference's {meaning.attribute} is not {meaning.old}")
        changes.append(Change(meaning.attribute, None, _value(meaning, reference)))
    target = apply_changes(reference, changes)
    if any(m.part not in (None, length_part(target.category)) for m in meanings):
        raise ValueError(f"{text!r}: a {target.category} has no such length")
    return changes


def apply_caption(reference: Garment, text: str) -> Garment:
    return apply_changes(reference, stated_changes(reference, text))


def describe_difference(
    reference: Garment, target: Garment, rng: random.Random | None = None
) -> str | None:
    """The exact caption from reference to target, or None when they are equal or differ
    in more than two attributes."""
    changes = differences(reference, target)
    return render_changes(reference, changes, rng) if 1 <= len(changes) <= 2 else None


def corpus_sentences() -> list[str]:
    """Every clause of the grammar, and each join in a sentence (tokenizer training)."""
    first_of_each = list({m.attribute: t for t, m in reversed(CLAUSES.items())}.values())
    return [*CLAUSES, *(_join(first_of_each, join) for join in LAST_JOINS)]
