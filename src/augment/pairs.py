"""Which (query, hard negative) pairs of a round get a new modification text.

The method captions the model's own failures: a pair is a *failure* when the mined negative
ranks above the query's target under the checkpoint that mined it (ReCALL's definition:
the retriever preferred the negative). `--augment_selection failures` (the default) keeps
only failures, at most `--augment_pairs_per_query` per query (its highest-ranked ones),
orders them across all queries by how badly the model fails, and the cap
(`--max_augmented_per_iteration`) keeps the hardest.

How badly: the negative's score minus the target's score (cosine similarities under the
mining checkpoint). It is the margin by which the model prefers the wrong image, the
quantity the contrastive loss itself acts on (the logit gap divided by the temperature),
comparable across queries; a rank-based measure would depend on how many look-alikes a
query's gallery happens to hold. Ties keep the mined file's query order, then the
negative's place. On real data the most confident failures are also where unlabelled
positives hide; `--consistency_filter` flags those.

`--augment_selection file_order` is the earlier selection, kept for the ablation that
measures what the fix is worth: every query's first negatives in the mined file's order
(each query's first, then each query's second, ...), failure or not, so a cap keeps the
first queries of the training file.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from src.arguments import AUGMENT_SELECTIONS
from src.artifacts import MinedQuery
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


@dataclass(frozen=True)
class PairSelection:
    """The pairs to caption (hardest first under `failures`) and what they were chosen from.

    `available`: pairs before the cap; `failures`: mined pairs whose negative ranks above
    the target (every one, before the per-query limit), over `failure_queries` queries."""

    pairs: list[CaptionPair]
    available: int
    failures: int
    failure_queries: int


def is_failure(query: MinedQuery, place: int) -> bool:
    """Whether the query's `place`-th mined negative ranks above its target (random
    negatives have no rank: never a failure)."""
    negative = query.negatives[place]
    return negative.rank is not None and query.target_rank is not None and negative.rank < query.target_rank


def select_pairs(
    triplets: list[Triplet],
    images: dict[str, str],
    mined: dict[str, MinedQuery],
    iteration: int,
    per_query: int,
    limit: int | None,
    selection: str = "failures",
    random_seed: int | None = None,
) -> PairSelection:
    """The pairs to caption under `selection` (module docstring), capped at `limit`.

    `mined`: each query's mined negatives, in rank order, with the target's rank and score.
    With `random_seed` (the control that asks whether *hard* pairs matter), each pair's
    image is a random gallery image instead of the mined negative (never the reference or
    a positive): the same queries and the same number of pairs.
    """
    if selection not in AUGMENT_SELECTIONS:
        raise ValueError(f"unknown pair selection {selection!r}; choose one of {AUGMENT_SELECTIONS}")
    by_pairid = {t.pairid: t for t in triplets}
    missing = [pairid for pairid in mined if pairid not in by_pairid]
    if missing:
        raise ValueError(
            f"{len(missing)} mined queries (e.g. {missing[0]!r}) are not in the training split; "
            "the hard negatives were mined on other data (see --max_train_samples)"
        )
    failing = {
        pairid: [j for j in range(len(query.negatives)) if is_failure(query, j)]
        for pairid, query in mined.items()
    }
    if selection == "failures":
        chosen = _hardest_failures(mined, failing, per_query)
    else:
        chosen = [
            (pairid, j)
            for j in range(per_query)
            for pairid, query in mined.items()
            if j < len(query.negatives)
        ]
    gallery = sorted(images)
    pairs = []
    for pairid, j in chosen if limit is None else chosen[:limit]:
        triplet, negative = by_pairid[pairid], mined[pairid].negatives[j].image
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
    return PairSelection(
        pairs,
        available=len(chosen),
        failures=sum(len(places) for places in failing.values()),
        failure_queries=sum(1 for places in failing.values() if places),
    )


def _hardest_failures(
    mined: dict[str, MinedQuery], failing: dict[str, list[int]], per_query: int
) -> list[tuple[str, int]]:
    """(pairid, place) of each query's first `per_query` failures, the largest negative
    score minus target score first; ties in the mined file's order."""
    ranked = []
    for order, (pairid, query) in enumerate(mined.items()):
        for j in failing[pairid][:per_query]:
            if query.negatives[j].score is None or query.target_score is None:
                raise ValueError(f"query {pairid!r}: a failure without scores cannot be ranked")
            gap = query.negatives[j].score - query.target_score
            ranked.append((-gap, order, j, pairid))
    return [(pairid, j) for _, _, j, pairid in sorted(ranked)]


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
