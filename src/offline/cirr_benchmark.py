"""The CIRR on-disk format of the synthetic benchmarks: image sets and the one writer.

Every synthetic benchmark (shapes, garments) is made of CIRR image sets of six: a
reference R, its target T and four near misses, each T with one attribute changed, so
that retrieval has to get every word of the modification text right. From each set come
R -> T and `triplets_per_set - 1` near misses -> T. A domain draws the descriptions and
writes the captions; this module shuffles the set, picks the triplets and writes the
files exactly as real CIRR lays them out (captions/cap.rc2.{split}.json,
image_splits/split.rc2.{split}.json, train images bucketed in ./train/<set id // 100>/),
plus the domain's descriptions file that lets the captioners read every image.
"""

from __future__ import annotations

import argparse
import inspect
import itertools
import json
import random
import time
from collections.abc import Callable, Hashable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

SET_SIZE = 6
NUM_NEAR_MISSES = SET_SIZE - 2
_SPLITS = (("train", "train", "train"), ("val", "dev", "dev"), ("test1", "test1", "test1"))
_TRAIN_BUCKET = 100  # train images live in ./train/<set id // 100>/, as real CIRR buckets them


@dataclass
class ImageSet:
    members: list[Hashable]  # descriptions, in member order
    triplets: list[tuple[int, int, str]]  # (reference index, target index, caption)


def interleave(rng: random.Random, groups: Mapping[str, list]) -> list:
    """The items of all groups in random order, taking the groups in turn so that the first
    picks come from different groups (attributes)."""
    lists = [rng.sample(group, len(group)) for group in groups.values()]
    rng.shuffle(lists)
    return [s for row in itertools.zip_longest(*lists) for s in row if s is not None]


def choose_near_misses(
    rng: random.Random, reference: Hashable, touched: Mapping[str, list], others: Mapping[str, list]
) -> list:
    """Up to four near misses: two (where possible) from `touched` (variants of what the
    edit changed), the rest from `others`, each spread over the groups; never the reference."""
    first, rest = interleave(rng, touched), interleave(rng, others)
    pool = first[:2] + rest + first[2:]
    return [s for s in pool if s != reference][:NUM_NEAR_MISSES]


def assemble_image_set(
    rng: random.Random,
    scenes: Sequence[Hashable],
    triplets: int,
    caption: Callable[[int, random.Random], str],
) -> ImageSet:
    """The set of `scenes` = [reference, target, four near misses] in a random member order,
    with R -> T and `triplets - 1` random near misses -> T; `caption(i, rng)` writes the
    text from scenes[i] to the target."""
    order = list(range(SET_SIZE))
    rng.shuffle(order)
    members = [scenes[i] for i in order]
    if triplets == 2:
        chosen = [rng.randrange(NUM_NEAR_MISSES)]
    else:
        chosen = rng.sample(range(NUM_NEAR_MISSES), triplets - 1)
    sources = [0] + [2 + k for k in chosen]
    return ImageSet(members, [(order.index(s), order.index(1), caption(s, rng)) for s in sources])


def _write_json(path: Path, data: object, indent: int | None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as f:
        json.dump(data, f, indent=indent)
        f.write("\n")


@dataclass(frozen=True)
class BenchmarkSpec:
    """What a domain hands the writer: how to draw a set, and how to save a description."""

    label: str  # for the summary line, e.g. "synthetic CIRR benchmark"
    descriptions_file: str
    new_set: Callable[[random.Random, set, int], ImageSet]  # (rng, seen, triplets per set)
    to_json: Callable[[Hashable], object]
    render: Callable[[Hashable, int], Image.Image]  # (description, image size)


def write_cirr_benchmark(
    spec: BenchmarkSpec,
    output_dir: str | Path,
    sizes: tuple[int, int, int],
    image_size: int,
    seed: int,
    triplets_per_set: int,
) -> Path:
    """Write a benchmark of `sizes` = (train, val, test1) images (whole sets of six are
    used) under `output_dir` and return that directory. One `random.Random(seed)` draws
    everything in a fixed order, so the same arguments give byte-identical files."""
    if not 2 <= triplets_per_set <= 1 + NUM_NEAR_MISSES:
        raise ValueError(f"triplets_per_set must be 2 to {1 + NUM_NEAR_MISSES}")
    for (split, _, _), num_images in zip(_SPLITS, sizes, strict=True):
        if num_images < SET_SIZE:
            raise ValueError(f"{split} needs at least {SET_SIZE} images, got {num_images}")
    start = time.perf_counter()
    root = Path(output_dir)
    rng = random.Random(seed)
    seen: set = set()
    descriptions: dict[str, object] = {}
    renders: list[tuple[Path, Hashable]] = []
    pairid = 0
    counts = []
    for (split, prefix, folder), num_images in zip(_SPLITS, sizes, strict=True):
        captions, image_paths = [], {}
        for set_id in range(num_images // SET_SIZE):
            image_set = spec.new_set(rng, seen, triplets_per_set)
            names = [f"{prefix}-{set_id}-{i // 2}-img{i % 2}" for i in range(SET_SIZE)]
            subfolder = f"{folder}/{set_id // _TRAIN_BUCKET}" if split == "train" else folder
            for name, member in zip(names, image_set.members, strict=True):
                image_paths[name] = f"./{subfolder}/{name}.png"
                descriptions[name] = spec.to_json(member)
                renders.append((root / subfolder / f"{name}.png", member))
            for ref, tgt, caption in image_set.triplets:
                entry: dict = {"pairid": pairid, "reference": names[ref]}
                if split != "test1":
                    entry["target_hard"] = names[tgt]
                    entry["target_soft"] = {names[tgt]: 1.0} | {
                        n: -1.0 for i, n in enumerate(names) if i not in (ref, tgt)
                    }
                entry["caption"] = caption
                entry["img_set"] = {"id": set_id, "members": names, "reference_rank": ref}
                if split != "test1":
                    entry["img_set"]["target_rank"] = tgt
                captions.append(entry)
                pairid += 1
        _write_json(root / "captions" / f"cap.rc2.{split}.json", captions, indent=1)
        _write_json(root / "image_splits" / f"split.rc2.{split}.json", image_paths, indent=1)
        counts.append((split, len(image_paths), len(captions)))
    _write_json(root / spec.descriptions_file, descriptions, indent=None)
    for path, member in renders:
        path.parent.mkdir(parents=True, exist_ok=True)
        spec.render(member, image_size).save(path, format="PNG")
    summary = ", ".join(f"{s}: {n} images / {t} triplets" for s, n, t in counts)
    print(f"{spec.label} ({summary}) in {time.perf_counter() - start:.1f}s -> {root}")
    return root


_CLI_HELP = {
    "num_train_images": "train images (a multiple of 6 is used)",
    "num_val_images": "val (dev) images (a multiple of 6 is used)",
    "num_test_images": "test1 images (a multiple of 6 is used)",
    "image_size": "image side in pixels",
    "seed": "random seed; same seed, same files",
    "triplets_per_set": "triplets per image set (2-5)",
}


def benchmark_main(
    build: Callable[..., Path], description: str, argv: Sequence[str] | None = None
) -> None:
    """The command line of a benchmark builder: --output_dir and one flag per parameter,
    with the builder's own defaults."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--output_dir", required=True, help="directory to write the benchmark to")
    parameters = inspect.signature(build).parameters
    for name, help_text in _CLI_HELP.items():
        parser.add_argument(f"--{name}", type=int, default=parameters[name].default, help=help_text)
    args = vars(parser.parse_args(argv))
    build(args.pop("output_dir"), **args)
