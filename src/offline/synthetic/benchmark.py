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

import argparse
import itertools
import json
import random
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from src.offline.synthetic.captions import render_caption
from src.offline.synthetic.render import render_scene
from src.offline.synthetic.scenes import (
    ATTRIBUTES,
    COLOURS,
    EDIT_KINDS,
    GRID,
    MAX_OBJECTS,
    MIN_OBJECTS,
    NUM_NEAR_MISSES,
    SCENES_FILE,
    SET_SIZE,
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
    on_touched: dict[str, list[Scene]] = {a: [] for a in ATTRIBUTES}
    on_others: dict[str, list[Scene]] = {a: [] for a in ATTRIBUTES}
    for obj in target:
        for attribute in ATTRIBUTES:
            for value in values[attribute]:
                if value != getattr(obj, attribute):
                    scene = apply_edit(target, attribute_edit(obj, attribute, value))
                    (on_touched if obj.cell in touched else on_others)[attribute].append(scene)
    first, rest = _interleave(rng, on_touched), _interleave(rng, on_others)
    pool = first[:2] + rest + first[2:]
    return [s for s in pool if s != reference][:NUM_NEAR_MISSES]


@dataclass
class _ImageSet:
    members: list[Scene]  # in member order
    triplets: list[tuple[int, int, list[Edit]]]  # (reference index, target index, edits)


def _random_image_set(rng: random.Random, seen: set[Scene], triplets: int = 2) -> _ImageSet:
    """Six scenes never used before (no duplicate images anywhere in the benchmark) and the
    triplets made from them: R -> T, and `triplets - 1` near misses -> T (each with the one
    change that separates it from T). The edit kind (one of six, or a composition of two)
    is drawn uniformly before the scene, so every kind is as common."""
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
        if triplets == 2:
            chosen = [rng.randrange(NUM_NEAR_MISSES)]
        else:
            chosen = rng.sample(range(NUM_NEAR_MISSES), triplets - 1)
        seen.update(scenes)
        return _ImageSet(
            members,
            [(order.index(0), order.index(1), edits)]
            + [(order.index(2 + k), order.index(1), decompose(near[k], target)) for k in chosen],
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
    triplets_per_set: int = 2,
) -> Path:
    """Write the benchmark under `output_dir` and return that directory.

    Each split gets `num_*_images // 6` image sets of six images and `triplets_per_set`
    triplets per set (2 to 5: R -> T and near misses -> T). The same arguments always give
    byte-identical files.
    """
    if not 2 <= triplets_per_set <= 1 + NUM_NEAR_MISSES:
        raise ValueError(f"triplets_per_set must be 2 to {1 + NUM_NEAR_MISSES}")
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
            image_set = _random_image_set(rng, seen, triplets_per_set)
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
    _write_json(root / SCENES_FILE, scenes_json, indent=None)
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
    parser.add_argument("--triplets_per_set", type=int, default=2, help="triplets per image set (2-5)")
    args = parser.parse_args(argv)
    build_synthetic_benchmark(
        args.output_dir,
        args.num_train_images,
        args.num_val_images,
        args.num_test_images,
        args.image_size,
        args.seed,
        args.triplets_per_set,
    )


if __name__ == "__main__":
    main()
