"""A split's official metrics (or CIRR test1 submission files) from its embeddings, and
whether its queries need both modalities (`split_modalities`)."""

from __future__ import annotations

import numpy as np

from src.data.records import Split
from src.retrieval.encode import EncodedSplit
from src.retrieval.metrics import (
    CIRR_RECALL_KS,
    FASHIONIQ_KS,
    cirr_metrics,
    cirr_test_submission,
    fashioniq_metrics,
    modality_metrics,
    query_rankings,
    reference_queries,
    split_target_ranks,
)


def split_metrics(encoded: EncodedSplit, split: Split, dataset_name: str) -> dict[str, float]:
    """CIRR or FashionIQ validation metrics (percent) from a split's embeddings."""
    if dataset_name == "fashioniq":
        return fashioniq_metrics(
            encoded.queries,
            encoded.gallery,
            encoded.gallery_names,
            encoded.triplets,
            split.categories,
        )
    return cirr_metrics(encoded.queries, encoded.gallery, encoded.gallery_names, encoded.triplets)


def submission_files(encoded: EncodedSplit) -> tuple[dict, dict]:
    """The two CIRR test1 submission files' contents."""
    return cirr_test_submission(
        encoded.queries, encoded.gallery, encoded.gallery_names, encoded.triplets
    )


def split_rankings(encoded: EncodedSplit, split: Split, dataset_name: str, k: int = 5) -> dict:
    """Each query's target rank and top-k images, ranked as the split's metrics rank them."""
    categories = split.categories if dataset_name == "fashioniq" else None
    return query_rankings(
        encoded.queries, encoded.gallery, encoded.gallery_names, encoded.triplets, categories, k
    )


def split_modalities(
    encoded: EncodedSplit, split: Split, dataset_name: str
) -> tuple[dict, dict[str, dict]]:
    """The composed, image-only and text-only rankings of a labelled split's queries
    (src/retrieval/metrics.py says how each is made), over the split's recall Ks (CIRR 1,
    5, 10, 50; FashionIQ 10, 50).

    Returns:
        (`modality_metrics`'s block, {pairid: {"image_rank", "text_rank"}}: 1-based, None
        where the target cannot be retrieved).
    """
    if encoded.text_queries is None:
        raise ValueError("the split's text-only queries were not encoded")
    categories = split.categories if dataset_name == "fashioniq" else None
    gallery = (encoded.gallery, encoded.gallery_names, encoded.triplets, categories)
    composed = split_target_ranks(encoded.queries, *gallery)
    images = reference_queries(encoded.gallery, encoded.gallery_names, encoded.triplets)
    image = split_target_ranks(images, *gallery)
    text = split_target_ranks(encoded.text_queries, *gallery)
    ks = FASHIONIQ_KS if dataset_name == "fashioniq" else CIRR_RECALL_KS
    block = modality_metrics(composed, image, text, ks)

    def rank(value: float) -> int | None:
        return None if np.isinf(value) else int(value)

    ranks = {
        str(t.pairid): {"image_rank": rank(i), "text_rank": rank(x)}
        for t, i, x in zip(encoded.triplets, image, text, strict=True)
    }
    return block, ranks
