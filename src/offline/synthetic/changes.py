"""The atomic differences between any two scenes, and texts that state a chosen set of them.

`decompose` (scenes.py) searches edit orders and stops at two steps; the simulated
captioner needs every difference of any pair, so `differences` matches the objects by a
minimum-cost assignment instead (polynomial): a matched pair differs by one change per
attribute (recolour, reshape, resize, move), an unmatched reference object is removed and
an unmatched target object added. The cheapest matching states the fewest changes; ties go
to the one that edits more objects in place (as `decompose` does), then to fewer moves.

A change's `subject` is the cell of the object in the reference (for an addition: the cell
of the new object, whose `value` is the new `SceneObject`); its `value` is the new colour,
shape, size or cell (None for a removal).

Salience, most salient first: whole objects (added, then removed), then colour, shape,
size and position changes; within a kind, large objects before small ones (as they are in
the reference; an added one as it is in the target), then in reading order of their cell.
"""

from __future__ import annotations

import itertools
import random
from collections.abc import Sequence
from dataclasses import replace

import numpy as np
from scipy.optimize import linear_sum_assignment

from src.offline.domain import Change
from src.offline.synthetic.captions import parse_caption, render_caption
from src.offline.synthetic.scenes import (
    ATTRIBUTES,
    COLOURS,
    GRID,
    KIND_OF_ATTRIBUTE,
    SHAPES,
    SIZES,
    Edit,
    Scene,
    SceneObject,
    apply_edit,
)

SALIENCE = ("add", "remove", "recolour", "reshape", "resize", "move")
MAX_STEPS = 2  # the grammar composes at most two steps (captions.py, COMPOSE_TEMPLATES)
_ATTRIBUTE_OF_KIND = {kind: attribute for attribute, kind in KIND_OF_ATTRIBUTE.items()}
_VALUES = {"colour": COLOURS, "shape": SHAPES, "size": SIZES}
# Assignment costs: a change costs _STEP; each matched pair earns _IN_PLACE back and a
# move costs 1 more, both far below _STEP so that the number of changes comes first.
_STEP, _IN_PLACE = 100, 10
_NEVER = 10**6


def _match_cost(old: SceneObject, new: SceneObject) -> int:
    changed = sum(getattr(old, a) != getattr(new, a) for a in ATTRIBUTES)
    return _STEP * changed - _IN_PLACE + (old.cell != new.cell)


def _matching(removed: list[SceneObject], added: list[SceneObject]) -> dict[int, int]:
    """removed index -> added index of the cheapest matching (the rest: removed / added)."""
    r, a = len(removed), len(added)
    costs = np.full((r + a, a + r), _NEVER, dtype=np.int64)
    for i, j in itertools.product(range(r), range(a)):
        costs[i, j] = _match_cost(removed[i], added[j])
    for i in range(r):
        costs[i, a + i] = _STEP  # removed
    for j in range(a):
        costs[r + j, j] = _STEP  # added
    costs[r:, a:] = 0
    rows, cols = linear_sum_assignment(costs)
    return {int(i): int(j) for i, j in zip(rows, cols, strict=True) if i < r and j < a}


def _salience(change: Change, reference: Scene) -> tuple:
    obj = change.value if change.kind == "add" else _object_at(reference, change.subject)
    return SALIENCE.index(change.kind), obj.size != "large", obj.cell


def _object_at(scene: Scene, cell: int) -> SceneObject:
    return next(o for o in scene if o.cell == cell)


def differences(reference: Scene, target: Scene) -> list[Change]:
    """Every atomic difference from `reference` to `target`, most salient first."""
    removed = sorted(set(reference) - set(target))
    added = sorted(set(target) - set(reference))
    partners = _matching(removed, added)
    changes = [
        Change("add", new.cell, new) for j, new in enumerate(added) if j not in partners.values()
    ]
    for i, old in enumerate(removed):
        if i not in partners:
            changes.append(Change("remove", old.cell, None))
            continue
        new = added[partners[i]]
        for attribute in ATTRIBUTES:
            if getattr(old, attribute) != getattr(new, attribute):
                changes.append(
                    Change(KIND_OF_ATTRIBUTE[attribute], old.cell, getattr(new, attribute))
                )
    return sorted(changes, key=lambda c: _salience(c, reference))


def _edits(reference: Scene, changes: Sequence[Change]) -> list[Edit] | None:
    """The edit steps that make these changes in this order, or None where one does not
    apply (an occupied cell, an object removed by an earlier step)."""
    where = {o.cell: o.cell for o in reference}  # reference cell -> current cell
    scene, edits = reference, []
    for change in changes:
        if change.kind == "add":
            edit = Edit(
                "add", change.subject, change.value.colour, change.value.shape, change.value.size
            )
        elif change.subject not in where:
            return None
        elif change.kind == "move":
            edit = Edit("move", where[change.subject], to_cell=change.value)
        elif change.kind == "remove":
            edit = Edit("remove", where.pop(change.subject))
        else:
            attribute = _ATTRIBUTE_OF_KIND[change.kind]
            edit = Edit(change.kind, where[change.subject], **{attribute: change.value})
        try:
            scene = apply_edit(scene, edit)
        except ValueError:
            return None
        if change.kind == "move":
            where[change.subject] = change.value
        edits.append(edit)
    return edits


def render_changes(
    reference: Scene, changes: Sequence[Change], rng: random.Random | None = None
) -> str | None:
    """A caption of the benchmark's grammar stating exactly these changes (one or two), in
    the first order whose steps apply; None when there is none (e.g. two objects swapping
    cells)."""
    if not 1 <= len(changes) <= MAX_STEPS:
        return None
    for order in itertools.permutations(changes):
        edits = _edits(reference, order)
        if edits is not None:
            return render_caption(reference, edits, rng)
    return None


def stated_changes(reference: Scene, text: str) -> list[Change]:
    """The changes a caption states, each relative to the reference; ValueError when it does
    not parse, or when a step edits an object that an earlier step added."""
    origin: dict[int, int | None] = {o.cell: o.cell for o in reference}  # current -> reference cell
    changes = []
    for edit in parse_caption(reference, text):
        if edit.kind == "add":
            origin[edit.cell] = None
            new = SceneObject(edit.cell, edit.colour, edit.shape, edit.size)
            changes.append(Change("add", edit.cell, new))
            continue
        subject = origin[edit.cell]
        if subject is None:
            raise ValueError(f"{text!r} edits an object that it adds")
        if edit.kind == "remove":
            del origin[edit.cell]
            changes.append(Change("remove", subject, None))
        elif edit.kind == "move":
            origin[edit.to_cell] = origin.pop(edit.cell)
            changes.append(Change("move", subject, edit.to_cell))
        else:
            value = getattr(edit, _ATTRIBUTE_OF_KIND[edit.kind])
            changes.append(Change(edit.kind, subject, value))
    return changes


def _empty_cells(scene: Scene) -> list[int]:
    occupied = {o.cell for o in scene}
    return [c for c in range(GRID * GRID) if c not in occupied]


def alternatives(reference: Scene, change: Change) -> list[Change]:
    """The change with another value: another colour, shape, size or cell of an added
    object, another object removed (a removal's value is the object it takes away),
    another colour, shape or cell for an edit. A resize has none (two sizes only)."""
    if change.kind == "add":
        new = change.value
        options = [replace(new, **{a: v}) for a, values in _VALUES.items() for v in values]
        options += [replace(new, cell=c) for c in _empty_cells(reference)]
        return [Change("add", o.cell, o) for o in options if o != new]
    if change.kind == "remove":
        return [Change("remove", o.cell, None) for o in reference if o.cell != change.subject]
    old = _object_at(reference, change.subject)
    if change.kind == "move":
        values = _empty_cells(reference)
    else:
        values = _VALUES[_ATTRIBUTE_OF_KIND[change.kind]]
    current = old.cell if change.kind == "move" else getattr(old, _ATTRIBUTE_OF_KIND[change.kind])
    return [replace(change, value=v) for v in values if v not in (change.value, current)]


def possible_changes(reference: Scene) -> list[Change]:
    """Every single change the reference allows."""
    empty = _empty_cells(reference)
    changes = [
        Change("add", cell, SceneObject(cell, colour, shape, size))
        for cell, colour, shape, size in itertools.product(empty, COLOURS, SHAPES, SIZES)
    ]
    for obj in reference:
        changes.append(Change("remove", obj.cell, None))
        changes += [Change("move", obj.cell, cell) for cell in empty]
        for attribute, values in _VALUES.items():
            kind = KIND_OF_ATTRIBUTE[attribute]
            changes += [Change(kind, obj.cell, v) for v in values if v != getattr(obj, attribute)]
    return changes
