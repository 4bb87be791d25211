"""The caption grammar of the synthetic benchmark, and the scene oracle's texts.

Captions follow the phrasing templates below. `apply_caption` parses any caption back into
edits, and `describe_difference` writes the canonical caption between two scenes: the
exact scene-difference captioner that stands in for a perfect foundation model.

Caption semantics: the steps of a composed caption apply in order, and each object phrase
("the red circle", "the small star", "the blue square at the top left") names exactly
one object of the scene the step applies to.
"""

from __future__ import annotations

import random
import re
from collections.abc import Mapping, Sequence

from src.offline.synthetic.scenes import (
    COLOURS,
    POSITIONS,
    SHAPES,
    SIZES,
    Edit,
    Scene,
    SceneObject,
    apply_edit,
    apply_edits,
    as_scene,
    decompose,
)

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
    reference_scene: Scene | Sequence[Mapping],
    target_scene: Scene | Sequence[Mapping],
    rng: random.Random | None = None,
) -> str | None:
    """The scene oracle: a modification text turning the reference into the target (the
    canonical one, or with `rng` one of the benchmark's phrasings), or None when the
    scenes are equal or differ by more than two edits.

    Scenes may be `Scene`s or their JSON form (as in scenes.json).
    """
    reference, target = as_scene(reference_scene), as_scene(target_scene)
    edits = decompose(reference, target)
    return None if edits is None else render_caption(reference, edits, rng)


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

