"""A split's official metrics (or CIRR test1 submission files) from its embeddings."""

from __future__ import annotations

from src.data.records import Split
from src.retrieval.encode import EncodedSplit
from src.retrieval.metrics import (
    cirr_metrics,
    cirr_test_submission,
    fashioniq_metrics,
    query_rankings,
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
