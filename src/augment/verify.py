"""`--verify_augmented`: does the round's current embedder read the new text as intended?

A new triplet (reference, new text, hard negative) is kept only if the embedder that mined
the negative (checkpoint_iter_{i-1}) scores the hard negative above the query's original
target for the new text. The gallery embeddings come from the experiment's cache (mining
stored them for the same checkpoint); only the new queries are encoded.
"""

from __future__ import annotations

import gc
from typing import TYPE_CHECKING

import torch

from src.augment.pairs import CaptionPair
from src.data.records import Triplet
from src.experiment_io import read_json
from src.model.encoder import default_device, load_encoder
from src.retrieval.encode import (
    EmbeddingCache,
    encode_cached,
    encode_rows,
    gallery_rows,
    query_rows,
)

if TYPE_CHECKING:
    from src.rounds import Job

VERIFY_REASON = "embedder_prefers_original_target"


def embedder_scores(
    job: Job, iteration: int, kept: list[tuple[CaptionPair, str]]
) -> dict[str, tuple[float, float]]:
    """{pairid: (score of the hard negative, score of the original target)} for each new text."""
    if not kept:
        return {}
    experiment, split = job.experiment, job.train_split
    checkpoint = experiment.checkpoint(iteration - 1)
    fingerprint = read_json(checkpoint / "stage.json")["fingerprint"]
    device = default_device()
    encoder = load_encoder(checkpoint, dtype=job.model_args.torch_dtype).to(device)
    batch_size = job.iter_args.encode_batch_size
    workers = job.training_args.dataloader_num_workers
    try:
        gallery = gallery_rows(split, encoder)
        gallery_embeddings = encode_cached(
            encoder,
            gallery,
            split.name,
            EmbeddingCache(experiment.embeddings_dir),
            fingerprint,
            batch_size,
            workers,
        )
        triplets = [
            Triplet(
                pair.pairid, pair.reference, text, pair.negative, source=f"augmented:{iteration}"
            )
            for pair, text in kept
        ]
        queries = encode_rows(
            encoder,
            query_rows(split, triplets, encoder, job.instruction_set),
            batch_size,
            workers,
            "encode new texts",
        )
    finally:
        del encoder
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    row = {name: i for i, name in enumerate(gallery.names)}
    negatives = gallery_embeddings[[row[pair.negative] for pair, _ in kept]]
    targets = gallery_embeddings[[row[pair.original_target] for pair, _ in kept]]
    negative_scores, target_scores = (queries * negatives).sum(1), (queries * targets).sum(1)
    return {
        pair.pairid: (float(negative_scores[i]), float(target_scores[i]))
        for i, (pair, _) in enumerate(kept)
    }
