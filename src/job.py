"""The job: what a run does, resolved once from the (already checked) arguments.

`resolve_job` fills in what the user left out (the offline default model and benchmark,
handed in as `RunDefaults` by the entry point, since the product code does not depend on
src/offline/), applies `--fast_mode`, loads the splits and turns the flags into the
narrow option objects each stage takes. Every stage sits above this module and reads
only the options it needs.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from transformers import TrainingArguments

from src.arguments import DataArguments, IterativeArguments, ModelArguments
from src.augment.captioners import DatasetCaptioner, resolve_captioner
from src.augment.options import AugmentOptions, GenerationOptions
from src.data.loading import load_split
from src.data.records import Split, Triplet
from src.distributed import main_process_first
from src.errors import ArgumentError
from src.experiment import Experiment
from src.model.encoder import EncoderOptions
from src.retrieval.checkpoint_encoding import EncodeSettings
from src.retrieval.mining import MiningOptions
from src.training import LossOptions

FAST_MODE = {"train_images": 600, "val_images": 300, "test_images": 120, "max_steps": 12}
FAST_MODE_SAMPLES = {"train": 200, "eval": 100}


class RunDefaults(Protocol):
    """What fills in a run when the user names no model or no dataset."""

    model_label: str
    dataset_label: str
    dataset_captioners: Mapping[str, DatasetCaptioner]

    def model_path(self, data_args: DataArguments) -> str: ...

    def dataset_path(self, data_args: DataArguments) -> str: ...


@dataclass
class Job:
    """Everything a run needs, resolved once: paths, splits, and each stage's options."""

    model_args: ModelArguments
    data_args: DataArguments
    iter_args: IterativeArguments
    training_args: TrainingArguments
    model_path: str
    dataset_path: str
    experiment: Experiment
    train_split: Split
    val_split: Split
    encoder: EncoderOptions
    encoding: EncodeSettings
    mining: MiningOptions
    augment: AugmentOptions
    loss: LossOptions
    dataset_captioners: Mapping[str, DatasetCaptioner] = field(default_factory=dict)

    @property
    def dataset_name(self) -> str:
        return self.data_args.dataset_name

    @property
    def instruction_set(self) -> str:
        return self.data_args.dataset_name

    @property
    def seed(self) -> int:
        return self.training_args.seed

    @property
    def uses_mining(self) -> bool:
        """Whether anything reads the mined negatives (the loss, or the new texts)."""
        return self.iter_args.num_hard_negatives > 0 or self.augment.captioner != "none"

    def mining_checkpoint(self, iteration: int) -> int:
        """The checkpoint that mines the negatives round `iteration` trains with."""
        return iteration - 1 if self.iter_args.mining_checkpoint == "previous" else 0

    def arguments(self) -> dict:
        """Every argument of the run, as recorded in experiment_config.json."""
        arguments = {}
        for group in (self.model_args, self.data_args, self.iter_args):
            arguments.update(dataclasses.asdict(group))
        arguments.update(self.training_args.to_dict())
        arguments.update(
            model_name=str(Path(self.model_path).resolve()),
            dataset_path=str(Path(self.dataset_path).resolve()),
        )
        return arguments


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


def apply_fast_mode(data_args: DataArguments, training_args: TrainingArguments) -> None:
    """--fast_mode: a small benchmark (when it is the offline one), a subset, few steps."""
    training_args.max_steps = FAST_MODE["max_steps"]
    training_args.save_steps = max(1, FAST_MODE["max_steps"] // 2)
    if data_args.dataset_path is None:
        data_args.synthetic_train_images = FAST_MODE["train_images"]
        data_args.synthetic_val_images = FAST_MODE["val_images"]
        data_args.synthetic_test_images = FAST_MODE["test_images"]
    data_args.max_train_samples = data_args.max_train_samples or FAST_MODE_SAMPLES["train"]
    data_args.max_eval_samples = data_args.max_eval_samples or FAST_MODE_SAMPLES["eval"]


def resolve_paths(
    model_args: ModelArguments, data_args: DataArguments, defaults: RunDefaults | None
) -> tuple[str, str, str, str]:
    """(model path, dataset path, model label, dataset label); defaults build what is missing."""
    missing = [
        flag
        for flag, value in (("--model_name", model_args.model_name), ("--dataset_path", data_args.dataset_path))
        if value is None
    ]
    if missing and defaults is None:
        raise ArgumentError(f"{' and '.join(missing)} must be given")
    with main_process_first():  # rank 0 builds the offline assets, the others reuse them
        model_path = model_args.model_name or defaults.model_path(data_args)
        dataset_path = data_args.dataset_path or defaults.dataset_path(data_args)
    model_label = Path(model_path).name if model_args.model_name else defaults.model_label
    dataset_label = data_args.dataset_name if data_args.dataset_path else defaults.dataset_label
    return model_path, dataset_path, model_label, dataset_label


def resolve_job(
    model_args: ModelArguments,
    data_args: DataArguments,
    iter_args: IterativeArguments,
    training_args: TrainingArguments,
    defaults: RunDefaults | None = None,
) -> Job:
    """Fill in the defaults and the fast mode, load the splits, build the stages' options."""
    if iter_args.fast_mode:
        apply_fast_mode(data_args, training_args)
    model_path, dataset_path, model_label, dataset_label = resolve_paths(
        model_args, data_args, defaults
    )
    directory = iter_args.experiment_dir or f"experiments/{model_label}_{dataset_label}_iterative"
    external = data_args.allow_external_images
    train_split = load_split(
        data_args.dataset_name, dataset_path, "train", allow_external_images=external
    )
    val_split = load_split(data_args.dataset_name, dataset_path, "val", allow_external_images=external)
    train_split.triplets = subset(train_split.triplets, data_args.max_train_samples)
    val_split.triplets = subset(val_split.triplets, data_args.max_eval_samples)
    dataset_captioners = dict(defaults.dataset_captioners) if defaults else {}
    return Job(
        model_args=model_args,
        data_args=data_args,
        iter_args=iter_args,
        training_args=training_args,
        model_path=model_path,
        dataset_path=dataset_path,
        experiment=Experiment(directory),
        train_split=train_split,
        val_split=val_split,
        encoder=EncoderOptions(
            backbone=model_args.model_backbone,
            lora=model_args.lora,
            lora_r=model_args.lora_r,
            lora_alpha=model_args.lora_alpha,
            lora_dropout=model_args.lora_dropout,
            lora_target_modules=tuple(model_args.lora_target_list),
            dtype=model_args.torch_dtype,
            base_model_name=model_args.base_model_name,
            min_pixels=model_args.min_pixels,
            max_pixels=model_args.max_pixels,
            freeze_vision_tower=model_args.freeze_vision_tower,
        ),
        encoding=EncodeSettings(
            batch_size=iter_args.encode_batch_size,
            num_workers=training_args.dataloader_num_workers,
            dtype=model_args.torch_dtype,
        ),
        mining=MiningOptions(
            k=iter_args.hard_negative_k,
            scope=iter_args.mine_scope,
            margin=iter_args.hard_negative_margin,
            skip_top=iter_args.hard_negative_skip_top,
            source=iter_args.negative_source,
            seed=training_args.seed,
        ),
        augment=AugmentOptions(
            captioner=resolve_captioner(
                iter_args.foundation_model_backbone,
                iter_args.foundation_model_path,
                dataset_path,
                dataset_captioners,
            ),
            model_path=iter_args.foundation_model_path,
            generation=GenerationOptions(
                prompt_mode=iter_args.prompt_mode,
                max_new_tokens=iter_args.max_new_tokens,
                do_sample=iter_args.do_sample,
                temperature=iter_args.generation_temperature,
                top_p=iter_args.top_p,
                max_pixels=iter_args.foundation_max_pixels,
            ),
            pairs_per_query=iter_args.augment_pairs_per_query,
            negatives=iter_args.augment_negatives,
            max_pairs=iter_args.max_augmented_per_iteration or None,
            consistency_filter=iter_args.consistency_filter,
            verify=iter_args.verify_augmented,
            pool=iter_args.augmented_pool,
            batch_size=iter_args.foundation_batch_size,
            flush_every=iter_args.augment_flush_every,
            seed=training_args.seed,
        ),
        loss=LossOptions(
            temperature=model_args.temperature,
            group_loss_weight=iter_args.group_loss_weight,
            grad_cache=iter_args.grad_cache,
            gc_mini_batch_size=iter_args.gc_mini_batch_size,
            group_by_reference=iter_args.group_by_reference,
        ),
        dataset_captioners=dataset_captioners,
    )
