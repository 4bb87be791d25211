"""Which (query, hard negative) pairs of a round get a new modification text."""

from __future__ import annotations

import random
from dataclasses import dataclass

from src.data.records import Triplet


@dataclass(frozen=True)
class CaptionPair:
    """One captioning request: turn `reference` into the mined `negative`.

    `pairid` is the new triplet's id, unique over rounds: aug{round}_{source pairid}_{j}
    where j is the negative's place in the query's mined list.
    """

    pairid: str
    source_pairid: str
    reference: str
    reference_path: str
    negative: str
    negative_path: str
    original_caption: str
    original_target: str | None


def select_pairs(
    triplets: list[Triplet],
    images: dict[str, str],
    mined: dict[str, list[str]],
    iteration: int,
    per_query: int,
    limit: int | None,
    random_seed: int | None = None,
) -> tuple[list[CaptionPair], int]:
    """The pairs to caption and how many there were before `limit`.

    `mined`: each query's mined negatives, in rank order; each gives its first `per_query`. The pairs are ordered by the
    negative's place first (every query's hardest negative, then every query's second,
    ...), so that a `limit` keeps as many different queries as it can. With `random_seed`
    (the control that asks whether *hard* pairs matter), each pair's image is a random
    gallery image instead of the mined negative (never the reference or a positive): the
    same queries and the same number of pairs.
    """
    by_pairid = {t.pairid: t for t in triplets}
    missing = [pairid for pairid in mined if pairid not in by_pairid]
    if missing:
        raise ValueError(
            f"{len(missing)} mined queries (e.g. {missing[0]!r}) are not in the training split; "
            "the hard negatives were mined on other data (see --max_train_samples)"
        )
    gallery = sorted(images)
    pairs = []
    for j in range(per_query):
        for pairid, negatives in mined.items():
            if j >= len(negatives):
                continue
            triplet, negative = by_pairid[pairid], negatives[j]
            if random_seed is not None:
                negative = _random_image(triplet, gallery, f"{random_seed}:{pairid}:{j}")
            pairs.append(
                CaptionPair(
                    pairid=f"aug{iteration}_{pairid}_{j}",
                    source_pairid=pairid,
                    reference=triplet.reference,
                    reference_path=images[triplet.reference],
                    negative=negative,
                    negative_path=images[negative],
                    original_caption=triplet.caption,
                    original_target=triplet.target,
                )
            )
    return (pairs if limit is None else pairs[:limit]), len(pairs)


def _random_image(triplet: Triplet, gallery: list[str], seed: str) -> str:
    """A random gallery image that is neither the query's reference nor one of its positives."""
    excluded = {triplet.reference, triplet.target} | set(triplet.target_soft)
    rng = random.Random(seed)
    while (name := gallery[rng.randrange(len(gallery))]) in excluded:
        pass
    return name


def pair_rows(pairs: list[CaptionPair]) -> list[list]:
    """What identifies the requests (their digest is in the meta, so a cached or partial
    file is reused only for the same ones). Image paths are left out: moving the dataset
    does not change what is asked."""
    fields = ("pairid", "reference", "negative", "original_caption", "original_target")
    return [[getattr(p, f) for f in fields] for p in pairs]
