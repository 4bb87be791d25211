"""Composed image retrieval with a trained embedder, from Python.

`Retriever` wraps a saved embedder (a `checkpoint_iter_i/` folder, or a model written by
`eval_iterative.py --export`) for use outside the job: encode composed queries (reference
image + modification text) and gallery images with the prompts the embedder was trained
with, and rank a gallery. It is what `eval_iterative.py --query_image ... --export_index`
runs (src/use/), so the command line and Python give the same rankings.

Encoding goes through `CheckpointEncoder` (src/retrieval/checkpoint_encoding.py): the
weights load on first use, and a gallery is read from the embedding cache when one is
given (`cache_dir`) and an entry of the same weights, rows, prompt and processor exists, so
a second query over the same gallery costs one query encoding. Rankings come from
`search_topk` (exact; equal scores in gallery order, as the metrics rank them).

Example (`checkpoint` is a checkpoint or exported model folder, `images` a few image files,
`reference` one of them):

>>> from src.retrieval.retriever import Retriever
>>> retriever = Retriever.from_checkpoint(checkpoint)
>>> gallery = retriever.gallery(images)  # encoded once (cached with cache_dir=...)
>>> hits = retriever.query(reference, "make the shapes red", gallery, k=3)
>>> [hit.rank for hit in hits]
[1, 2, 3]
>>> reference in [hit.path for hit in hits]  # the reference itself is left out
False
>>> queries = retriever.encode_queries([(reference, "make the shapes red"), (images[1], "add a circle")])
>>> scores = queries @ gallery.embeddings.T  # cosine similarities, (2, len(images))
>>> [len(ranking) for ranking in retriever.search(queries, gallery, k=2)]
[2, 2]
>>> retriever.close()
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from src.artifacts import checkpoint_fingerprint
from src.data.images import ImageLoadError, load_image
from src.data.records import Split
from src.errors import QueryError
from src.integrity import DigestCache, file_hash
from src.model.encoder import load_embedder_config
from src.model.export import saved_prompts
from src.model.prompts import EmbedderPrompts
from src.retrieval.checkpoint_encoding import CheckpointEncoder, EncodeSettings
from src.retrieval.encode import EmbeddingCache, EncodingRows, gallery_rows
from src.retrieval.search import search_topk

ImageInput = str | Path | Image.Image
IMAGES_CACHE_NAME = "images"  # the embedding cache's name for a gallery of image files


@dataclass(frozen=True)
class Hit:
    """One result: its 1-based rank, gallery name, score (cosine similarity for a
    normalising embedder) and image file."""

    rank: int
    name: str
    score: float
    path: str


@dataclass
class Gallery:
    """Encoded gallery images: row i of `embeddings` is `names[i]`, read from `paths[i]`.
    `from_cache`: whether the embeddings were read from the embedding cache."""

    names: list[str]
    paths: list[str]
    embeddings: np.ndarray
    from_cache: bool = False
    _index: dict[str, int] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        if len(self.names) != len(self.paths) or len(self.names) != len(self.embeddings):
            raise ValueError(
                f"{len(self.names)} names, {len(self.paths)} paths and "
                f"{len(self.embeddings)} embeddings"
            )
        self._index = {name: i for i, name in enumerate(self.names)}
        if len(self._index) != len(self.names):
            raise ValueError("gallery names must be distinct")

    def index(self, name: str) -> int:
        if name not in self._index:
            raise ValueError(f"{name!r} is not in the gallery")
        return self._index[name]

    def same_file(self, image: ImageInput) -> list[str]:
        """The names of the entries that are the file `image`, or a byte-identical copy of it
        (none for an image in memory): what CIRR's evaluation leaves out of a query's
        ranking, its reference."""
        if isinstance(image, Image.Image) or not Path(image).is_file():
            return []
        wanted = os.stat(image)
        wanted_hash = None
        found = []
        for name, path in zip(self.names, self.paths, strict=True):
            try:
                info = os.stat(path)
            except OSError:
                continue
            if (info.st_dev, info.st_ino) == (wanted.st_dev, wanted.st_ino):
                found.append(name)
            elif info.st_size == wanted.st_size:  # only then is the content compared
                wanted_hash = wanted_hash or file_hash(image)
                if file_hash(path) == wanted_hash:
                    found.append(name)
        return found


def check_query(image: ImageInput, text: str) -> None:
    """Refuse a query that cannot be asked, in one line: a missing or unreadable image file,
    an empty text."""
    if not isinstance(text, str) or not text.strip():
        raise QueryError("the query text is empty: say what should change in the image")
    if isinstance(image, Image.Image):
        return
    if not Path(image).is_file():
        raise QueryError(f"query image {image}: no such file")
    try:
        load_image(image)
    except ImageLoadError as error:
        reason = str(error.__cause__ or error).splitlines()[0]
        raise QueryError(f"query image {image}: cannot be read as an image ({reason})") from None


def weights_fingerprint(checkpoint: str | Path) -> str:
    """The identity of a saved embedder's weights, as the experiment's checkpoint records
    compute it: the digest of its files and, for a LoRA adapter, of its base models'."""
    digests = DigestCache()
    config = load_embedder_config(checkpoint)
    bases = [digests.directory(path) for path in (config.base_models() if config else [])]
    return checkpoint_fingerprint(digests.directory(checkpoint), bases)


class Retriever:
    """A saved embedder, ready to encode composed queries and galleries and rank them."""

    def __init__(self, encoder: CheckpointEncoder, prompts: EmbedderPrompts):
        self.encoder = encoder
        self.prompts = prompts

    @classmethod
    def from_checkpoint(
        cls,
        path: str | Path,
        *,
        instruction_set: str | None = None,
        cache_dir: str | Path | None = None,
        fingerprint: str | None = None,
        settings: EncodeSettings | None = None,
    ) -> Retriever:
        """A retriever of the embedder saved in `path` (weights loaded on first use).

        Args:
            path: a `checkpoint_iter_i/` folder or a model written by `--export`.
            instruction_set: "cirr" or "fashioniq": which trained prompt to use. Default:
                the prompts an exported model recorded, else "cirr".
            cache_dir: a folder for cached gallery embeddings (an experiment's
                `embeddings/`); None: no cache.
            fingerprint: the weights' identity for the cache key (an experiment passes its
                checkpoint's record); default: the digest of the files in `path`.
            settings: batch size, dtype, pixel budget, image store (EncodeSettings).
        """
        path = Path(path)
        cache = EmbeddingCache(cache_dir) if cache_dir is not None else None
        if cache is not None and fingerprint is None:
            fingerprint = weights_fingerprint(path)
        encoder = CheckpointEncoder(path, fingerprint or "", cache, settings or EncodeSettings())
        recorded = saved_prompts(path)
        if recorded is None or (instruction_set and instruction_set != recorded.instruction_set):
            recorded = EmbedderPrompts.of(encoder.image_token, instruction_set or "cirr")
        return cls(encoder, recorded)

    def __enter__(self) -> Retriever:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def close(self) -> None:
        """Release the weights (the next encoding loads them again)."""
        self.encoder.close()

    @property
    def encoded_rows(self) -> int:
        """Rows (queries and images) run through the model so far, not read from the cache."""
        return self.encoder.encoded_rows

    def encode_queries(self, queries: Sequence[tuple[ImageInput, str]]) -> np.ndarray:
        """Embeddings (len(queries), d) float32 of composed queries (reference image,
        modification text), with the embedder's query prompt."""
        for image, text in queries:
            check_query(image, text)
        rows = EncodingRows(
            "queries",
            self.prompts.query,
            [f"query_{i}" for i in range(len(queries))],
            [image if isinstance(image, Image.Image) else str(image) for image, _ in queries],
            [self.prompts.query_for(text) for _, text in queries],
        )
        return self.encoder.encode(rows, "user", use_cache=False)

    def encode_images(self, images: Sequence[ImageInput]) -> np.ndarray:
        """Embeddings (len(images), d) float32 of gallery images, with the candidate prompt
        (not cached: `gallery` caches)."""
        return self.encoder.encode(self._image_rows(images, None), IMAGES_CACHE_NAME, use_cache=False)

    def _image_rows(self, images: Sequence[ImageInput], names: Sequence[str] | None) -> EncodingRows:
        images = [image if isinstance(image, Image.Image) else str(image) for image in images]
        if names is None:
            names = [
                f"image_{i}" if isinstance(image, Image.Image) else Path(image).name
                for i, image in enumerate(images)
            ]
        prompt = self.prompts.candidate
        return EncodingRows("gallery", prompt, list(names), images, [prompt] * len(images))

    def gallery(
        self,
        images: Sequence[str | Path],
        names: Sequence[str] | None = None,
        cache_name: str = IMAGES_CACHE_NAME,
    ) -> Gallery:
        """Encode gallery image files once: through the embedding cache when the retriever
        has one (`cache_name` names the entry; the key holds the weights, names, paths,
        prompt and processor). `names` default to the file names."""
        rows = self._image_rows(images, names)
        return self._encoded(rows, cache_name)

    def split_gallery(self, split: Split) -> Gallery:
        """Every image of a dataset split, encoded as its evaluation encodes it (the same
        cache entry)."""
        rows = gallery_rows(split, self.encoder.image_token)
        if rows.prompt != self.prompts.candidate:
            rows = self._image_rows(rows.images, rows.names)
        return self._encoded(rows, split.name)

    def _encoded(self, rows: EncodingRows, cache_name: str) -> Gallery:
        before = self.encoded_rows
        embeddings = self.encoder.encode(rows, cache_name)
        return Gallery(
            rows.names, list(rows.images), embeddings, from_cache=self.encoded_rows == before
        )

    def search(
        self,
        queries: np.ndarray,
        gallery: Gallery,
        k: int = 10,
        exclude: Sequence[Sequence[str]] | None = None,
    ) -> list[list[Hit]]:
        """The top `k` gallery images of each query, best first (fewer where the gallery has
        fewer eligible images); `exclude`: per query, gallery names left out."""
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        excluded = [[gallery.index(name) for name in names] for names in exclude] if exclude else None
        eligible = len(gallery.names) - max((len(e) for e in excluded or []), default=0)
        depth = min(k, eligible)
        if depth < 1 or not len(queries):
            return [[] for _ in range(len(queries))]
        scores, indices = search_topk(queries, gallery.embeddings, depth, exclude=excluded)
        return [
            [
                Hit(rank, gallery.names[j], float(score), gallery.paths[j])
                for rank, (score, j) in enumerate(zip(row_scores, row, strict=True), start=1)
            ]
            for row_scores, row in zip(scores, indices, strict=True)
        ]

    def query(self, image: ImageInput, text: str, gallery: Gallery, k: int = 10) -> list[Hit]:
        """The top `k` of `gallery` for one composed query, the reference image itself left
        out (as CIRR's evaluation does)."""
        embedding = self.encode_queries([(image, text)])
        return self.search(embedding, gallery, k, exclude=[gallery.same_file(image)])[0]
