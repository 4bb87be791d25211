"""`--verify_augmented`: does the round's current embedder read the new text as intended?

A new triplet (reference, new text, hard negative) is kept only if the embedder that mined
the negative (checkpoint_iter_{i-1}) scores the hard negative above the query's original
target for the new text. The gallery embeddings come from the experiment's cache (mining
stored them for the same checkpoint); only the new queries are encoded.
"""

from __future__ import annotations

from src.augment.filters import FilterResult, Kept, Rejection
from src.data.records import Split, Triplet
from src.retrieval.checkpoint_encoding import CheckpointEncoder

VERIFY_REASON = "embedder_prefers_original_target"


def embedder_scores(
    encoder: CheckpointEncoder, split: Split, kept: Kept, iteration: int, instruction_set: str
) -> dict[str, tuple[float, float]]:
    """{pairid: (score of the hard negative, score of the original target)} for each new text."""
    if not kept:
        return {}
    names, gallery = encoder.gallery(split)
    triplets = [
        Triplet(pair.pairid, pair.reference, text, pair.negative, source=f"augmented:{iteration}")
        for pair, text in kept
    ]
    queries = encoder.queries(split, triplets, instruction_set, use_cache=False)
    row = {name: i for i, name in enumerate(names)}
    negatives = gallery[[row[pair.negative] for pair, _ in kept]]
    targets = gallery[[row[pair.original_target] for pair, _ in kept]]
    negative_scores, target_scores = (queries * negatives).sum(1), (queries * targets).sum(1)
    return {
        pair.pairid: (float(negative_scores[i]), float(target_scores[i]))
        for i, (pair, _) in enumerate(kept)
    }


def filter_by_embedder(kept: Kept, scores: dict[str, tuple[float, float]]) -> FilterResult:
    """Keep what the embedder scores higher against the hard negative than the original target."""
    result = FilterResult()
    for pair, text in kept:
        negative_score, target_score = scores[pair.pairid]
        if negative_score > target_score:
            result.kept.append((pair, text))
        else:
            result.rejected.append(Rejection(pair, text, VERIFY_REASON))
    return result
