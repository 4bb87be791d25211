"""Encode a split with a saved checkpoint, through the experiment's embedding cache.

The one way the job turns a checkpoint into embeddings (mining, evaluation, the check of
new texts, the report): the cache key comes from the checkpoint's verified fingerprint and
its processor, both read without the weights, so a fully cached split never loads the
model; otherwise the weights are loaded once, used for everything not cached, and released
by `close()`.
"""

from __future__ import annotations

import gc
import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from src.arguments import EncodeArguments, ModelArguments, result_options
from src.data.records import Split, Triplet
from src.distributed import decided_by_main, is_main
from src.model.encoder import VLM2VecEncoder, load_embedder_config, load_encoder
from src.model.registry import get_backbone, load_processor
from src.retrieval.encode import (
    EmbeddingCache,
    EncodedSplit,
    EncodingRows,
    encode_rows,
    gallery_rows,
    query_rows,
    text_query_rows,
)

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class EncodeSettings:
    """How to run an encoder: the encoding flags (`EncodeArguments`: batch size, a pixel
    budget that overrides the checkpoint's own; its result-changing flags are part of the
    cache key), DataLoader workers, the weights' dtype (--torch_dtype's), and the image
    store's directory (None: decode every image each time; the embeddings are the same)."""

    options: EncodeArguments = field(default_factory=EncodeArguments)
    num_workers: int = 0
    dtype: str = ModelArguments.torch_dtype
    image_store: str | None = None


class CheckpointEncoder:
    """Embeddings of one checkpoint (`fingerprint`: the digest of its files on disk)."""

    def __init__(
        self,
        checkpoint: str | Path,
        fingerprint: str,
        cache: EmbeddingCache | None,
        settings: EncodeSettings,
    ):
        self.checkpoint = Path(checkpoint)
        self.fingerprint = fingerprint
        self.cache = cache
        self.settings = settings
        config = load_embedder_config(self.checkpoint)
        if config is None:
            raise ValueError(f"{self.checkpoint} holds no embedder_config.json")
        backbone = get_backbone(config.backbone)
        self.backbone_name = config.backbone
        self.image_token = backbone.image_token
        self.processor = load_processor(self.checkpoint)
        options = settings.options
        backbone.apply_pixel_budget(self.processor, options.encode_min_pixels, options.encode_max_pixels)
        self._encoder: VLM2VecEncoder | None = None
        self.encoded_rows = 0  # rows run through the model (not read from the cache)

    def __enter__(self) -> CheckpointEncoder:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def _model(self) -> VLM2VecEncoder:
        if self._encoder is None:
            settings = self.settings
            self._encoder = load_encoder(
                self.checkpoint,
                dtype=settings.dtype,
                min_pixels=settings.options.encode_min_pixels,
                max_pixels=settings.options.encode_max_pixels,
            )
        return self._encoder

    def close(self) -> None:
        """Release the weights (the next encoding loads them again)."""
        if self._encoder is not None:
            self._encoder = None
            gc.collect()
            if torch.cuda.is_available():
                torch.cuda.empty_cache()

    def encode(self, rows: EncodingRows, split_name: str, use_cache: bool = True) -> np.ndarray:
        """Embeddings of `rows`, from the cache when an entry with the same key verifies."""
        cache = self.cache if use_cache else None
        key = None
        if cache is not None:
            key = cache.key(
                rows, split_name, self.fingerprint, self.backbone_name, self.processor, self.options()
            )
            if decided_by_main(lambda: cache.verified(key)):  # every process encodes, or none
                cached = cache.read(key)
                logger.info(
                    "embeddings of %s %s read from cache (%d rows)",
                    split_name,
                    rows.kind,
                    len(cached),
                )
                return cached
        settings = self.settings
        matrix = encode_rows(
            self._model(),
            rows,
            settings.options.encode_batch_size,
            settings.num_workers,
            f"encode {split_name} {rows.kind}",
            settings.image_store,
        )
        self.encoded_rows += len(rows.names)
        if cache is not None and is_main():
            cache.save(key, rows.names, matrix)
        return matrix

    def options(self) -> dict:
        """The encoding flags that change embeddings (part of every cache key)."""
        return result_options(self.settings.options)

    def gallery(self, split: Split) -> tuple[list[str], np.ndarray]:
        rows = gallery_rows(split, self.image_token)
        return rows.names, self.encode(rows, split.name)

    def queries(
        self, split: Split, triplets: list[Triplet], instruction_set: str, use_cache: bool = True
    ) -> np.ndarray:
        rows = query_rows(split, triplets, self.image_token, instruction_set)
        return self.encode(rows, split.name, use_cache)

    def text_queries(
        self, split: Split, triplets: list[Triplet], instruction_set: str
    ) -> np.ndarray:
        """The queries' modification texts without their images (its own cache entry)."""
        return self.encode(text_query_rows(triplets, instruction_set), split.name)

    def encode_split(
        self, split: Split, triplets: list[Triplet], instruction_set: str, text_only: bool = False
    ) -> EncodedSplit:
        """The split's gallery (each distinct image once) and the queries of `triplets`;
        with `text_only`, their text-only queries too."""
        names, gallery = self.gallery(split)
        queries = self.queries(split, triplets, instruction_set)
        texts = self.text_queries(split, triplets, instruction_set) if text_only else None
        return EncodedSplit(names, gallery, triplets, queries, texts)
