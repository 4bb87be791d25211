"""The job: what a run does, resolved once from the (already checked) flags.

`resolve_job` fills in what the user left out (the offline default model and benchmark,
handed in as `RunDefaults` by the entry point, since the product code does not depend on
src/offline/), loads the splits and resolves the captioner (`--fast_mode` is applied when
the flags are parsed, src/arguments.py, so a flag given explicitly keeps its value). The
stages take the flag groups themselves as their options (src/arguments.py), so nothing is
copied here.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from src.arguments import (
    AugmentArguments,
    DataArguments,
    Flags,
    IterativeTrainingArguments,
    MiningArguments,
    ModelArguments,
    RunArguments,
)
from src.augment.captioners import DatasetCaptioner, resolve_captioner
from src.data.loading import load_split
from src.data.records import Split, Triplet
from src.distributed import main_process_first
from src.errors import ArgumentError
from src.experiment import Experiment
from src.retrieval.checkpoint_encoding import EncodeSettings


class RunDefaults(Protocol):
    """What fills in a run when the user names no model or no dataset."""

    model_label: str
    dataset_label: str

    def model_path(self, data: DataArguments) -> str: ...

    def dataset_path(self, data: DataArguments) -> str: ...

    def dataset_captioners(self, augment: AugmentArguments) -> Mapping[str, DatasetCaptioner]: ...


@dataclass
class Job:
    """Everything a run needs, resolved once: the flags, paths, splits and the captioner."""

    flags: Flags
    model_path: str
    dataset_path: str
    experiment: Experiment
    train_split: Split
    val_split: Split
    captioner: str
    dataset_captioners: Mapping[str, DatasetCaptioner] = field(default_factory=dict)

    @property
    def run(self) -> RunArguments:
        return self.flags.run

    @property
    def model(self) -> ModelArguments:
        return self.flags.model

    @property
    def data(self) -> DataArguments:
        return self.flags.data

    @property
    def mining(self) -> MiningArguments:
        return self.flags.mining

    @property
    def augment(self) -> AugmentArguments:
        return self.flags.augment

    @property
    def training(self) -> IterativeTrainingArguments:
        return self.flags.training

    @property
    def dataset_name(self) -> str:
        return self.data.dataset_name

    @property
    def seed(self) -> int:
        return self.training.seed

    @property
    def image_store(self) -> str | None:
        """The image store's directory (None: --no_image_store)."""
        return image_store_dir(self.data)

    @property
    def encoding(self) -> EncodeSettings:
        return EncodeSettings(
            self.flags.encode,
            self.training.dataloader_num_workers,
            self.model.torch_dtype,
            image_store=self.image_store,
        )

    @property
    def uses_mining(self) -> bool:
        """Whether anything reads the mined negatives (the loss, or the new texts)."""
        return self.training.num_hard_negatives > 0 or self.captioner != "none"

    def arguments(self) -> dict:
        """Every argument of the run, as recorded in experiment_config.json."""
        return self.flags.as_dict() | {
            "model_name": str(Path(self.model_path).resolve()),
            "dataset_path": str(Path(self.dataset_path).resolve()),
        }


def image_store_dir(data: DataArguments) -> str | None:
    """Where the image store lives: --image_store_dir, else --cache_dir/image_store; None
    with --no_image_store. Under --cache_dir, not the experiment, because an entry depends
    only on the image file and the pixel budget: every experiment, ablation arm and seed on
    the same images shares one store, and experiment directories stay small. (`data`: the
    flags, or an experiment's recorded ones, `ExperimentRecord.flags`.)"""
    if not data.image_store:
        return None
    return data.image_store_dir or str(Path(data.cache_dir) / "image_store")


def subset(triplets: list[Triplet], limit: int | None) -> list[Triplet]:
    """The first `limit` triplets; with FashionIQ's categories, taken from each in turn."""
    if limit is None or limit >= len(triplets):
        return list(triplets)
    categories: dict[str | None, list[Triplet]] = {}
    for triplet in triplets:
        categories.setdefault(triplet.category, []).append(triplet)
    if len(categories) == 1:
        return triplets[:limit]
    chosen, queues = [], [iter(group) for group in categories.values()]
    while len(chosen) < limit:
        for queue in queues:
            triplet = next(queue, None)
            if triplet is not None and len(chosen) < limit:
                chosen.append(triplet)
    return chosen


def resolve_paths(
    model: ModelArguments, data: DataArguments, defaults: RunDefaults | None
) -> tuple[str, str, str, str]:
    """(model path, dataset path, model label, dataset label); defaults build what is missing."""
    missing = [
        name
        for name, value in (("--model_name", model.model_name), ("--dataset_path", data.dataset_path))
        if value is None
    ]
    if missing and defaults is None:
        raise ArgumentError(f"{' and '.join(missing)} must be given")
    with main_process_first():  # rank 0 builds the offline assets, the others reuse them
        model_path = model.model_name or defaults.model_path(data)
        dataset_path = data.dataset_path or defaults.dataset_path(data)
    model_label = Path(model_path).name if model.model_name else defaults.model_label
    dataset_label = data.dataset_name if data.dataset_path else defaults.dataset_label
    return model_path, dataset_path, model_label, dataset_label


def resolve_job(flags: Flags, defaults: RunDefaults | None = None) -> Job:
    """Fill in the defaults, load the splits, resolve the captioner."""
    data = flags.data
    model_path, dataset_path, model_label, dataset_label = resolve_paths(flags.model, data, defaults)
    directory = flags.run.experiment_dir or f"experiments/{model_label}_{dataset_label}_iterative"
    external = data.allow_external_images
    train_split = load_split(data.dataset_name, dataset_path, "train", allow_external_images=external)
    val_split = load_split(data.dataset_name, dataset_path, "val", allow_external_images=external)
    train_split.triplets = subset(train_split.triplets, data.max_train_samples)
    val_split.triplets = subset(val_split.triplets, data.max_eval_samples)
    dataset_captioners = dict(defaults.dataset_captioners(flags.augment)) if defaults else {}
    captioner = resolve_captioner(
        flags.augment.foundation_model_backbone,
        flags.augment.foundation_model_path,
        dataset_path,
        dataset_captioners,
    )
    return Job(
        flags=flags,
        model_path=model_path,
        dataset_path=dataset_path,
        experiment=Experiment(directory),
        train_split=train_split,
        val_split=val_split,
        captioner=captioner,
        dataset_captioners=dataset_captioners,
    )
