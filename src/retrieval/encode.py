"""Batched, cached encoding of a split's gallery images and composed queries.

Image loading and preprocessing run in DataLoader workers, overlapping with the model's
forward. Embeddings are cached under the experiment's `embeddings/` folder, keyed by a
fingerprint of the model's weights, the rows (names and paths, or pairids, references and
captions), the prompts and the processor settings: mining and evaluation of the same
checkpoint encode once, and any change of those keys encodes again. Each cache entry is a
`.npy` matrix plus a `.json` with its row names and its key, readable with numpy alone.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm
from transformers import BatchFeature, ProcessorMixin

from src.data.images import load_image
from src.data.records import Split, Triplet
from src.distributed import rank, world_size
from src.experiment_io import write_json_atomic
from src.model.encoder import VLM2VecEncoder
from src.model.prompts import candidate_text, query_text
from src.model.registry import Backbone

logger = logging.getLogger(__name__)


def weights_fingerprint(encoder: VLM2VecEncoder) -> str:
    """A digest of every weight of the model (base and adapter), so a cache never outlives them."""
    digest = hashlib.blake2b(digest_size=16)
    for name, tensor in sorted(encoder.model.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().to("cpu").contiguous().view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def _digest(payload: object) -> str:
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()


def processor_settings(encoder: VLM2VecEncoder) -> dict:
    processor = encoder.processor
    return {
        "class": type(processor).__name__,
        "image_processor": processor.image_processor.to_dict(),
        "vocab_size": len(processor.tokenizer),
        "padding_side": processor.tokenizer.padding_side,
    }


@dataclass
class EncodingRows:
    """What to encode: one text and one image per row, with the row's name."""

    kind: str
    prompt: str
    names: list[str]
    images: list[str]
    texts: list[str]


def gallery_rows(
    split: Split, encoder: VLM2VecEncoder, names: list[str] | None = None
) -> EncodingRows:
    """Every distinct gallery image once, in `split.gallery_names()` order."""
    names = names if names is not None else split.gallery_names()
    text = candidate_text(encoder.backbone.image_token)
    return EncodingRows(
        "gallery", text, names, [split.images[n] for n in names], [text] * len(names)
    )


def query_rows(
    split: Split, triplets: list[Triplet], encoder: VLM2VecEncoder, instruction_set: str
) -> EncodingRows:
    token = encoder.backbone.image_token
    return EncodingRows(
        "queries",
        query_text(token, instruction_set, "{caption}"),
        [t.pairid for t in triplets],
        [split.images[t.reference] for t in triplets],
        [query_text(token, instruction_set, t.caption) for t in triplets],
    )


class RowDataset(Dataset):
    def __init__(self, rows: EncodingRows, indices: list[int]):
        self.rows = rows
        self.indices = indices

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> tuple[int, str, object]:
        index = self.indices[i]
        return index, self.rows.texts[index], load_image(self.rows.images[index])


@dataclass
class PackRows:
    """Collate (index, text, image) rows into model inputs; runs in the DataLoader workers."""

    processor: ProcessorMixin
    backbone: Backbone

    def __call__(self, items: list[tuple]) -> tuple[torch.Tensor, BatchFeature]:
        indices = torch.tensor([item[0] for item in items])
        texts = [item[1] for item in items]
        images = [item[2] for item in items]
        return indices, self.backbone.pack(self.processor, texts, images)


@torch.no_grad()
def encode_rows(
    encoder: VLM2VecEncoder,
    rows: EncodingRows,
    batch_size: int = 64,
    num_workers: int = 2,
    description: str | None = None,
) -> np.ndarray:
    """Embeddings (len(rows), d) float32, in row order; sharded over processes when several run."""
    world, this_rank = world_size(), rank()
    indices = list(range(this_rank, len(rows.names), world))
    loader = DataLoader(
        RowDataset(rows, indices),
        batch_size=batch_size,
        num_workers=num_workers,
        collate_fn=PackRows(encoder.processor, encoder.backbone),
    )
    device = next(encoder.parameters()).device
    was_training = encoder.training
    encoder.eval()
    local_indices, local_embeddings = [], []
    bar = tqdm(
        total=len(indices),
        desc=description or f"encode {rows.kind}",
        unit="item",
        disable=this_rank != 0,
    )
    for batch_indices, inputs in loader:
        embeddings = encoder(**inputs.to(device))
        local_indices.append(batch_indices)
        local_embeddings.append(embeddings.float().cpu())
        bar.update(len(batch_indices))
    bar.close()
    encoder.train(was_training)
    embeddings = torch.cat(local_embeddings) if local_embeddings else torch.zeros(0, 0)
    order = torch.cat(local_indices) if local_indices else torch.zeros(0, dtype=torch.long)
    if world > 1:
        embeddings, order = _gather_rows(embeddings, order)
    result = torch.empty_like(embeddings)
    result[order] = embeddings
    return result.numpy()


def _gather_rows(embeddings: torch.Tensor, order: torch.Tensor):
    gathered_embeddings = [None] * world_size()
    gathered_order = [None] * world_size()
    dist.all_gather_object(gathered_embeddings, embeddings)
    dist.all_gather_object(gathered_order, order)
    return torch.cat(gathered_embeddings), torch.cat(gathered_order)


class EmbeddingCache:
    """Cached embeddings of one experiment, one `.npy` + `.json` pair per key."""

    def __init__(self, directory: str | Path):
        self.directory = Path(directory)

    def key(
        self, encoder: VLM2VecEncoder, rows: EncodingRows, split_name: str, fingerprint: str
    ) -> dict:
        return {
            "kind": rows.kind,
            "split": split_name,
            "weights": fingerprint,
            "rows": _digest([rows.names, rows.images, rows.texts]),
            "prompt": rows.prompt,
            "processor": _digest(processor_settings(encoder)),
            "backbone": encoder.config.backbone,
        }

    def _paths(self, key: dict) -> tuple[Path, Path]:
        stem = f"{key['split']}_{key['kind']}_{_digest(key)[:20]}"
        return self.directory / f"{stem}.npy", self.directory / f"{stem}.json"

    def load(self, key: dict) -> np.ndarray | None:
        matrix_path, meta_path = self._paths(key)
        if not (matrix_path.is_file() and meta_path.is_file()):
            return None
        if json.loads(meta_path.read_text()).get("key") != key:
            return None
        return np.load(matrix_path)

    def save(self, key: dict, names: list[str], matrix: np.ndarray) -> None:
        matrix_path, meta_path = self._paths(key)
        self.directory.mkdir(parents=True, exist_ok=True)
        temporary = matrix_path.with_suffix(".tmp.npy")
        np.save(temporary, matrix)
        temporary.replace(matrix_path)
        write_json_atomic(meta_path, {"key": key, "rows": names, "shape": list(matrix.shape)})


def encode_cached(
    encoder: VLM2VecEncoder,
    rows: EncodingRows,
    split_name: str,
    cache: EmbeddingCache | None,
    fingerprint: str | None = None,
    batch_size: int = 64,
    num_workers: int = 2,
) -> np.ndarray:
    """Embeddings of `rows`, read from the cache when its key matches, else encoded and stored."""
    if cache is None:
        return encode_rows(encoder, rows, batch_size, num_workers)
    key = cache.key(encoder, rows, split_name, fingerprint or weights_fingerprint(encoder))
    cached = cache.load(key)
    if cached is not None:
        logger.info(
            "embeddings of %s %s read from cache (%d rows)", split_name, rows.kind, len(cached)
        )
        return cached
    matrix = encode_rows(encoder, rows, batch_size, num_workers, f"encode {split_name} {rows.kind}")
    if rank() == 0:
        cache.save(key, rows.names, matrix)
    return matrix
