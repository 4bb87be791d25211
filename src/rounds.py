"""The iterative job, stage by stage (see DESIGN.md, "The job").

round 0   train on the original triplets                  -> checkpoint_iter_0/
round i   mine with checkpoint_iter_{i-1}                  -> hard_negatives_iter_{i-1}.json
          augment (foundation-model texts)                 -> augmented_samples_iter_{i}.json
          train from checkpoint_iter_{i-1}, hard negatives -> checkpoint_iter_{i}/
every     evaluate on the validation split                 -> evaluation_results.json

Each stage checks whether its artifact exists with a matching meta and is skipped if so;
the stages that run are appended to stages.jsonl.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from transformers import TrainingArguments, set_seed

from src.arguments import DataArguments, IterativeArguments, ModelArguments
from src.augment.stage import augmented_training_samples, run_augmentation
from src.data.dataset.composed_retrieval_dataset import ComposedRetrievalDataset
from src.data.loading import load_split
from src.data.records import Split, Triplet
from src.distributed import barrier, rank
from src.experiment import Experiment, result_config
from src.experiment_io import read_json, write_json_atomic
from src.model.encoder import VLM2VecEncoder, build_encoder, default_device, load_encoder
from src.offline import offline_benchmark, offline_model
from src.retrieval.encode import EmbeddingCache, weights_fingerprint
from src.retrieval.evaluate import EncodedSplit, encode_split, split_metrics
from src.retrieval.mining import MiningOptions, mine_hard_negatives
from src.training import LossOptions, train_round

logger = logging.getLogger("rounds")

FAST_MODE = {"train_images": 600, "val_images": 300, "test_images": 120, "max_steps": 12}


@dataclass
class Job:
    """Everything a run needs, resolved once: paths, splits, options."""

    model_args: ModelArguments
    data_args: DataArguments
    iter_args: IterativeArguments
    training_args: TrainingArguments
    model_path: str
    dataset_path: str
    experiment: Experiment
    train_split: Split
    val_split: Split

    @property
    def instruction_set(self) -> str:
        return self.data_args.dataset_name

    @property
    def synthetic(self) -> bool:
        return (Path(self.dataset_path) / "scenes.json").is_file()


@contextlib.contextmanager
def _stage(name: str) -> Iterator[None]:
    """Announce a stage, time it, and log a one-line summary when it ends."""
    start = time.perf_counter()
    logger.info("== %s", name)
    yield
    logger.info("== %s done in %.1f s", name, time.perf_counter() - start)


def resolve_job(
    model_args: ModelArguments,
    data_args: DataArguments,
    iter_args: IterativeArguments,
    training_args: TrainingArguments,
) -> Job:
    """Fill in the offline defaults, the fast mode and the experiment directory; load the splits."""
    if iter_args.fast_mode:
        training_args.max_steps = FAST_MODE["max_steps"]
        training_args.save_steps = max(1, FAST_MODE["max_steps"] // 2)
        if data_args.dataset_path is None:
            data_args.synthetic_train_images = FAST_MODE["train_images"]
            data_args.synthetic_val_images = FAST_MODE["val_images"]
            data_args.synthetic_test_images = FAST_MODE["test_images"]
        data_args.max_train_samples = data_args.max_train_samples or 200
        data_args.max_eval_samples = data_args.max_eval_samples or 100
    if rank() != 0:
        barrier()  # wait while rank 0 builds the offline assets, then reuse them
    model_path = model_args.model_name or str(
        offline_model(data_args.cache_dir, data_args.image_size, seed=0)
    )
    dataset_path = data_args.dataset_path or str(
        offline_benchmark(
            data_args.cache_dir,
            data_args.synthetic_train_images,
            data_args.synthetic_val_images,
            data_args.synthetic_test_images,
            data_args.image_size,
        )
    )
    if rank() == 0:
        barrier()
    model_label = "tiny_qwen2_vl" if model_args.model_name is None else Path(model_path).name
    dataset_label = "synthetic" if data_args.dataset_path is None else data_args.dataset_name
    directory = iter_args.experiment_dir or f"experiments/{model_label}_{dataset_label}_iterative"
    train_split = load_split(data_args.dataset_name, dataset_path, "train")
    val_split = load_split(data_args.dataset_name, dataset_path, "val")
    train_split.triplets = train_split.triplets[: data_args.max_train_samples]
    val_split.triplets = val_split.triplets[: data_args.max_eval_samples]
    return Job(
        model_args,
        data_args,
        iter_args,
        training_args,
        model_path,
        dataset_path,
        Experiment(directory),
        train_split,
        val_split,
    )


def all_arguments(job: Job) -> dict:
    """Every argument of the run, as recorded in experiment_config.json."""
    arguments = {}
    for group in (job.model_args, job.data_args, job.iter_args):
        arguments.update(dataclasses.asdict(group))
    arguments.update(job.training_args.to_dict())
    arguments.update(
        model_name=str(Path(job.model_path).resolve()),
        dataset_path=str(Path(job.dataset_path).resolve()),
    )
    return arguments


def checkpoint_meta(checkpoint: Path) -> dict | None:
    """The stage.json of a finished checkpoint_iter_i (None while it is not finished)."""
    meta_file = checkpoint / "stage.json"
    return read_json(meta_file) if meta_file.is_file() else None


def _new_encoder(job: Job, start_from: str | Path) -> VLM2VecEncoder:
    args = job.model_args
    return build_encoder(
        start_from,
        backbone=args.model_backbone,
        lora=args.lora,
        lora_r=args.lora_r,
        lora_alpha=args.lora_alpha,
        lora_dropout=args.lora_dropout,
        lora_target_modules=[m.strip() for m in args.lora_target_modules.split(",") if m.strip()],
        dtype=args.torch_dtype,
        base_model_name=args.base_model_name,
    )


def encode_with_checkpoint(job: Job, iteration: int, split: Split) -> EncodedSplit:
    """A split's gallery and queries encoded by checkpoint_iter_{iteration}, through the cache."""
    checkpoint = job.experiment.checkpoint(iteration)
    encoder = load_encoder(checkpoint, dtype=job.model_args.torch_dtype).to(default_device())
    return encode_split(
        encoder,
        split,
        split.triplets,
        job.instruction_set,
        EmbeddingCache(job.experiment.embeddings_dir),
        checkpoint_meta(checkpoint)["fingerprint"],
        job.iter_args.encode_batch_size,
        job.training_args.dataloader_num_workers,
    )


def train_stage(job: Job, iteration: int) -> None:
    """Train round `iteration` into checkpoint_iter_{iteration} unless it is already there."""
    experiment, config = job.experiment, result_config(all_arguments(job))
    checkpoint = experiment.checkpoint(iteration)
    meta = checkpoint_meta(checkpoint)
    if meta is not None and (meta["config"] == config or job.iter_args.allow_config_change):
        logger.info("round %d: %s is done, skipping training", iteration, checkpoint.name)
        return
    with _stage(f"round {iteration}: training -> {checkpoint.name}"):
        if checkpoint.exists() and rank() == 0:
            experiment.move_rounds_aside(iteration)
        barrier()
        start_from = job.model_path if iteration == 0 else experiment.checkpoint(iteration - 1)
        set_seed(job.training_args.seed)
        encoder = _new_encoder(job, start_from)
        triplets, negatives = training_samples(job, iteration)
        dataset = ComposedRetrievalDataset(
            job.train_split,
            triplets,
            negatives,
            job.iter_args.num_hard_negatives if iteration > 0 else 0,
            seed=job.training_args.seed,
        )
        logger.info(
            "round %d: %d training triplets (%d original, %d augmented), %d with hard negatives",
            iteration,
            len(triplets),
            sum(t.source == "original" for t in triplets),
            sum(t.source != "original" for t in triplets),
            sum(1 for t in triplets if negatives.get(t.pairid)),
        )
        if iteration == 0 and job.iter_args.skip_round0:
            summary = {"skipped": "checkpoint_iter_0 is the base model (--skip_round0)"}
        else:
            summary = train_round(
                encoder,
                dataset,
                job.training_args,
                LossOptions(
                    temperature=job.model_args.temperature,
                    group_loss_weight=job.iter_args.group_loss_weight,
                    grad_cache=job.iter_args.grad_cache,
                    gc_mini_batch_size=job.iter_args.gc_mini_batch_size,
                    group_by_reference=job.iter_args.group_by_reference,
                ),
                job.instruction_set,
                experiment.train_dir(iteration),
            )
        if rank() == 0:
            _save_checkpoint(encoder, checkpoint, iteration, config, len(dataset), summary)
            experiment.record_stage("train", iteration, summary | {"num_samples": len(dataset)})
        barrier()


def _save_checkpoint(
    encoder: VLM2VecEncoder,
    checkpoint: Path,
    iteration: int,
    config: dict,
    num_samples: int,
    summary: dict,
) -> None:
    """Save into a temporary folder, describe it in stage.json, then rename into place."""
    partial = checkpoint.with_name(checkpoint.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    encoder.save(partial)
    write_json_atomic(
        partial / "stage.json",
        {
            "iteration": iteration,
            "fingerprint": weights_fingerprint(encoder),
            "num_train_samples": num_samples,
            "summary": summary,
            "config": config,
        },
    )
    partial.rename(checkpoint)


def training_samples(job: Job, iteration: int) -> tuple[list[Triplet], dict[str, list[str]]]:
    """Original (+ augmented) triplets of round `iteration`, and each one's hard negatives."""
    triplets = list(job.train_split.triplets)
    if iteration == 0:
        return triplets, {}
    mined = read_json(job.experiment.hard_negatives(iteration - 1))["queries"]
    negatives = {pairid: [n["image"] for n in q["negatives"]] for pairid, q in mined.items()}
    augmented = augmented_training_samples(job.experiment, iteration, job.iter_args.augmented_pool)
    for pairid, images in augmented.false_negatives.items():
        negatives[pairid] = [n for n in negatives.get(pairid, []) if n not in images]
    negatives.update(augmented.negatives)
    return triplets + augmented.triplets, negatives


def mining_options(job: Job) -> MiningOptions:
    args = job.iter_args
    return MiningOptions(
        k=args.hard_negative_k,
        scope=args.mine_scope,
        margin=args.hard_negative_margin,
        skip_top=args.hard_negative_skip_top,
        source=args.negative_source,
        seed=job.training_args.seed,
    )


def mine_stage(job: Job, iteration: int) -> None:
    """Mine hard negatives with checkpoint_iter_{iteration} -> hard_negatives_iter_{iteration}.json."""
    experiment = job.experiment
    output = experiment.hard_negatives(iteration)
    checkpoint = experiment.checkpoint(iteration)
    fingerprint = checkpoint_meta(checkpoint)["fingerprint"]
    mining = mining_options(job)
    options = dataclasses.asdict(mining)
    if output.is_file():
        meta = read_json(output)["meta"]
        if meta["checkpoint_fingerprint"] == fingerprint and meta["options"] == options:
            logger.info("%s is done, skipping mining", output.name)
            return
    with _stage(f"mining with {checkpoint.name} -> {output.name}"):
        encoded = encode_with_checkpoint(job, iteration, job.train_split)
        mined = mine_hard_negatives(
            encoded.queries,
            encoded.gallery,
            encoded.gallery_names,
            encoded.triplets,
            mining,
        )
        if rank() == 0:
            meta = {
                "checkpoint": str(checkpoint),
                "checkpoint_fingerprint": fingerprint,
                "options": options,
                "seed": options["seed"],
                "time": time.strftime("%Y-%m-%dT%H:%M:%S"),
            }
            write_json_atomic(
                output, {"meta": meta, "stats": mined["stats"], "queries": mined["queries"]}
            )
            experiment.record_stage("mine", iteration, {"stats": _short_stats(mined["stats"])})
            log_mining_summary(mined["stats"])
        barrier()


def _short_stats(stats: dict) -> dict:
    keys = ("num_queries", "num_mined", "num_negatives", "train_recall@1", "train_recall@5")
    return {k: stats[k] for k in keys}


def log_mining_summary(stats: dict) -> None:
    logger.info(
        "mined %d of %d queries, %d negatives; train R@1 %.1f R@5 %.1f",
        stats["num_mined"],
        stats["num_queries"],
        stats["num_negatives"],
        stats["train_recall@1"],
        stats["train_recall@5"],
    )
    logger.info("target rank histogram: %s", stats["target_rank_histogram"])
    logger.info("candidates removed by filter: %s", stats["removed_by_filter"])
    for name in ("target_scores", "negative_scores"):
        dist = stats[name]
        if dist.get("count"):
            logger.info(
                "%s: mean %.3f, p5 %.3f, median %.3f, p95 %.3f",
                name.replace("_", " "),
                dist["mean"],
                dist["p5"],
                dist["p50"],
                dist["p95"],
            )


def evaluate_stage(job: Job, iteration: int) -> dict[str, float]:
    """Validation metrics of checkpoint_iter_{iteration} into evaluation_results.json."""
    experiment = job.experiment
    key = f"iter_{iteration}"
    results = (
        read_json(experiment.evaluation_results) if experiment.evaluation_results.is_file() else {}
    )
    if key in results:
        logger.info("%s is already evaluated, skipping", key)
        return results[key]
    checkpoint = experiment.checkpoint(iteration)
    with _stage(f"evaluating {checkpoint.name} on {job.val_split.name}"):
        encoded = encode_with_checkpoint(job, iteration, job.val_split)
        metrics = split_metrics(encoded, job.val_split, job.data_args.dataset_name)
        if rank() == 0:
            results[key] = metrics
            write_json_atomic(experiment.evaluation_results, results)
            experiment.record_stage("evaluate", iteration, metrics)
            logger.info("%s: %s", key, ", ".join(f"{k} {v:.2f}" for k, v in metrics.items()))
        barrier()
    return metrics


def run_job(job: Job) -> dict:
    """Run (or resume) every round; returns evaluation_results."""
    experiment, args = job.experiment, job.iter_args
    resuming = args.auto_resume or args.resume_from_iteration is not None
    with experiment.lock() if rank() == 0 else contextlib.nullcontext():
        if rank() == 0:
            experiment.start(all_arguments(job), resuming, args.allow_config_change)
            if args.resume_from_iteration is not None:
                moved = experiment.move_rounds_aside(args.resume_from_iteration)
                logger.info("rounds >= %d moved aside to %s", args.resume_from_iteration, moved)
        barrier()
        logger.info("experiment directory: %s", experiment.dir)
        train_stage(job, 0)
        evaluate_stage(job, 0)
        for iteration in range(1, args.num_iterations + 1):
            mine_stage(job, iteration - 1)
            run_augmentation(job, iteration)
            train_stage(job, iteration)
            evaluate_stage(job, iteration)
    return read_json(experiment.evaluation_results)
