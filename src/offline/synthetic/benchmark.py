"""The offline default benchmark: rendered scenes written in the exact CIRR on-disk format.

Every CIRR image set holds six scenes: a reference R, its target T = edit(R) and four near
misses, each T with one attribute of one object changed, so that retrieval has to get
every word of the modification text right. Two triplets come from each set: R -> T with
the drawn edit (one of add / remove / recolour / reshape / resize / move, or two of them
composed) and one near miss -> T with the single change that separates them.
`scenes.json` beside the CIRR files holds every image's scene so that the scene oracle
can be asked about any pair of gallery images.

    python -m src.offline.synthetic --output_dir DIR [--num_train_images 3000 ...]
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from pathlib import Path

from src.offline.cirr_benchmark import (
    NUM_NEAR_MISSES,
    BenchmarkSpec,
    ImageSet,
    assemble_image_set,
    benchmark_main,
    choose_near_misses,
    write_cirr_benchmark,
)
from src.offline.synthetic.captions import render_caption
from src.offline.synthetic.render import render_scene
from src.offline.synthetic.scenes import (
    ATTRIBUTES,
    COLOURS,
    EDIT_KINDS,
    GRID,
    MAX_OBJECTS,
    MIN_OBJECTS,
    SCENES_FILE,
    SHAPES,
    SIZES,
    Edit,
    Scene,
    SceneObject,
    apply_edit,
    apply_edits,
    attribute_edit,
    decompose,
    make_scene,
    scene_to_json,
)


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
    return attribute_edit(
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


def _near_misses(rng: random.Random, reference: Scene, target: Scene) -> list[Scene]:
    """Up to four scenes that differ from the target in one attribute of one object: two
    (where possible) change an object the edit touched, the rest any object; the changed
    attributes are spread over colour, shape, size and position."""
    touched = {o.cell for o in set(target) - set(reference)}
    empty = [c for c in range(GRID * GRID) if c not in {o.cell for o in target}]
    values = {"colour": COLOURS, "shape": SHAPES, "size": SIZES, "cell": empty}
    on_touched: dict[str, list[Scene]] = {a: [] for a in ATTRIBUTES}
    on_others: dict[str, list[Scene]] = {a: [] for a in ATTRIBUTES}
    for obj in target:
        for attribute in ATTRIBUTES:
            for value in values[attribute]:
                if value != getattr(obj, attribute):
                    scene = apply_edit(target, attribute_edit(obj, attribute, value))
                    (on_touched if obj.cell in touched else on_others)[attribute].append(scene)
    return choose_near_misses(rng, reference, on_touched, on_others)


def _draw_scenes(rng: random.Random, kinds: Sequence[str]) -> tuple[list[Scene], list[Edit]] | None:
    """[reference, target, four near misses] and the edits R -> T, or None on a failed draw."""
    reference = _random_scene(rng)
    edits = _random_edits(rng, reference, kinds)
    if edits is None:
        return None
    target = apply_edits(reference, edits)
    near = _near_misses(rng, reference, target)
    return ([reference, target, *near], edits) if len(near) == NUM_NEAR_MISSES else None


def _random_image_set(rng: random.Random, seen: set[Scene], triplets: int = 2) -> ImageSet:
    """Six scenes never used before (no duplicate images anywhere in the benchmark) and the
    triplets made from them: R -> T with the drawn edits, and `triplets - 1` near misses ->
    T (each with the one change that separates it from T). The edit kind (one of six, or a
    composition of two) is drawn uniformly before the scene, so every kind is as common."""
    kind = rng.choice([*EDIT_KINDS, "compose"])
    kinds = [rng.choice(EDIT_KINDS), rng.choice(EDIT_KINDS)] if kind == "compose" else [kind]
    drawn = None
    while drawn is None or seen.intersection(drawn[0]):
        drawn = _draw_scenes(rng, kinds)
    scenes, edits = drawn
    seen.update(scenes)

    def caption(source: int, rng: random.Random) -> str:
        steps = edits if source == 0 else decompose(scenes[source], scenes[1])
        return render_caption(scenes[source], steps, rng)

    return assemble_image_set(rng, scenes, triplets, caption)


SHAPES_BENCHMARK = BenchmarkSpec(
    label="synthetic CIRR benchmark",
    descriptions_file=SCENES_FILE,
    new_set=_random_image_set,
    to_json=scene_to_json,
    render=render_scene,
)


def build_synthetic_benchmark(
    output_dir: str | Path,
    num_train_images: int = 3000,
    num_val_images: int = 1200,
    num_test_images: int = 600,
    image_size: int = 112,
    seed: int = 0,
    triplets_per_set: int = 2,
) -> Path:
    """Write the benchmark under `output_dir` and return that directory.

    Each split gets `num_*_images // 6` image sets of six images and `triplets_per_set`
    triplets per set (2 to 5: R -> T and near misses -> T). The same arguments always give
    byte-identical files.
    """
    sizes = (num_train_images, num_val_images, num_test_images)
    return write_cirr_benchmark(
        SHAPES_BENCHMARK, output_dir, sizes, image_size, seed, triplets_per_set
    )


def main(argv: Sequence[str] | None = None) -> None:
    benchmark_main(
        build_synthetic_benchmark,
        "Render the synthetic composed-retrieval benchmark in the CIRR format.",
        argv,
    )


if __name__ == "__main__":
    main()
