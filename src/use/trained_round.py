"""A trained round of an experiment, opened for use: its verified checkpoint, a `Retriever`
with the experiment's prompts, embedding cache and image store, the galleries it can rank
(a split of its dataset or a folder of images) and the answer to one query.

Every check runs before anything is written or loaded (`TrainedRound.open`,
`gallery_source`, `check_query`): a round that was never trained, a gallery that is neither
a split nor a folder of images, a missing or unreadable query image, an empty text each
end the command with one line.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from functools import cached_property
from pathlib import Path

from src.arguments import Flags
from src.artifacts import Evaluation
from src.data.images import check_images
from src.data.loading import load_split, split_names
from src.data.records import Split
from src.errors import ArgumentError, ExperimentError
from src.experiment import Experiment, VerifiedCheckpoint
from src.model.encoder import EmbedderConfig, load_embedder_config
from src.model.prompts import EmbedderPrompts
from src.model.registry import get_backbone
from src.records import ExperimentRecord
from src.retrieval.checkpoint_encoding import EncodeSettings
from src.retrieval.retriever import Gallery, Hit, Retriever, check_query

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff")
FOLDER_CACHE_NAME = "folder"  # the embedding cache's name for a folder gallery


@dataclass
class TrainedRound:
    """Round `iteration` of an experiment; its checkpoint is verified against its records
    when first used (after the cheaper checks of a command)."""

    experiment: Experiment
    iteration: int
    record: ExperimentRecord  # experiment_config.json, its arguments as flag groups

    @property
    def flags(self) -> Flags:
        return self.record.flags

    @cached_property
    def checkpoint(self) -> VerifiedCheckpoint:
        return self.experiment.verified_checkpoint(self.iteration)

    @classmethod
    def open(cls, directory: str | Path, iteration: int | None = None) -> TrainedRound:
        """Round `iteration` (default: the last evaluated one, else the last trained one)."""
        experiment = Experiment(directory)
        record = experiment.config.record()
        trained = experiment.finished_checkpoints()
        if not trained:
            raise ExperimentError(f"{experiment.dir}: no round was trained (no finished checkpoint_iter_i)")
        if iteration is None:
            evaluated = [i for i in experiment.evaluated_rounds("val") if i in trained]
            iteration = (evaluated or trained)[-1]
        elif iteration not in trained:
            raise ExperimentError(
                f"{experiment.dir}: round {iteration} was never trained (trained rounds: "
                f"{', '.join(map(str, trained))})"
            )
        return cls(experiment, iteration, record)

    @property
    def dataset_name(self) -> str:
        return self.flags.data.dataset_name

    def embedder_config(self) -> EmbedderConfig:
        config = load_embedder_config(self.checkpoint.path)
        if config is None:
            raise ExperimentError(f"{self.checkpoint.path} holds no embedder_config.json")
        return config

    def prompts(self) -> EmbedderPrompts:
        """The prompts this round was trained with (the experiment's dataset's instruction)."""
        image_token = get_backbone(self.embedder_config().backbone).image_token
        return EmbedderPrompts.of(image_token, self.dataset_name)

    def retriever(self, settings: EncodeSettings) -> Retriever:
        """The round's embedder, with the experiment's embedding cache (the evaluation's
        gallery embeddings are reused) and the checkpoint's recorded fingerprint."""
        return Retriever.from_checkpoint(
            self.checkpoint.path,
            instruction_set=self.dataset_name,
            cache_dir=self.experiment.embeddings_dir,
            fingerprint=self.checkpoint.fingerprint,
            settings=settings,
        )

    def evaluation(self) -> Evaluation | None:
        """The round's validation evaluation (None: not evaluated)."""
        path = self.experiment.evaluation("val", self.iteration)
        return Evaluation.read(path) if path.is_file() else None

    def describe(self) -> str:
        return f"round {self.iteration} of {self.experiment.dir}"


@dataclass
class GallerySource:
    """What a query ranks: a split of the experiment's dataset, or a folder of images."""

    description: str
    split: Split | None = None
    names: list[str] = field(default_factory=list)
    paths: list[str] = field(default_factory=list)

    def encode(self, retriever: Retriever) -> Gallery:
        """Its embeddings, through the retriever's cache (a split's are the evaluation's)."""
        if self.split is not None:
            return retriever.split_gallery(self.split)
        return retriever.gallery(self.paths, self.names, cache_name=FOLDER_CACHE_NAME)

    def target_of(self, references: list[str], text: str) -> str | None:
        """The labelled target of a query that is one of the split's own (its reference
        and text), else None."""
        if self.split is None:
            return None
        for triplet in self.split.triplets:
            if triplet.reference in references and triplet.caption == text:
                return triplet.target
        return None


def gallery_source(trained: TrainedRound, spec: str, dataset_path: str | None = None) -> GallerySource:
    """`spec` as a split name of the experiment's dataset, else as a folder of images (every
    image file under it, named by its path relative to it; each checked readable)."""
    data = trained.flags.data
    if spec in split_names(trained.dataset_name):
        root = dataset_path or data.dataset_path
        split = load_split(
            trained.dataset_name, root, spec, allow_external_images=data.allow_external_images
        )
        return GallerySource(f"{split.name} split of {trained.dataset_name} at {root}", split)
    folder = Path(spec)
    if not folder.is_dir():
        raise ArgumentError(
            f"--gallery {spec}: neither a split of {trained.dataset_name} "
            f"({', '.join(split_names(trained.dataset_name))}) nor a folder"
        )
    files = sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    if not files:
        raise ArgumentError(f"--gallery {spec}: no image files ({', '.join(IMAGE_SUFFIXES)}) in it")
    paths = [str(p) for p in files]
    check_images(paths, max_pixels=data.max_image_pixels)
    names = [p.relative_to(folder).as_posix() for p in files]
    return GallerySource(f"folder {folder}", None, names, paths)


@dataclass
class QueryAnswer:
    """One query's ranking, as the command prints it and --output_file writes it."""

    experiment: str
    round: int
    checkpoint: str
    query_image: str
    query_text: str
    gallery: str
    gallery_size: int
    gallery_from_cache: bool
    left_out: list[str]
    results: list[Hit]
    target: str | None = None  # a query of the split's own: its labelled target

    def to_json(self) -> dict:
        return asdict(self)

    def lines(self) -> list[str]:
        """One line per result: rank, image name, score (tab-separated)."""
        return [f"{hit.rank}\t{hit.name}\t{hit.score:.4f}" for hit in self.results]


def ask(
    trained: TrainedRound,
    retriever: Retriever,
    gallery: Gallery,
    source: GallerySource,
    image: str,
    text: str,
    k: int,
) -> QueryAnswer:
    """The top `k` of `gallery` for (image, text), the reference image itself left out."""
    check_query(image, text)
    left_out = gallery.same_file(image)
    return QueryAnswer(
        experiment=str(trained.experiment.dir),
        round=trained.iteration,
        checkpoint=str(trained.checkpoint.path),
        query_image=str(image),
        query_text=text,
        gallery=source.description,
        gallery_size=len(gallery.names),
        gallery_from_cache=gallery.from_cache,
        left_out=left_out,
        results=retriever.query(image, text, gallery, k),
        target=source.target_of(left_out, text),
    )
