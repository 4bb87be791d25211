"""The augmentation stage of round i: new modification texts for mined hard negatives.

For each mined query and each of its first `pairs_per_query` hard negatives, a captioner
writes a text that turns the query's reference image into that negative; the triplet
(reference, new text, negative) becomes a positive of round i, with the query's original
target as its own hard negative (the old target no longer matches the new text).

Captioners available here: `scene_oracle` (the synthetic benchmark's exact scene
difference, standing in for a perfect foundation model and named as such in the meta)
and `none` (skip augmentation, recorded in the meta). On real data no captioner is chosen
silently: the run stops and says which flag to pass.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

from src.data.records import Triplet
from src.data.synthetic import describe_difference, load_scenes
from src.distributed import barrier, rank
from src.experiment_io import read_json, write_json_atomic

logger = logging.getLogger("augment")

PAIRS_PER_QUERY = 1
CAPTIONERS = ("scene_oracle", "none")


def choose_captioner(foundation_model_backbone: str | None, synthetic: bool) -> str:
    """The captioner of this run, or a clear error where none may be chosen silently."""
    if foundation_model_backbone is None:
        if synthetic:
            return "scene_oracle"
        raise ValueError(
            "no foundation model for augmentation on real data: pass --foundation_model_path "
            "(with --foundation_model_backbone), or --foundation_model_backbone none to skip "
            "augmentation"
        )
    if foundation_model_backbone not in CAPTIONERS:
        raise ValueError(
            f"--foundation_model_backbone {foundation_model_backbone!r} is not available in this "
            f"version; choose one of {CAPTIONERS}"
        )
    if foundation_model_backbone == "scene_oracle" and not synthetic:
        raise ValueError(
            "--foundation_model_backbone scene_oracle reads scenes.json and works only on the "
            "synthetic benchmark"
        )
    return foundation_model_backbone


def scene_oracle_samples(
    dataset_path: str | Path, triplets: dict, mined: dict, iteration: int
) -> tuple[list[dict], dict]:
    """New triplets from the exact scene differences, and the count of each rejection."""
    scenes = load_scenes(dataset_path)
    samples, seen = [], set()
    stats = {"pairs": 0, "kept": 0, "not_describable": 0, "same_as_original": 0, "duplicate": 0}
    for pairid, query in mined.items():
        triplet = triplets[pairid]
        for j, negative in enumerate(query["negatives"][:PAIRS_PER_QUERY]):
            stats["pairs"] += 1
            caption = describe_difference(scenes[triplet.reference], scenes[negative["image"]])
            if caption is None:
                stats["not_describable"] += 1
            elif caption == triplet.caption:
                stats["same_as_original"] += 1
            elif (triplet.reference, caption) in seen:
                stats["duplicate"] += 1
            else:
                seen.add((triplet.reference, caption))
                samples.append(
                    {
                        "pairid": f"aug{iteration}_{pairid}_{j}",
                        "reference": triplet.reference,
                        "caption": caption,
                        "target": negative["image"],
                        "source_pairid": pairid,
                        "original_caption": triplet.caption,
                        "original_target": triplet.target,
                        "generator": "scene_oracle",
                    }
                )
    stats["kept"] = len(samples)
    return samples, stats


def run_augmentation(job, iteration: int) -> None:
    """Write augmented_samples_iter_{iteration}.json unless a matching one exists."""
    experiment = job.experiment
    output = experiment.augmented(iteration)
    captioner = choose_captioner(job.iter_args.foundation_model_backbone, job.synthetic)
    mined_file = experiment.hard_negatives(iteration - 1)
    mined_meta = read_json(mined_file)["meta"]
    meta = {
        "generator": captioner,
        "stands_in_for_a_foundation_model": captioner == "scene_oracle",
        "hard_negatives": mined_file.name,
        "hard_negatives_fingerprint": mined_meta["checkpoint_fingerprint"],
        "pairs_per_query": PAIRS_PER_QUERY,
    }
    if output.is_file() and read_json(output)["meta"] == meta:
        logger.info("%s is done, skipping augmentation", output.name)
        return
    start = time.perf_counter()
    if captioner == "none":
        samples, stats = [], {"skipped": "--foundation_model_backbone none"}
    else:
        triplets = {t.pairid: t for t in job.train_split.triplets}
        mined = read_json(mined_file)["queries"]
        samples, stats = scene_oracle_samples(job.dataset_path, triplets, mined, iteration)
    if rank() == 0:
        write_json_atomic(output, {"meta": meta, "stats": stats, "samples": samples})
        experiment.record_stage("augment", iteration, {"generator": captioner, "stats": stats})
    logger.info(
        "augmentation (%s): %d new triplets in %.1f s; %s",
        captioner,
        len(samples),
        time.perf_counter() - start,
        stats,
    )
    barrier()


@dataclass
class AugmentedSamples:
    """What the augmentation stage adds to a round's training data."""

    triplets: list[Triplet] = field(default_factory=list)
    negatives: dict[str, list[str]] = field(default_factory=dict)
    false_negatives: dict[str, list[str]] = field(default_factory=dict)


def augmented_training_samples(experiment, iteration: int, pool: str) -> AugmentedSamples:
    """The augmented triplets that round `iteration` trains on.

    `pool="current"` takes round `iteration`'s file only; `"cumulative"` those of rounds
    1..iteration. Each new triplet's hard negative is its source query's original target,
    which the new text no longer describes. Mined negatives flagged as likely false
    negatives (by the consistency check) are reported so the round drops them.
    """
    if pool not in ("current", "cumulative"):
        raise ValueError(f"--augmented_pool must be current or cumulative, not {pool!r}")
    rounds = [iteration] if pool == "current" else range(1, iteration + 1)
    result = AugmentedSamples()
    for i in rounds:
        payload = read_json(experiment.augmented(i))
        for sample in payload["samples"]:
            result.triplets.append(
                Triplet(
                    pairid=sample["pairid"],
                    reference=sample["reference"],
                    caption=sample["caption"],
                    target=sample["target"],
                    source=f"augmented:{i}",
                )
            )
            result.negatives[sample["pairid"]] = [sample["original_target"]]
        if i == iteration:
            result.false_negatives = payload.get("false_negatives", {})
    return result
