"""Mining stage: hard negatives of the training queries, retrieved with checkpoint_iter_{i}.

-> hard_negatives_iter_{i}.json: {"meta", "stats", "queries": {pairid: {target_rank,
target_score, negatives}}}. The meta names the checkpoint's fingerprint and the mining
options, so a rerun with either changed mines again.
"""

from __future__ import annotations

import dataclasses
import logging
import time

from src.data.dataset.composed_retrieval_dataset import ComposedRetrievalDataset
from src.experiment import StageResult
from src.job import Job
from src.retrieval.checkpoint_encoding import CheckpointEncoder
from src.retrieval.encode import EmbeddingCache

logger = logging.getLogger("rounds")

SUMMARY_KEYS = ("num_queries", "num_mined", "num_negatives", "train_recall@1", "train_recall@5")


def mine_meta(job: Job, checkpoint_iteration: int) -> dict:
    """What a hard-negative file mined with checkpoint_iter_{checkpoint_iteration} must have
    been made from to count as done."""
    checkpoint = job.experiment.verified_checkpoint(checkpoint_iteration)
    return {"checkpoint_fingerprint": checkpoint.fingerprint, "options": dataclasses.asdict(job.mining)}


def mine_stage(job: Job, iteration: int, checkpoint_iteration: int | None = None) -> None:
    """Mine with checkpoint_iter_{checkpoint_iteration} (default: {iteration}) ->
    hard_negatives_iter_{iteration}.json, which round iteration + 1 trains with."""
    experiment = job.experiment
    checkpoint_iteration = iteration if checkpoint_iteration is None else checkpoint_iteration
    checkpoint = experiment.verified_checkpoint(checkpoint_iteration)
    meta = mine_meta(job, checkpoint_iteration)
    options = meta["options"]

    def work() -> StageResult:
        dataset = ComposedRetrievalDataset(job.train_split, job.train_split.triplets)
        cache = EmbeddingCache(experiment.embeddings_dir)
        with CheckpointEncoder(checkpoint.path, checkpoint.fingerprint, cache, job.encoding) as encoder:
            mined = dataset.mine_hard_negatives(encoder, job.instruction_set, job.mining)
        log_mining_summary(mined["stats"])
        content = {
            "meta": {
                "checkpoint": str(checkpoint.path),
                "seed": options["seed"],
                "time": time.strftime("%Y-%m-%dT%H:%M:%S"),
            },
            "stats": mined["stats"],
            "queries": mined["queries"],
        }
        return StageResult(content, {"stats": {k: mined["stats"][k] for k in SUMMARY_KEYS}})

    experiment.run_stage("mine", iteration, experiment.hard_negatives(iteration), meta, work)


def log_mining_summary(stats: dict) -> None:
    recall = [
        "n/a" if stats[key] is None else f"{stats[key]:.1f}"
        for key in ("train_recall@1", "train_recall@5")
    ]
    logger.info(
        "mined %d of %d queries, %d negatives; train R@1 %s R@5 %s",
        stats["num_mined"],
        stats["num_queries"],
        stats["num_negatives"],
        *recall,
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
