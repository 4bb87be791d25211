"""The caption grammar of the garment benchmark: FashionIQ-like relative captions.

A caption is one clause per changed attribute, joined "A and B" / "A, B and also C", in
any order: "is a dress instead of a skirt", "is red and has stripes", "has longer sleeves
and has white trim", "has a v-neck instead of a round neck". Every clause is a fixed string
of a finite table (`CLAUSES`), so a caption parses by splitting it at the joins and looking
each clause up. Clauses are read against the reference: "instead of a skirt" must name the
reference's category, "longer" means one length longer than the reference's. A length
clause speaks of sleeves or of the hem, and a neckline clause of the neck ("has a collar")
or of the waist ("has a paperbag waist"), as the garment it describes (the target) has
them; a neckline clause that names the reference's neckline ("has a v-neck instead of a
round neck") also needs the reference to have the same part (garments.py: PARTS).

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
    PARTS,
    Garment,
    apply_changes,
    differences,
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
# The neckline as the part has it: a neck (shirts, dresses, jackets) or a waist (garments.py).
NECKLINE_WORDS = {
    "neck": {"round": "a round neck", "v-neck": "a v-neck", "collared": "a collar"},
    "waist": {
        "round": "a straight waistband",
        "v-neck": "a v-shaped waistband",
        "collared": "a paperbag waist",
    },
}
NECKLINE_TEMPLATES = ("has {new}", "has {new} instead of {old}", "comes with {new}")
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
    from the reference's; `old` is the reference value it names, `part` the part its garment
    must have (length: sleeves or hem; neckline: neck or waist, and the reference too where
    `old` is named)."""

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
    for part, words in NECKLINE_WORDS.items():
        for template in NECKLINE_TEMPLATES:
            for new in words:
                olds = [o for o in words if o != new] if "{old}" in template else [None]
                for old in olds:
                    add(
                        template.format(new=words[new], old=words.get(old)),
                        _Meaning("neckline", new, old, part=part),
                    )
    return table


CLAUSES = _clause_table()


def _value(meaning: _Meaning, reference: Garment) -> str:
    if not meaning.step:
        return meaning.value
    index = LENGTHS.index(reference.length) + meaning.step
    if not 0 <= index < len(LENGTHS):
        raise ValueError(f"no length {meaning.step:+d} from {reference.length!r}")
    return LENGTHS[index]


def _parts_fit(meaning: _Meaning, reference: Garment, target: Garment) -> bool:
    """Whether the target has the part the clause speaks of, and the reference too where the
    clause names the reference's value."""
    if meaning.part is None:
        return True
    part_of = PARTS[meaning.attribute]
    if meaning.part != part_of(target.category):
        return False
    return meaning.old is None or meaning.part == part_of(reference.category)


def _fits(meaning: _Meaning, reference: Garment, change: Change, target: Garment) -> bool:
    if meaning.attribute != change.kind:
        return False
    if meaning.old not in (None, getattr(reference, change.kind)):
        return False
    if not _parts_fit(meaning, reference, target):
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
    speaks of a part the garment it describes lacks: sleeves (hem) when it has a hem
    (sleeves), a neck (waist) when it has a waist (neck), or the reference's neck (waist)
    when the reference has a waist (neck)."""
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
    for meaning in meanings:
        if not _parts_fit(meaning, reference, target):
            raise ValueError(
                f"{text!r}: no {meaning.part} to speak of from a {reference.category} "
                f"to a {target.category}"
            )
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
