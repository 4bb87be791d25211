"""Scenes of the synthetic benchmark and the edits between them.

A scene is 2-4 coloured shapes on a 3x3 grid (at most one object per cell). An edit adds,
removes, recolours, reshapes, resizes or moves one object; `decompose` finds the shortest
edit sequence (at most two steps) between two scenes, which both the caption grammar
(captions.py) and the benchmark writer (benchmark.py) build on.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

COLOURS = ("red", "green", "blue", "yellow", "purple", "orange")
SHAPES = ("circle", "square", "triangle", "star")
SIZES = ("small", "large")
# Cell k of the 3x3 grid is row k // 3, column k % 3; cell 0 is the top left.
POSITIONS = (
    "top left",
    "top",
    "top right",
    "left",
    "center",
    "right",
    "bottom left",
    "bottom",
    "bottom right",
)
GRID = 3
MIN_OBJECTS, MAX_OBJECTS = 2, 4
EDIT_KINDS = ("add", "remove", "recolour", "reshape", "resize", "move")
SCENES_FILE = "scenes.json"  # beside the CIRR files: every image's scene
ATTRIBUTES = ("colour", "shape", "size", "cell")
KIND_OF_ATTRIBUTE = {"colour": "recolour", "shape": "reshape", "size": "resize", "cell": "move"}

@dataclass(frozen=True, order=True)
class SceneObject:
    """One shape; `cell` is its grid cell (0-8, row-major from the top left)."""

    cell: int
    colour: str
    shape: str
    size: str


# A scene: its objects sorted by cell, one object per cell. Tuples so scenes hash.
Scene = tuple[SceneObject, ...]


@dataclass(frozen=True)
class Edit:
    """One edit step. `cell` is the edited object's cell in the scene the step applies to
    (for "add": the cell of the new object). "add" sets colour, shape and size; "recolour",
    "reshape" and "resize" set the one new value; "move" sets `to_cell`."""

    kind: str
    cell: int
    colour: str | None = None
    shape: str | None = None
    size: str | None = None
    to_cell: int | None = None


# ---------------------------------------------------------------- scenes


def make_scene(objects: Sequence[SceneObject]) -> Scene:
    """The canonical scene of these objects; ValueError on a bad attribute or shared cell."""
    for obj in objects:
        if (
            obj.colour not in COLOURS
            or obj.shape not in SHAPES
            or obj.size not in SIZES
            or not 0 <= obj.cell < GRID * GRID
        ):
            raise ValueError(f"bad scene object {obj}")
    if len({obj.cell for obj in objects}) != len(objects):
        raise ValueError(f"two objects share a cell: {objects}")
    return tuple(sorted(objects))


def scene_to_json(scene: Scene) -> list[dict]:
    """JSON form of a scene: a list of {"colour", "shape", "size", "row", "col"}."""
    return [
        {
            "colour": o.colour,
            "shape": o.shape,
            "size": o.size,
            "row": o.cell // GRID,
            "col": o.cell % GRID,
        }
        for o in scene
    ]


def scene_from_json(data: Sequence[Mapping]) -> Scene:
    return make_scene(
        [SceneObject(d["row"] * GRID + d["col"], d["colour"], d["shape"], d["size"]) for d in data]
    )


def load_scenes(path: str | Path) -> dict[str, Scene]:
    """Image name -> scene, from a benchmark directory or its scenes.json."""
    path = Path(path)
    if path.is_dir():
        path = path / SCENES_FILE
    with open(path) as f:
        return {name: scene_from_json(data) for name, data in json.load(f).items()}


def as_scene(scene: Scene | Sequence[Mapping]) -> Scene:
    if all(isinstance(o, SceneObject) for o in scene):
        return make_scene(scene)
    return scene_from_json(scene)


# ---------------------------------------------------------------- edits


def apply_edit(scene: Scene, edit: Edit) -> Scene:
    """The scene after one edit; ValueError when the edit does not apply or changes nothing."""
    by_cell = {o.cell: o for o in scene}
    if edit.kind == "add":
        if edit.cell in by_cell:
            raise ValueError(f"cannot add at occupied cell {edit.cell}")
        by_cell[edit.cell] = SceneObject(edit.cell, edit.colour, edit.shape, edit.size)
        return make_scene(list(by_cell.values()))
    if edit.cell not in by_cell:
        raise ValueError(f"no object at cell {edit.cell}")
    obj = by_cell.pop(edit.cell)
    if edit.kind == "move":
        if edit.to_cell in by_cell or edit.to_cell == edit.cell:
            raise ValueError(f"cannot move to cell {edit.to_cell}")
        by_cell[edit.to_cell] = replace(obj, cell=edit.to_cell)
    elif edit.kind != "remove":
        attribute = {"recolour": "colour", "reshape": "shape", "resize": "size"}[edit.kind]
        value = getattr(edit, attribute)
        if value == getattr(obj, attribute):
            raise ValueError(f"{edit.kind} to the same {attribute}")
        by_cell[edit.cell] = replace(obj, **{attribute: value})
    return make_scene(list(by_cell.values()))


def apply_edits(scene: Scene, edits: Sequence[Edit]) -> Scene:
    for edit in edits:
        scene = apply_edit(scene, edit)
    return scene


def attribute_edit(obj: SceneObject, attribute: str, value: str | int) -> Edit:
    if attribute == "cell":
        return Edit("move", obj.cell, to_cell=value)
    return Edit(KIND_OF_ATTRIBUTE[attribute], obj.cell, **{attribute: value})


def _pair_orders(old: SceneObject, new: SceneObject) -> list[list[Edit]]:
    """Every order of the attribute edits that turn `old` into `new`."""
    changed = [a for a in ATTRIBUTES if getattr(old, a) != getattr(new, a)]
    orders = []
    for order in itertools.permutations(changed):
        obj, steps = old, []
        for attribute in order:
            steps.append(attribute_edit(obj, attribute, getattr(new, attribute)))
            obj = replace(obj, **{attribute: getattr(new, attribute)})
        orders.append(steps)
    return orders


def decompose(reference: Scene, target: Scene, max_steps: int = 2) -> list[Edit] | None:
    """The canonical shortest edit sequence (at most `max_steps`) from reference to target.

    Objects that differ are matched up (a matched pair is edited in place, an unmatched
    one is removed or added); the cheapest matching wins, ties going to the one that
    edits more objects in place, and the first step order that applies is kept. None
    when the scenes are equal or need more steps.
    """
    ref_set, tgt_set = set(reference), set(target)
    removed = sorted(ref_set - tgt_set)
    added = sorted(tgt_set - ref_set)
    if not removed and not added or len(removed) > max_steps or len(added) > max_steps:
        return None
    matchings = []
    for choice in itertools.product([None, *range(len(added))], repeat=len(removed)):
        partners = [c for c in choice if c is not None]
        if len(set(partners)) != len(partners):
            continue
        units = []  # each unit: the possible step orders for one object
        for old, c in zip(removed, choice, strict=True):
            units.append(
                _pair_orders(old, added[c]) if c is not None else [[Edit("remove", old.cell)]]
            )
        for i, new in enumerate(added):
            if i not in partners:
                units.append([[Edit("add", new.cell, new.colour, new.shape, new.size)]])
        cost = sum(len(unit[0]) for unit in units)
        if cost <= max_steps:
            matchings.append((cost, -len(partners), len(matchings), units))
    for *_, units in sorted(matchings, key=lambda m: m[:3]):
        for unit_order in itertools.permutations(units):
            for steps in itertools.product(*unit_order):
                edits = [edit for unit_steps in steps for edit in unit_steps]
                try:
                    if apply_edits(reference, edits) == target:
                        return edits
                except ValueError:
                    continue
    return None

