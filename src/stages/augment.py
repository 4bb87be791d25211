"""Augmentation stage of round i: new modification texts for mined hard negatives.

For each mined query and each of its first `--augment_pairs_per_query` hard negatives, a
captioner writes a text that turns the query's reference image into that negative; the
triplet (reference, new text, negative) becomes a positive of round i, with the query's
original target as its own hard negative (the old target no longer matches the new text).

    select pairs -> generate (batched, resumable: src/augment/generation.py)
    -> clean and reject (cleaning.py) -> [--consistency_filter: yes/no check by the same
    model] -> release the model -> [--verify_augmented: the current embedder must prefer
    the negative] -> write

`augmented_samples_iter_{i}.json` holds `meta` (what made it: a finished file with the
same meta is not redone), `stats` (every rejection counted), `samples`, `rejected` and
`false_negatives` ({source pairid: [mined negatives the consistency check flagged]}).
"""

from __future__ import annotations

import contextlib
import gc
import logging
import time
from collections.abc import Iterator
from pathlib import Path

import torch

from src.augment.captioners import Captioner, load_captioner
from src.augment.cleaning import REJECTION_REASONS, filter_generations
from src.augment.consistency import CONSISTENCY_REASONS, apply_answers, false_negatives
from src.augment.filters import Decisions
from src.augment.generation import ask_consistency, generate_texts, read_partials
from src.augment.pairs import CaptionPair, pairs_digest, select_pairs
from src.augment.prompts import PROMPT_VERSION
from src.augment.verify import VERIFY_REASON, embedder_scores, filter_by_embedder
from src.distributed import barrier, is_main, merge_dicts, rank, world_size
from src.experiment import StageResult
from src.experiment_io import read_json, write_json_atomic
from src.job import Job
from src.retrieval.checkpoint_encoding import CheckpointEncoder
from src.retrieval.encode import EmbeddingCache

logger = logging.getLogger("augment")

ALL_REASONS = (*REJECTION_REASONS, *CONSISTENCY_REASONS, VERIFY_REASON)


@contextlib.contextmanager
def _timed(seconds: dict[str, float], name: str) -> Iterator[None]:
    start = time.perf_counter()
    yield
    seconds[name] = round(time.perf_counter() - start, 2)


def _release() -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def augment_request(job: Job, iteration: int) -> tuple[dict, list[CaptionPair], int]:
    """The meta augmented_samples_iter_{iteration}.json must have to count as done, the
    pairs to caption, and how many there were before --max_augmented_per_iteration."""
    options = job.augment
    if options.captioner == "none":
        return {"generator": "none", "skipped": "--foundation_model_backbone none: no augmentation"}, [], 0
    mined_file = job.experiment.hard_negatives(iteration - 1)
    mined = read_json(mined_file)
    meta = {
        "generator": options.captioner,
        "hard_negatives": mined_file.name,
        "hard_negatives_fingerprint": mined["meta"]["checkpoint_fingerprint"],
    }
    pairs, available = select_pairs(
        job.train_split.triplets,
        job.train_split.images,
        mined["queries"],
        iteration,
        options.pairs_per_query,
        options.max_pairs,
        random_seed=options.seed if options.negatives == "random" else None,
    )
    path = options.model_path
    meta |= {
        "checkpoint": None if path is None else str(Path(path).resolve()),
        "stands_in_for_a_foundation_model": options.captioner in job.dataset_captioners,
        "prompt_version": PROMPT_VERSION,
        "pairs_digest": pairs_digest(pairs),
        "options": options.result_options(),
    }
    return meta, pairs, available


def augment_stage(job: Job, iteration: int) -> None:
    """Write augmented_samples_iter_{iteration}.json unless a matching one exists."""
    experiment, options = job.experiment, job.augment
    meta, pairs, available = augment_request(job, iteration)

    def work() -> StageResult:
        if options.captioner == "none":
            logger.info("augmentation skipped (--foundation_model_backbone none)")
            stats = {"skipped": meta["skipped"], "kept": 0}
            content = {"stats": stats, "samples": [], "false_negatives": {}}
        else:
            content = _augment(job, iteration, pairs, available, meta)
        summary = {k: v for k, v in content["stats"].items() if k != "seconds"}
        return StageResult(content, {"generator": options.captioner} | summary)

    experiment.run_stage("augment", iteration, experiment.augmented(iteration), meta, work)
    if is_main():
        for partial in experiment.partial_augmented_files(iteration):
            partial.unlink()
    barrier()


def _load(job: Job) -> Captioner:
    options = job.augment
    dataset_captioner = job.dataset_captioners.get(options.captioner)
    if dataset_captioner is not None:
        return dataset_captioner.load(Path(job.dataset_path))
    return load_captioner(options.captioner, options.model_path, options.generation)


def _augment(
    job: Job, iteration: int, pairs: list[CaptionPair], available: int, meta: dict
) -> dict:
    """Generate, clean and filter the new samples of one round; the output file's content."""
    options, experiment = job.augment, job.experiment
    own_path = experiment.partial_augmented(iteration, rank())
    every, own = read_partials(experiment.partial_augmented_files(iteration), own_path, meta)
    barrier()  # every process has read the partial files before any rewrites its own
    pending = [p for p in pairs if p.pairid not in every]
    if every:
        logger.info(
            "resuming: %d of %d pairs already generated", len(pairs) - len(pending), len(pairs)
        )

    def flush(generated: dict[str, dict]) -> None:
        write_json_atomic(own_path, {"meta": meta, "generations": own | generated})

    seconds, captioner, run_info = {}, None, {}
    try:
        if pending or (options.consistency_filter and pairs):
            with _timed(seconds, "load"):
                captioner = _load(job)
            run_info = captioner.describe()
            logger.info(
                "captioner %s ready in %.1f s: %s", options.captioner, seconds["load"], run_info
            )
        if options.generation.do_sample:
            torch.manual_seed(options.seed + iteration)
        with _timed(seconds, "generation"):
            share = pending[rank() :: world_size()]
            generated = merge_dicts(
                generate_texts(captioner, share, options.batch_size, options.flush_every, flush)
            )
        decisions = Decisions(every | generated)
        decisions.apply(filter_generations(pairs, decisions.generations, options.generation.prompt_mode))
        if options.consistency_filter:
            with _timed(seconds, "consistency"):
                decisions.consistency = ask_consistency(captioner, decisions.kept, options.batch_size)
                decisions.apply(apply_answers(decisions.kept, decisions.consistency))
    finally:
        captioner = None  # the foundation model leaves memory before the embedder or training
        _release()
    if options.verify:
        with _timed(seconds, "verify"):
            checkpoint = experiment.verified_checkpoint(iteration - 1)
            cache = EmbeddingCache(experiment.embeddings_dir)
            with CheckpointEncoder(
                checkpoint.path, checkpoint.fingerprint, cache, job.encoding
            ) as encoder:
                decisions.verify = embedder_scores(
                    encoder, job.train_split, decisions.kept, iteration, job.instruction_set
                )
            decisions.apply(filter_by_embedder(decisions.kept, decisions.verify))
    samples = decisions.samples(options.captioner)
    flagged = false_negatives(decisions.rejected)
    stats = {
        "pairs_available": available,
        "pairs": len(pairs),
        "pairs_resumed": len(pairs) - len(pending),
        "pairs_generated": len(generated),
        "rejected": decisions.reasons(ALL_REASONS),
        "kept": len(samples),
        "false_negatives": sum(len(images) for images in flagged.values()),
        "run": run_info,
        "seconds": seconds,
    }
    _log_summary(options.captioner, stats)
    return {
        "stats": stats,
        "samples": samples,
        "rejected": decisions.rejected_records(),
        "false_negatives": flagged,
    }


def _log_summary(captioner_name: str, stats: dict) -> None:
    seconds = stats["seconds"].get("generation", 0.0)
    rate = stats["pairs_generated"] / seconds if seconds > 0 else 0.0
    logger.info(
        "augmentation (%s): generated %d texts in %.1f s (%.2f samples/s; %d resumed from a "
        "partial file); kept %d of %d pairs, %d false negatives flagged",
        captioner_name,
        stats["pairs_generated"],
        seconds,
        rate,
        stats["pairs_resumed"],
        stats["kept"],
        stats["pairs"],
        stats["false_negatives"],
    )
    counted = {reason: n for reason, n in stats["rejected"].items() if n}
    logger.info(
        "rejected: %s", ", ".join(f"{r} {n}" for r, n in counted.items()) if counted else "none"
    )
