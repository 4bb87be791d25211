"""The offline default benchmark: simple rendered scenes in the exact CIRR on-disk format.

A scene is 2-4 coloured shapes on a 3x3 grid (at most one object per cell). Every CIRR
image set holds six scenes: a reference R, its target T = edit(R) and four near misses,
each T with one attribute of one object changed, so that retrieval has to get every word
of the modification text right. Two triplets come from each set: R -> T with the drawn
edit (one of add / remove / recolour / reshape / resize / move, or two of them composed)
and one near miss -> T with the single change that separates them.

Captions follow a small grammar (the phrasing templates below); `apply_caption` parses
any caption back into edits, and `describe_difference` writes the canonical caption
between two scenes: it is the exact scene-difference captioner (the "scene oracle") that
stands in for a perfect foundation model. `scenes.json` beside the CIRR files holds every
image's scene so that the oracle can be asked about any pair of gallery images.

Caption semantics: the steps of a composed caption apply in order, and each object phrase
("the red circle", "the small star", "the blue square at the top left") names exactly
one object of the scene the step applies to.
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import random
import re
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from PIL import Image, ImageDraw

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
SET_SIZE = 6
NUM_NEAR_MISSES = SET_SIZE - 2
EDIT_KINDS = ("add", "remove", "recolour", "reshape", "resize", "move")

# Phrasing templates; the first of each list is the canonical one (describe_difference).
# Resize has one list per direction ("grow": small -> large, "shrink": large -> small).
TEMPLATES: dict[str, tuple[str, ...]] = {
    "add": (
        "add a {size} {colour} {shape} at the {pos}",
        "put a {size} {colour} {shape} at the {pos}",
        "insert a {size} {colour} {shape} at the {pos}",
        "there should be a {size} {colour} {shape} at the {pos}",
    ),
    "remove": ("remove {obj}", "delete {obj}", "take away {obj}", "get rid of {obj}"),
    "recolour": (
        "make {obj} {colour}",
        "change the colour of {obj} to {colour}",
        "paint {obj} {colour}",
        "turn {obj} {colour}",
    ),
    "reshape": ("change {obj} into a {shape}", "turn {obj} into a {shape}", "make {obj} a {shape}"),
    "grow": ("make {obj} bigger", "enlarge {obj}", "increase the size of {obj}"),
    "shrink": ("make {obj} smaller", "shrink {obj}", "reduce the size of {obj}"),
    "move": (
        "move {obj} to the {pos}",
        "shift {obj} to the {pos}",
        "slide {obj} over to the {pos}",
    ),
}
COMPOSE_TEMPLATES = (
    "{first} and {second}",
    "{first}, then {second}",
    "first {first}, then {second}",
)

# Ways to name an object: which attributes besides its shape the phrase states. The
# canonical phrase is the first one that names exactly one object.
_REFERENCE_FORMS: tuple[tuple[str, ...], ...] = (
    ("colour",),
    ("size", "colour"),
    ("colour", "cell"),
    (),
    ("size",),
)
_ATTRIBUTES = ("colour", "shape", "size", "cell")
_KIND_OF_ATTRIBUTE = {"colour": "recolour", "shape": "reshape", "size": "resize", "cell": "move"}


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
        path = path / "scenes.json"
    with open(path) as f:
        return {name: scene_from_json(data) for name, data in json.load(f).items()}


def _as_scene(scene: Scene | Sequence[Mapping]) -> Scene:
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


def _attribute_edit(obj: SceneObject, attribute: str, value: str | int) -> Edit:
    if attribute == "cell":
        return Edit("move", obj.cell, to_cell=value)
    return Edit(_KIND_OF_ATTRIBUTE[attribute], obj.cell, **{attribute: value})


def _pair_orders(old: SceneObject, new: SceneObject) -> list[list[Edit]]:
    """Every order of the attribute edits that turn `old` into `new`."""
    changed = [a for a in _ATTRIBUTES if getattr(old, a) != getattr(new, a)]
    orders = []
    for order in itertools.permutations(changed):
        obj, steps = old, []
        for attribute in order:
            steps.append(_attribute_edit(obj, attribute, getattr(new, attribute)))
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


# ---------------------------------------------------------------- captions


def _names(obj: SceneObject, form: tuple[str, ...], other: SceneObject) -> bool:
    return obj.shape == other.shape and all(getattr(obj, a) == getattr(other, a) for a in form)


def _unique_forms(scene: Scene, obj: SceneObject) -> list[tuple[str, ...]]:
    return [f for f in _REFERENCE_FORMS if sum(_names(obj, f, o) for o in scene) == 1]


def _object_phrase(obj: SceneObject, form: tuple[str, ...]) -> str:
    words = ["the"]
    words += [getattr(obj, a) for a in ("size", "colour") if a in form]
    words.append(obj.shape)
    if "cell" in form:
        words.append(f"at the {POSITIONS[obj.cell]}")
    return " ".join(words)


def _template_key(edit: Edit) -> str:
    if edit.kind == "resize":
        return "grow" if edit.size == "large" else "shrink"
    return edit.kind


def _render_step(scene: Scene, edit: Edit, rng: random.Random | None) -> str:
    """One step's text; canonical (first template, first unique object phrase) without rng."""
    templates = TEMPLATES[_template_key(edit)]
    template = templates[0] if rng is None else rng.choice(templates)
    if edit.kind == "add":
        return template.format(
            size=edit.size, colour=edit.colour, shape=edit.shape, pos=POSITIONS[edit.cell]
        )
    obj = next(o for o in scene if o.cell == edit.cell)
    forms = _unique_forms(scene, obj)
    form = forms[0] if rng is None else rng.choice(forms)
    pos = POSITIONS[edit.to_cell] if edit.kind == "move" else None
    return template.format(
        obj=_object_phrase(obj, form), colour=edit.colour, shape=edit.shape, pos=pos
    )


def render_caption(scene: Scene, edits: Sequence[Edit], rng: random.Random | None = None) -> str:
    """The text of one or two edit steps applied to `scene`; a random phrasing when `rng`
    is given, else the canonical one."""
    texts = []
    for edit in edits:
        texts.append(_render_step(scene, edit, rng))
        scene = apply_edit(scene, edit)
    if len(texts) == 1:
        return texts[0]
    if len(texts) != 2:
        raise ValueError("captions have one or two steps")
    template = COMPOSE_TEMPLATES[0] if rng is None else rng.choice(COMPOSE_TEMPLATES)
    return template.format(first=texts[0], second=texts[1])


def describe_difference(
    reference_scene: Scene | Sequence[Mapping], target_scene: Scene | Sequence[Mapping]
) -> str | None:
    """The scene oracle: the canonical modification text turning the reference into the
    target, or None when they are equal or differ by more than two edits.

    Scenes may be `Scene`s or their JSON form (as in scenes.json).
    """
    reference, target = _as_scene(reference_scene), _as_scene(target_scene)
    edits = decompose(reference, target)
    return None if edits is None else render_caption(reference, edits)


def _alternation(words: Sequence[str]) -> str:
    return "|".join(re.escape(w) for w in sorted(words, key=len, reverse=True))


_COLOUR_RE, _SHAPE_RE = _alternation(COLOURS), _alternation(SHAPES)
_SIZE_RE, _POS_RE = _alternation(SIZES), _alternation(POSITIONS)


def _object_pattern(named: bool) -> str:
    def group(name: str, alternation: str) -> str:
        return f"(?P<{name}>{alternation})" if named else f"(?:{alternation})"

    return (
        f"the (?:{group('size', _SIZE_RE)} )?(?:{group('colour', _COLOUR_RE)} )?"
        f"{group('shape', _SHAPE_RE)}(?: at the {group('pos', _POS_RE)})?"
    )


_OBJECT_RE = re.compile(_object_pattern(named=True))
_PLACEHOLDER_RE = {
    "obj": _object_pattern(named=False),
    "colour": _COLOUR_RE,
    "shape": _SHAPE_RE,
    "size": _SIZE_RE,
    "pos": _POS_RE,
    "first": ".+?",
    "second": ".+",
}


def _template_regex(template: str) -> re.Pattern:
    parts = re.split(r"\{(\w+)\}", template)
    pattern = "".join(
        re.escape(part) if i % 2 == 0 else f"(?P<{part}>{_PLACEHOLDER_RE[part]})"
        for i, part in enumerate(parts)
    )
    return re.compile(pattern)


_STEP_PARSERS = [(key, _template_regex(t)) for key, ts in TEMPLATES.items() for t in ts]
_COMPOSE_PARSERS = [_template_regex(t) for t in COMPOSE_TEMPLATES]


def _resolve_object(scene: Scene, phrase: str) -> SceneObject:
    match = _OBJECT_RE.fullmatch(phrase)
    found = [
        o
        for o in scene
        if o.shape == match["shape"]
        and match["size"] in (None, o.size)
        and match["colour"] in (None, o.colour)
        and (match["pos"] is None or POSITIONS.index(match["pos"]) == o.cell)
    ]
    if len(found) != 1:
        raise ValueError(f"{phrase!r} names {len(found)} objects")
    return found[0]


def _parse_step(scene: Scene, text: str) -> Edit:
    for key, regex in _STEP_PARSERS:
        match = regex.fullmatch(text)
        if match is None:
            continue
        fields = match.groupdict()
        if key == "add":
            return Edit(
                "add",
                POSITIONS.index(fields["pos"]),
                fields["colour"],
                fields["shape"],
                fields["size"],
            )
        cell = _resolve_object(scene, fields["obj"]).cell
        if key in ("grow", "shrink"):
            return Edit("resize", cell, size="large" if key == "grow" else "small")
        if key == "move":
            return Edit("move", cell, to_cell=POSITIONS.index(fields["pos"]))
        return Edit(key, cell, colour=fields.get("colour"), shape=fields.get("shape"))
    raise ValueError(f"cannot parse {text!r}")


def parse_caption(scene: Scene, text: str) -> list[Edit]:
    """The edits a caption of this grammar makes to `scene`; ValueError when the text does
    not parse, names no or several objects, or an edit does not apply."""
    try:
        edit = _parse_step(scene, text)
        apply_edit(scene, edit)
        return [edit]
    except ValueError as single_error:
        for regex in _COMPOSE_PARSERS:
            match = regex.fullmatch(text)
            if match is None:
                continue
            try:
                first = _parse_step(scene, match["first"])
                middle = apply_edit(scene, first)
                second = _parse_step(middle, match["second"])
                apply_edit(middle, second)
            except ValueError:
                continue
            return [first, second]
        raise ValueError(f"cannot apply {text!r} to the scene") from single_error


def apply_caption(scene: Scene, text: str) -> Scene:
    return apply_edits(scene, parse_caption(scene, text))


def corpus_sentences() -> list[str]:
    """Sentences using every word a caption can contain: every template filled with every
    colour, shape, size, position and object-phrase form at least once (tokenizer training)."""
    sentences = []
    rounds = max(len(COLOURS), len(SHAPES), len(SIZES), len(POSITIONS), len(_REFERENCE_FORMS))
    for templates in TEMPLATES.values():
        for template in templates:
            for i in range(rounds):
                obj = SceneObject(
                    i % len(POSITIONS),
                    COLOURS[i % len(COLOURS)],
                    SHAPES[i % len(SHAPES)],
                    SIZES[i % len(SIZES)],
                )
                sentences.append(
                    template.format(
                        obj=_object_phrase(obj, _REFERENCE_FORMS[i % len(_REFERENCE_FORMS)]),
                        colour=COLOURS[(i + 1) % len(COLOURS)],
                        shape=SHAPES[(i + 1) % len(SHAPES)],
                        size=SIZES[i % len(SIZES)],
                        pos=POSITIONS[(i + 1) % len(POSITIONS)],
                    )
                )
    for i, template in enumerate(COMPOSE_TEMPLATES):
        sentences.append(template.format(first=sentences[i], second=sentences[-1 - i]))
    return sentences


# ---------------------------------------------------------------- rendering

_RGB = {
    "red": (220, 38, 38),
    "green": (34, 160, 60),
    "blue": (37, 99, 235),
    "yellow": (250, 204, 21),
    "purple": (147, 51, 234),
    "orange": (249, 115, 22),
}
_BACKGROUND = (232, 232, 232)
_OUTLINE = (30, 30, 30)
_SUPERSAMPLE = 4  # draw large, then box-filter down: anti-aliased edges at 56 px too
_RADIUS = {"small": 0.24, "large": 0.42}  # as a fraction of the cell width


def _polygon(
    cx: float, cy: float, radii: Sequence[float], start: float
) -> list[tuple[float, float]]:
    n = len(radii)
    return [
        (
            cx + r * math.cos(start + 2 * math.pi * k / n),
            cy + r * math.sin(start + 2 * math.pi * k / n),
        )
        for k, r in enumerate(radii)
    ]


def render_scene(scene: Scene, image_size: int = 112) -> Image.Image:
    side = image_size * _SUPERSAMPLE
    image = Image.new("RGB", (side, side), _BACKGROUND)
    draw = ImageDraw.Draw(image)
    cell = side / GRID
    width = max(1, round(side / 120))
    for obj in scene:
        row, col = divmod(obj.cell, GRID)
        cx, cy = (col + 0.5) * cell, (row + 0.5) * cell
        r = _RADIUS[obj.size] * cell
        style = {"fill": _RGB[obj.colour], "outline": _OUTLINE, "width": width}
        if obj.shape == "circle":
            draw.ellipse((cx - r, cy - r, cx + r, cy + r), **style)
        elif obj.shape == "square":
            s = 0.85 * r
            draw.rectangle((cx - s, cy - s, cx + s, cy + s), **style)
        elif obj.shape == "triangle":
            draw.polygon(_polygon(cx, cy + 0.15 * r, [1.15 * r] * 3, -math.pi / 2), **style)
        else:
            draw.polygon(_polygon(cx, cy + 0.05 * r, [1.1 * r, 0.5 * r] * 5, -math.pi / 2), **style)
    return image.resize((image_size, image_size), Image.Resampling.BOX)


# ---------------------------------------------------------------- generation

# (split name in the CIRR file names, image name prefix, image folder)
_SPLITS = (("train", "train", "train"), ("val", "dev", "dev"), ("test1", "test1", "test1"))
_TRAIN_BUCKET = 100  # train images live in ./train/<set id // 100>/, as real CIRR buckets them


def _random_scene(rng: random.Random) -> Scene:
    cells = rng.sample(range(GRID * GRID), rng.randint(MIN_OBJECTS, MAX_OBJECTS))
    return make_scene(
        [SceneObject(c, rng.choice(COLOURS), rng.choice(SHAPES), rng.choice(SIZES)) for c in cells]
    )


def _random_edit(rng: random.Random, scene: Scene, kind: str) -> Edit | None:
    """A random edit of this kind that keeps 2-4 objects, or None if none applies."""
    empty = [c for c in range(GRID * GRID) if c not in {o.cell for o in scene}]
    if kind == "add":
        if len(scene) >= MAX_OBJECTS:
            return None
        return Edit(
            "add", rng.choice(empty), rng.choice(COLOURS), rng.choice(SHAPES), rng.choice(SIZES)
        )
    obj = rng.choice(scene)
    if kind == "remove":
        return Edit("remove", obj.cell) if len(scene) > MIN_OBJECTS else None
    if kind == "move":
        return Edit("move", obj.cell, to_cell=rng.choice(empty))
    attribute = {"recolour": "colour", "reshape": "shape", "resize": "size"}[kind]
    values = {"colour": COLOURS, "shape": SHAPES, "size": SIZES}[attribute]
    return _attribute_edit(
        obj, attribute, rng.choice([v for v in values if v != getattr(obj, attribute)])
    )


def _random_edits(rng: random.Random, reference: Scene, kinds: Sequence[str]) -> list[Edit] | None:
    """Random edits of these kinds in turn, or None if one does not apply or the result is
    reachable in fewer steps (a composition that a single edit equals)."""
    edits, scene = [], reference
    for kind in kinds:
        edit = _random_edit(rng, scene, kind)
        if edit is None:
            return None
        edits.append(edit)
        scene = apply_edit(scene, edit)
    shortest = decompose(reference, scene)
    return edits if shortest is not None and len(shortest) == len(edits) else None


def _interleave(rng: random.Random, groups: dict[str, list[Scene]]) -> list[Scene]:
    """The scenes of all groups in random order, taking the groups in turn so that the first
    picks come from different groups (attributes)."""
    lists = [rng.sample(group, len(group)) for group in groups.values()]
    rng.shuffle(lists)
    return [s for row in itertools.zip_longest(*lists) for s in row if s is not None]


def _near_misses(rng: random.Random, reference: Scene, target: Scene) -> list[Scene]:
    """Up to four scenes that differ from the target in one attribute of one object: two
    (where possible) change an object the edit touched, the rest any object; the changed
    attributes are spread over colour, shape, size and position."""
    touched = {o.cell for o in set(target) - set(reference)}
    empty = [c for c in range(GRID * GRID) if c not in {o.cell for o in target}]
    values = {"colour": COLOURS, "shape": SHAPES, "size": SIZES, "cell": empty}
    on_touched: dict[str, list[Scene]] = {a: [] for a in _ATTRIBUTES}
    on_others: dict[str, list[Scene]] = {a: [] for a in _ATTRIBUTES}
    for obj in target:
        for attribute in _ATTRIBUTES:
            for value in values[attribute]:
                if value != getattr(obj, attribute):
                    scene = apply_edit(target, _attribute_edit(obj, attribute, value))
                    (on_touched if obj.cell in touched else on_others)[attribute].append(scene)
    first, rest = _interleave(rng, on_touched), _interleave(rng, on_others)
    pool = first[:2] + rest + first[2:]
    return [s for s in pool if s != reference][:NUM_NEAR_MISSES]


@dataclass
class _ImageSet:
    members: list[Scene]  # in member order
    triplets: list[tuple[int, int, list[Edit]]]  # (reference index, target index, edits)


def _random_image_set(rng: random.Random, seen: set[Scene]) -> _ImageSet:
    """Six scenes never used before (no duplicate images anywhere in the benchmark) and the
    two triplets made from them: R -> T and a near miss -> T. The edit kind (one of six, or
    a composition of two) is drawn uniformly before the scene, so every kind is as common."""
    kind = rng.choice([*EDIT_KINDS, "compose"])
    kinds = [rng.choice(EDIT_KINDS), rng.choice(EDIT_KINDS)] if kind == "compose" else [kind]
    while True:
        reference = _random_scene(rng)
        edits = _random_edits(rng, reference, kinds)
        if edits is None:
            continue
        target = apply_edits(reference, edits)
        near = _near_misses(rng, reference, target)
        scenes = [reference, target, *near]
        if len(near) < NUM_NEAR_MISSES or seen.intersection(scenes):
            continue
        order = list(range(SET_SIZE))
        rng.shuffle(order)
        members = [scenes[i] for i in order]
        k = rng.randrange(NUM_NEAR_MISSES)
        second = decompose(near[k], target)
        seen.update(scenes)
        return _ImageSet(
            members,
            [(order.index(0), order.index(1), edits), (order.index(2 + k), order.index(1), second)],
        )


def _write_json(path: Path, data: object, indent: int | None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as f:
        json.dump(data, f, indent=indent)
        f.write("\n")


def build_synthetic_benchmark(
    output_dir: str | Path,
    num_train_images: int = 3000,
    num_val_images: int = 1200,
    num_test_images: int = 600,
    image_size: int = 112,
    seed: int = 0,
) -> Path:
    """Write the benchmark under `output_dir` and return that directory.

    Each split gets `num_*_images // 6` image sets of six images and two triplets per set.
    The same arguments always give byte-identical files.
    """
    start = time.perf_counter()
    root = Path(output_dir)
    rng = random.Random(seed)
    seen: set[Scene] = set()
    scenes_json: dict[str, list[dict]] = {}
    renders: list[tuple[Path, Scene]] = []
    pairid = 0
    counts = []
    sizes = (num_train_images, num_val_images, num_test_images)
    for (split, prefix, folder), num_images in zip(_SPLITS, sizes, strict=True):
        if num_images < SET_SIZE:
            raise ValueError(f"{split} needs at least {SET_SIZE} images, got {num_images}")
        captions, image_paths = [], {}
        for set_id in range(num_images // SET_SIZE):
            image_set = _random_image_set(rng, seen)
            names = [f"{prefix}-{set_id}-{i // 2}-img{i % 2}" for i in range(SET_SIZE)]
            subfolder = f"{folder}/{set_id // _TRAIN_BUCKET}" if split == "train" else folder
            for name, scene in zip(names, image_set.members, strict=True):
                image_paths[name] = f"./{subfolder}/{name}.png"
                scenes_json[name] = scene_to_json(scene)
                renders.append((root / subfolder / f"{name}.png", scene))
            for ref, tgt, edits in image_set.triplets:
                entry: dict = {"pairid": pairid, "reference": names[ref]}
                if split != "test1":
                    entry["target_hard"] = names[tgt]
                    entry["target_soft"] = {names[tgt]: 1.0} | {
                        n: -1.0 for i, n in enumerate(names) if i not in (ref, tgt)
                    }
                entry["caption"] = render_caption(image_set.members[ref], edits, rng)
                entry["img_set"] = {"id": set_id, "members": names, "reference_rank": ref}
                if split != "test1":
                    entry["img_set"]["target_rank"] = tgt
                captions.append(entry)
                pairid += 1
        _write_json(root / "captions" / f"cap.rc2.{split}.json", captions, indent=1)
        _write_json(root / "image_splits" / f"split.rc2.{split}.json", image_paths, indent=1)
        counts.append((split, len(image_paths), len(captions)))
    _write_json(root / "scenes.json", scenes_json, indent=None)
    for path, scene in renders:
        path.parent.mkdir(parents=True, exist_ok=True)
        render_scene(scene, image_size).save(path, format="PNG")
    summary = ", ".join(f"{s}: {n} images / {t} triplets" for s, n, t in counts)
    print(f"synthetic CIRR benchmark ({summary}) in {time.perf_counter() - start:.1f}s -> {root}")
    return root


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description="Render the synthetic composed-retrieval benchmark in the CIRR format."
    )
    parser.add_argument("--output_dir", required=True, help="directory to write the benchmark to")
    parser.add_argument(
        "--num_train_images", type=int, default=3000, help="train images (a multiple of 6 is used)"
    )
    parser.add_argument(
        "--num_val_images",
        type=int,
        default=1200,
        help="val (dev) images (a multiple of 6 is used)",
    )
    parser.add_argument(
        "--num_test_images", type=int, default=600, help="test1 images (a multiple of 6 is used)"
    )
    parser.add_argument("--image_size", type=int, default=112, help="image side in pixels")
    parser.add_argument("--seed", type=int, default=0, help="random seed; same seed, same files")
    args = parser.parse_args(argv)
    build_synthetic_benchmark(
        args.output_dir,
        args.num_train_images,
        args.num_val_images,
        args.num_test_images,
        args.image_size,
        args.seed,
    )


if __name__ == "__main__":
    main()
