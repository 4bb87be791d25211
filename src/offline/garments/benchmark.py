"""The garment benchmark, written in the exact CIRR on-disk format of the shapes benchmark.

Each image set holds six garments: a reference R, its target T (R with one attribute
changed, or two) and four near misses, each T with one attribute changed (two of them, where
possible, an attribute the edit changed). Triplets: R -> T and `triplets_per_set - 1` near
misses -> T, each caption the exact difference in random phrasing. `garments.json` beside
the CIRR files holds every image's garment. No garment occurs twice; with 18,000 garments in
all (5 categories x 10 colours x 4 patterns x 3 lengths x 3 necklines x 10 trims), a
benchmark holds at most half of them (MAX_IMAGES), so that drawing six unused garments for a
set stays quick to the end. The defaults, 4,200 train + 1,800 val + 300 test images with four
triplets per set, are the benchmark the team runs.

    python -m src.offline.garments --output_dir DIR [--num_train_images 4200 ...]
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from dataclasses import replace
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
from src.offline.garments.captions import describe_difference
from src.offline.garments.garments import (
    ATTRIBUTES,
    GARMENTS_FILE,
    VALUES,
    Garment,
    garment_to_json,
)
from src.offline.garments.render import render_garment

MAX_IMAGES = math.prod(len(VALUES[a]) for a in ATTRIBUTES) // 2


def _random_garment(rng: random.Random) -> Garment:
    return Garment(**{a: rng.choice(VALUES[a]) for a in ATTRIBUTES})


def _variants(garment: Garment, attributes: Sequence[str]) -> dict[str, list[Garment]]:
    """For each attribute, the garment with that attribute changed, to every other value."""
    return {
        a: [replace(garment, **{a: v}) for v in VALUES[a] if v != getattr(garment, a)]
        for a in attributes
    }


def _draw_garments(rng: random.Random, kind: str) -> list[Garment] | None:
    """[reference, target, four near misses], or None when too few near misses remain."""
    reference = _random_garment(rng)
    edited = rng.sample(ATTRIBUTES, 2) if kind == "compose" else [kind]
    target = replace(
        reference,
        **{a: rng.choice([v for v in VALUES[a] if v != getattr(reference, a)]) for a in edited},
    )
    others = [a for a in ATTRIBUTES if a not in edited]
    near = choose_near_misses(rng, reference, _variants(target, edited), _variants(target, others))
    return [reference, target, *near] if len(near) == NUM_NEAR_MISSES else None


def _random_image_set(rng: random.Random, seen: set[Garment], triplets: int = 2) -> ImageSet:
    """Six garments never used before and the triplets made from them. The edit (one of the
    six attributes, or two of them) is drawn uniformly before the garment."""
    kind = rng.choice([*ATTRIBUTES, "compose"])
    scenes = None
    while scenes is None or seen.intersection(scenes):
        scenes = _draw_garments(rng, kind)
    seen.update(scenes)
    return assemble_image_set(
        rng, scenes, triplets, lambda i, r: describe_difference(scenes[i], scenes[1], r)
    )


GARMENT_BENCHMARK = BenchmarkSpec(
    label="garment CIRR benchmark",
    descriptions_file=GARMENTS_FILE,
    new_set=_random_image_set,
    to_json=garment_to_json,
    render=render_garment,
)


def build_garment_benchmark(
    output_dir: str | Path,
    num_train_images: int = 4200,
    num_val_images: int = 1800,
    num_test_images: int = 300,
    image_size: int = 84,
    seed: int = 0,
    triplets_per_set: int = 4,
) -> Path:
    """Write the garment benchmark under `output_dir` and return that directory (the
    parameters of `build_synthetic_benchmark`; byte-identical files for equal arguments)."""
    sizes = (num_train_images, num_val_images, num_test_images)
    if sum(sizes) > MAX_IMAGES:
        raise ValueError(
            f"the garment benchmark holds at most {MAX_IMAGES} images, asked {sum(sizes)}"
        )
    return write_cirr_benchmark(
        GARMENT_BENCHMARK, output_dir, sizes, image_size, seed, triplets_per_set
    )


def main(argv: Sequence[str] | None = None) -> None:
    benchmark_main(
        build_garment_benchmark,
        "Render the garment composed-retrieval benchmark in the CIRR format.",
        argv,
    )


if __name__ == "__main__":
    main()
