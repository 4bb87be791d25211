"""Batched, cached encoding of a split's gallery images and composed queries.

Image loading and preprocessing run in DataLoader workers, overlapping with the model's
forward; with an image store, images come already resized to the encoder's pixel budget
(src/data/image_store.py), with the same pixel values. Embeddings are cached under the
experiment's `embeddings/` folder, keyed by the fingerprint of the weights (for a saved
checkpoint: a digest of its files on disk, see `Experiment.verified_checkpoint`), the rows
(names and paths, or pairids, references and captions), the prompts and the processor
settings: mining and evaluation of the same checkpoint encode once, and any change of
those keys encodes again. The text-only queries of the evaluation (the modification text
without its image, `text_query_rows`) have rows without images and a cache entry of
their own (kind "text_queries"). Each entry is a `.npy` matrix plus a `.json` with its row names,
its key and the matrix file's size and hash; an entry that does not match them is encoded
again. Both read with numpy alone.
"""

from __future__ import annotations

import io
import itertools
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm
from transformers import BatchFeature, ProcessorMixin

from src.artifacts import digest
from src.data.image_store import ModelImages
from src.data.loader_memory import fit_loader
from src.data.records import Split, Triplet
from src.distributed import gather_objects, rank, world_size
from src.errors import IntegrityError
from src.experiment_io import read_json, write_atomic, write_json_atomic
from src.integrity import HASH_NAME, DigestCache, bytes_hash
from src.model.encoder import VLM2VecEncoder
from src.model.prompts import candidate_text, query_text, text_only_query_text
from src.model.registry import Backbone

logger = logging.getLogger(__name__)


def processor_settings(processor: ProcessorMixin) -> dict:
    return {
        "class": type(processor).__name__,
        "image_processor": processor.image_processor.to_dict(),
        "vocab_size": len(processor.tokenizer),
        "padding_side": processor.tokenizer.padding_side,
    }


@dataclass
class EncodingRows:
    """What to encode: one text and one image per row (None: a text-only row), with the
    row's name. An image is a file path, or an image in memory (a user's query: such rows
    are never cached). A batch holds rows of one kind, all with images or all without."""

    kind: str
    prompt: str
    names: list[str]
    images: list[str | Image.Image | None]
    texts: list[str]


@dataclass
class EncodedSplit:
    """A split's gallery (each distinct image once) and queries, encoded; `text_queries`:
    the queries' texts without their images (the evaluation's text-only ranking), where
    encoded."""

    gallery_names: list[str]
    gallery: np.ndarray
    triplets: list[Triplet]
    queries: np.ndarray
    text_queries: np.ndarray | None = None


def gallery_rows(split: Split, image_token: str, names: list[str] | None = None) -> EncodingRows:
    """Every distinct gallery image once, in `split.gallery_names()` order."""
    names = names if names is not None else split.gallery_names()
    text = candidate_text(image_token)
    return EncodingRows(
        "gallery", text, names, [split.images[n] for n in names], [text] * len(names)
    )


def query_rows(
    split: Split, triplets: list[Triplet], image_token: str, instruction_set: str
) -> EncodingRows:
    return EncodingRows(
        "queries",
        query_text(image_token, instruction_set, "{caption}"),
        [t.pairid for t in triplets],
        [split.images[t.reference] for t in triplets],
        [query_text(image_token, instruction_set, t.caption) for t in triplets],
    )


def text_query_rows(triplets: list[Triplet], instruction_set: str) -> EncodingRows:
    """The queries' modification texts without their reference images (the evaluation's
    text-only ranking), through the same instruction."""
    return EncodingRows(
        "text_queries",
        text_only_query_text(instruction_set, "{caption}"),
        [t.pairid for t in triplets],
        [None] * len(triplets),
        [text_only_query_text(instruction_set, t.caption) for t in triplets],
    )


class RowDataset(Dataset):
    """(index, text, image) of the rows `indices`; images through `images.load_for_model`
    (default: the decoded originals); None for a text-only row."""

    def __init__(self, rows: EncodingRows, indices: list[int], images: ModelImages | None = None):
        self.rows = rows
        self.indices = indices
        self.images = images or ModelImages()

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> tuple[int, str, object]:
        index = self.indices[i]
        path = self.rows.images[index]
        image = None if path is None else self.images.load_for_model(path)
        return index, self.rows.texts[index], image


@dataclass
class PackRows:
    """Collate (index, text, image) rows into model inputs; runs in the DataLoader workers."""

    processor: ProcessorMixin
    backbone: Backbone

    def __call__(self, items: list[tuple]) -> tuple[torch.Tensor, BatchFeature]:
        indices = torch.tensor([item[0] for item in items])
        texts = [item[1] for item in items]
        images = [item[2] for item in items]
        if all(image is None for image in images):  # text-only rows
            return indices, self.backbone.pack(self.processor, texts, None)
        if any(image is None for image in images):
            raise ValueError("a batch mixes rows with and without images")
        return indices, self.backbone.pack(self.processor, texts, images)


@torch.no_grad()
def encode_rows(
    encoder: VLM2VecEncoder,
    rows: EncodingRows,
    batch_size: int = 64,
    num_workers: int = 2,
    description: str | None = None,
    image_store: str | Path | None = None,
    loader_report: dict | None = None,
) -> np.ndarray:
    """Embeddings (len(rows), d) float32, in row order; sharded over processes when several run.

    With `image_store` (a directory), images are read from the image store at the
    encoder's pixel budget (src/data/image_store.py; the same embeddings, faster). With
    workers, the first batch is collated in this process and sizes them (and the batches
    each prepares ahead) to the node's memory; `loader_report`, if given, gets the workers
    and prefetch the loader ran with."""
    world, this_rank = world_size(), rank()
    indices = list(range(this_rank, len(rows.names), world))
    device = next(encoder.parameters()).device
    images, collate = ModelImages(encoder.processor, image_store), PackRows(encoder.processor, encoder.backbone)
    first: list = []
    workers, prefetch = num_workers, None
    if num_workers > 0 and len(indices) > batch_size:
        # The first batch, collated here, sizes the workers and their prefetch to this node's
        # shared and host memory (src/data/loader_memory.py); the loader makes the others.
        dataset = RowDataset(rows, indices[:batch_size], images)
        first = [collate([dataset[i] for i in range(len(dataset))])]
        plan = fit_loader(num_workers, None, first[0])
        workers, prefetch = plan.workers, plan.prefetch if plan.workers else None
        indices_left = indices[batch_size:]
    else:
        indices_left = indices
    if loader_report is not None:
        loader_report |= {"workers": workers, "prefetch": prefetch, "batches_collated_first": len(first)}
    loader = DataLoader(
        RowDataset(rows, indices_left, images),
        batch_size=batch_size,
        num_workers=workers,
        prefetch_factor=prefetch,
        collate_fn=collate,
        pin_memory=device.type == "cuda",  # so the copy to the GPU overlaps the next batch
    )
    was_training = encoder.training
    encoder.eval()
    local_indices, local_embeddings = [], []
    bar = tqdm(
        total=len(indices),
        desc=description or f"encode {rows.kind}",
        unit="item",
        disable=this_rank != 0,
    )
    for batch_indices, inputs in itertools.chain(first, loader):
        embeddings = encoder(**inputs.to(device, non_blocking=True))
        local_indices.append(batch_indices)
        local_embeddings.append(embeddings.float().cpu())
        bar.update(len(batch_indices))
    bar.close()
    encoder.train(was_training)
    parts = gather_objects((local_embeddings, local_indices))
    embeddings = torch.cat([e for local, _ in parts for e in local] or [torch.zeros(0, 0)])
    order = torch.cat([i for _, local in parts for i in local] or [torch.zeros(0, dtype=torch.long)])
    result = torch.empty_like(embeddings)
    result[order] = embeddings
    return result.numpy()


class EmbeddingCache:
    """Cached embeddings of one experiment, one `.npy` + `.json` pair per key."""

    def __init__(self, directory: str | Path):
        self.directory = Path(directory)

    @staticmethod
    def key(
        rows: EncodingRows,
        split_name: str,
        fingerprint: str,
        backbone: str,
        processor: ProcessorMixin,
        options: dict | None = None,
    ) -> dict:
        """What an entry was made from: the rows (what is encoded, with which prompt), the
        weights, the processor, and `options`, the result-changing encoding flags
        (`result_options(EncodeArguments)`: a flag declared there is in the key with no
        edit here; left out while none is off its default, so entries written before the
        key had them still match)."""
        key = {
            "kind": rows.kind,
            "split": split_name,
            "weights": fingerprint,
            "rows": digest([rows.names, rows.images, rows.texts]),
            "prompt": rows.prompt,
            "processor": digest(processor_settings(processor)),
            "backbone": backbone,
        }
        return key | ({"options": options} if options else {})

    def _paths(self, key: dict) -> tuple[Path, Path]:
        stem = f"{key['split']}_{key['kind']}_{digest(key)[:20]}"
        return self.directory / f"{stem}.npy", self.directory / f"{stem}.json"

    def verified(self, key: dict) -> bool:
        """Whether an entry of `key` exists and matches its record (a damaged one is logged)."""
        matrix_path, meta_path = self._paths(key)
        if not (matrix_path.is_file() and meta_path.is_file()):
            return False
        try:
            meta = read_json(meta_path)
        except IntegrityError as error:
            logger.warning("embedding cache entry not used, encoding again: %s", error)
            return False
        if meta.get("key") != key:
            return False
        reason = DigestCache().mismatch(matrix_path, meta.get("matrix", {}))
        if reason is not None:
            logger.warning("embedding cache entry not used, encoding again: %s", reason)
            return False
        return True

    def read(self, key: dict) -> np.ndarray:
        """The matrix of an entry `verified` found good."""
        return np.load(self._paths(key)[0])

    def save(self, key: dict, names: list[str], matrix: np.ndarray) -> None:
        matrix_path, meta_path = self._paths(key)
        buffer = io.BytesIO()
        np.save(buffer, matrix)
        data = buffer.getvalue()
        write_atomic(matrix_path, lambda file: file.write(data), binary=True)
        record = {"size": len(data), HASH_NAME: bytes_hash(data)}
        write_json_atomic(
            meta_path, {"key": key, "rows": names, "shape": list(matrix.shape), "matrix": record}
        )

