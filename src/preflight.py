"""Every check that can fail a run, done before the run writes anything.

A run that will fail should fail within seconds, not after round 0 has trained: the model
and foundation model directories load as configs, every LoRA target name matches layers
of the architecture (built on the meta device), every image of every split the job
reads opens (src/data/images.py), no caption holds a special token of the tokenizer, the
experiment directory can be written and its config and resume state fit (and its lock kind
is probed), one step's batch fits the training split over the processes, and with
DataLoader workers one batch fits the node's shared memory (/dev/shm). Annotation files
and image paths are checked as the splits are read (src/job.py). Nothing is written into the experiment
directory until all of this passes; the image check's cache lives in --cache_dir.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from PIL import Image
from transformers import AutoConfig, PreTrainedTokenizerBase

from src.artifacts import digest
from src.data.images import check_images
from src.data.loader_memory import (
    batch_bytes,
    processes_on_node,
    shared_memory_refusal,
    shm_free_bytes,
)
from src.data.records import Split
from src.distributed import checked_everywhere, decided_by_main, main_process_first, world_size
from src.errors import AnnotationError, ArgumentError, ExperimentError
from src.experiment.config import flock_works, soft_lock_line
from src.job import Job
from src.model.architectures import build_from_path
from src.model.encoder import check_lora_targets as check_lora_targets_of
from src.model.encoder import embedder_processor, load_embedder_config
from src.model.prompts import query_text
from src.model.registry import adapter_base, get_backbone, load_processor, special_tokens

logger = logging.getLogger("preflight")


def check_model_dir(path: str, flag: str) -> None:
    """A local checkpoint directory whose config loads (a LoRA adapter: its base's too)."""
    directory = Path(path)
    if not directory.is_dir():
        raise ArgumentError(f"{flag} {path}: no such directory (models are read from local paths)")
    base = adapter_base(directory)
    if base is not None and not (directory / "config.json").is_file():
        if not Path(base).is_dir():
            raise ArgumentError(
                f"{flag} {path} is a LoRA adapter whose base model {base!r} is not a local "
                "directory; pass its local path with --base_model_name"
            )
        return
    try:
        AutoConfig.from_pretrained(str(directory))
    except (OSError, ValueError, KeyError) as error:
        raise ArgumentError(f"{flag} {path}: its config.json does not load ({error})") from None


def check_models(job: Job) -> None:
    check_model_dir(job.model_path, "--model_name")
    if job.model.base_model_name:
        check_model_dir(job.model.base_model_name, "--base_model_name")
    foundation = job.augment.foundation_model_path
    if foundation:
        check_model_dir(foundation, "--foundation_model_path")
        processor = load_processor(foundation)
        if not processor.chat_template:
            raise ArgumentError(
                f"--foundation_model_path {foundation}: its processor has no chat "
                "template; the captioners need a chat (instruction-tuned) checkpoint"
            )


def check_captions(split: Split, tokenizer: PreTrainedTokenizerBase, max_tokens: int) -> int:
    """Refuse captions holding special tokens; truncate those longer than `max_tokens`.

    Returns how many were truncated (the split's triplets are changed in place).
    """
    specials = special_tokens(tokenizer)
    for triplet in split.triplets:
        found = next((token for token in specials if token in triplet.caption), None)
        if found is not None:
            raise AnnotationError(
                f"{split.name} split, pairid {triplet.pairid}: the caption holds {found!r}, a "
                "special token of the model's tokenizer, which would corrupt the model input; "
                "remove it from the annotation file"
            )
    ids = tokenizer([t.caption for t in split.triplets], add_special_tokens=False)["input_ids"]
    truncated = 0
    for triplet, tokens in zip(split.triplets, ids, strict=True):
        if len(tokens) > max_tokens:
            triplet.caption = tokenizer.decode(tokens[:max_tokens]).strip()
            truncated += 1
    if truncated:
        logger.info(
            "%s split: %d captions truncated to --max_caption_tokens %d",
            split.name,
            truncated,
            max_tokens,
        )
    return truncated


def image_check_cache(cache_dir: str, dataset_path: str) -> Path:
    key = digest(os.path.realpath(dataset_path))[:16]
    return Path(cache_dir) / "image_checks" / f"{key}.json"


def check_split_images(job: Job, splits: list[Split]) -> dict[str, tuple[int, int]]:
    """Open every image of the splits (rank 0 first, the others then read its cache)."""
    paths = [path for split in splits for path in split.images.values()]
    cache = image_check_cache(job.data.cache_dir, job.dataset_path)
    with main_process_first():
        return check_images(
            paths,
            cache,
            job.data.max_image_pixels,
            description=f"checking {len(set(paths))} images",
        )


def check_lora_targets(job: Job) -> None:
    """With --lora, every target name matches linear layers (on the meta device: no weights)."""
    options = job.model
    if not options.lora or load_embedder_config(job.model_path) is not None:
        return  # a saved embedder keeps the adapters it was trained with
    model = build_from_path(job.model_path)
    check_lora_targets_of(model, options.lora_targets, options.freeze_vision_tower)


def check_experiment(job: Job) -> None:
    """The experiment directory can be written, and its config and resume state fit."""
    experiment, run = job.experiment, job.run
    existing = experiment.dir
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir() or not os.access(existing, os.W_OK | os.X_OK):
        raise ExperimentError(f"--experiment_dir {experiment.dir}: {existing} is not writable")
    if not flock_works(existing):  # the run's lock will be a soft one (src/experiment/config.py)
        logger.warning(soft_lock_line(experiment.dir))
    experiment.config.check_start(job.arguments(), run.resuming, run.allow_config_change)
    first = run.resume_from_iteration
    if first is not None and first > 0:
        finished = experiment.finished_checkpoints()
        if not finished:
            raise ArgumentError(
                f"--resume_from_iteration {first}: {experiment.dir} holds no finished round to "
                "rerun from; drop the flag to start the experiment"
            )
        if first > max(finished) + 1:
            raise ArgumentError(
                f"--resume_from_iteration {first}: the last finished round of {experiment.dir} "
                f"is {max(finished)}; rerun from round {max(finished) + 1} at the latest"
            )


def check_batches(job: Job) -> None:
    """One optimizer step's queries fit in the training split, over every process."""
    per_step = job.training.per_device_train_batch_size * world_size()
    available = len(job.train_split.triplets)
    if available < per_step:
        raise ArgumentError(
            f"--batch_size {job.training.per_device_train_batch_size} x {world_size()} "
            f"processes = {per_step} queries per step, but the training split holds only "
            f"{available} triplets; lower --batch_size"
        )


def check_pair_selection(job: Job) -> None:
    """`--augment_selection failures` needs ranked negatives: random ones have no rank."""
    if job.captioner != "none" and job.augment.augment_selection == "failures" and (
        job.mining.negative_source == "random"
    ):
        raise ArgumentError(
            "--augment_selection failures captions the mined negatives ranked above the target, "
            "but --negative_source random draws unranked ones; use --augment_selection "
            "file_order or --negative_source mined"
        )


def check_shared_memory(job: Job, image_sizes: dict[str, tuple[int, int]]) -> None:
    """With DataLoader workers, one batch must fit this process's share of /dev/shm.

    A batch's size is measured by packing the largest image of the splits (by its pixels)
    as the embedder's processor packs it, times the rows of a training step (queries,
    targets, hard negatives) or of an encoding batch, whichever is more. Where more workers
    were asked for than fit, the loaders take fewer (src/data/loader_memory.py); where not
    even one fits, the run stops here with one line.
    """
    workers = job.training.dataloader_num_workers
    if workers < 1 or not image_sizes:
        return
    backbone_name, processor = embedder_processor(job.model_path, job.model)
    backbone = get_backbone(backbone_name)
    width, height = max(image_sizes.values(), key=lambda size: size[0] * size[1])
    row = batch_bytes(
        backbone.pack(processor, [query_text(backbone.image_token, job.dataset_name, "x" * 64)],
                      [Image.new("RGB", (width, height))])
    )  # fmt: skip
    training = job.training.per_device_train_batch_size * (2 + job.training.num_hard_negatives)
    size = row * max(training, job.flags.encode.encode_batch_size)
    refusal = shared_memory_refusal(
        workers, job.training.dataloader_prefetch_factor, size, shm_free_bytes(), processes_on_node()
    )
    if refusal:
        raise ArgumentError(refusal)


def preflight(job: Job) -> dict[str, tuple[int, int]]:
    """Run every check; returns the (width, height) of every image, by path.

    Each process checks what it reads itself (a path one node cannot see fails there only),
    and every group of checks ends with every process's outcome gathered
    (`checked_everywhere`): a failure on one process stops every process with the same
    line, instead of leaving the others at their next collective.
    """

    def flags_and_models() -> None:
        check_pair_selection(job)
        check_models(job)
        check_lora_targets(job)

    def batches_and_captions() -> None:
        check_batches(job)
        tokenizer = load_processor(job.model_path).tokenizer
        for split in (job.train_split, job.val_split):
            check_captions(split, tokenizer, job.data.max_caption_tokens)

    checked_everywhere(flags_and_models)
    decided_by_main(lambda: check_experiment(job))  # every process gets rank 0's verdict
    checked_everywhere(batches_and_captions)
    image_sizes = checked_everywhere(lambda: check_split_images(job, [job.train_split, job.val_split]))
    checked_everywhere(lambda: check_shared_memory(job, image_sizes))
    return image_sizes
