"""Encode a split (through the cache) and compute its official metrics."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from src.data.records import Split, Triplet
from src.model.encoder import VLM2VecEncoder
from src.retrieval.encode import EmbeddingCache, encode_cached, gallery_rows, query_rows
from src.retrieval.metrics import cirr_metrics, cirr_test_submission, fashioniq_metrics


@dataclass
class EncodedSplit:
    gallery_names: list[str]
    gallery: np.ndarray
    triplets: list[Triplet]
    queries: np.ndarray


def encode_split(
    encoder: VLM2VecEncoder,
    split: Split,
    triplets: list[Triplet],
    instruction_set: str,
    cache: EmbeddingCache | None,
    fingerprint: str | None,
    batch_size: int = 64,
    num_workers: int = 2,
) -> EncodedSplit:
    """Gallery (each distinct image once) and query embeddings of a split."""
    gallery = gallery_rows(split, encoder)
    queries = query_rows(split, triplets, encoder, instruction_set)
    return EncodedSplit(
        gallery.names,
        encode_cached(encoder, gallery, split.name, cache, fingerprint, batch_size, num_workers),
        triplets,
        encode_cached(encoder, queries, split.name, cache, fingerprint, batch_size, num_workers),
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
