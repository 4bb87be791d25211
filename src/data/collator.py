"""Turn dataset items into model inputs: queries and candidates, in chunks.

Inputs come as lists of chunks of at most `chunk_size` rows each. The plain loss uses one
chunk per side; the cached (GradCache) loss runs the model chunk by chunk. Every chunk is
padded on its own, which is harmless because an embedding does not depend on its batch.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from PIL import Image
from transformers import ProcessorMixin

from src.model.prompts import candidate_text, query_text
from src.model.registry import Backbone


def _chunks(items: list, size: int) -> list[list]:
    return [items[i : i + size] for i in range(0, len(items), size)]


@dataclass
class ContrastiveCollator:
    processor: ProcessorMixin
    backbone: Backbone
    instruction_set: str = "cirr"
    chunk_size: int | None = None

    def pack_queries(self, images: list[Image.Image], captions: list[str]) -> list:
        texts = [query_text(self.backbone.image_token, self.instruction_set, c) for c in captions]
        return self._pack(texts, images)

    def pack_candidates(self, images: list[Image.Image]) -> list:
        texts = [candidate_text(self.backbone.image_token)] * len(images)
        return self._pack(texts, images)

    def _pack(self, texts: list[str], images: list[Image.Image]) -> list:
        size = self.chunk_size or max(len(texts), 1)
        return [
            self.backbone.pack(self.processor, text_chunk, image_chunk)
            for text_chunk, image_chunk in zip(
                _chunks(texts, size), _chunks(images, size), strict=True
            )
        ]

    def __call__(self, features: list[dict]) -> dict:
        negatives = [image for f in features for image in f["negatives"]]
        return {
            "query_chunks": self.pack_queries(
                [f["reference"] for f in features], [f["caption"] for f in features]
            ),
            "candidate_chunks": self.pack_candidates([f["target"] for f in features] + negatives),
            "positive_ids": torch.tensor([f["target_id"] for f in features]),
            "negative_ids": torch.tensor(
                [i for f in features for i in f["negative_ids"]], dtype=torch.long
            ),
            "group_ids": torch.tensor([f["group_id"] for f in features]),
            "query_ids": torch.tensor([f["query_id"] for f in features]),
            "negative_owners": torch.tensor(
                [f["query_id"] for f in features for _ in f["negative_ids"]], dtype=torch.long
            ),
        }
