"""Mining stage: hard negatives of the training queries, retrieved with checkpoint_iter_{i}.

-> hard_negatives_iter_{i}.json (`HardNegatives`, src/artifacts.py). The meta names the
checkpoint's fingerprint and the mining flags, so a rerun with either changed mines again.
"""

from __future__ import annotations

import dataclasses
import logging
import time

from src.arguments import result_config
from src.artifacts import HardNegatives
from src.data.dataset.composed_retrieval_dataset import ComposedRetrievalDataset
from src.experiment import StageOutput
from src.job import Job
from src.records import MineSummary, MiningStats
from src.retrieval.checkpoint_encoding import CheckpointEncoder
from src.retrieval.encode import EmbeddingCache
from src.stages.step import Step

logger = logging.getLogger("rounds")


def mine_meta(job: Job, checkpoint_iteration: int) -> dict:
    """What a hard-negative file mined with checkpoint_iter_{checkpoint_iteration} must have
    been made from to count as done (`mining_checkpoint` says which file a round reads,
    not what is in one)."""
    checkpoint = job.experiment.verified_checkpoint(checkpoint_iteration)
    options = result_config(dataclasses.asdict(job.mining), type(job.mining))
    options.pop("mining_checkpoint")
    return {"checkpoint_fingerprint": checkpoint.fingerprint, "options": options, "seed": job.seed}


def mine_step(job: Job, round_: int) -> Step:
    """Mining for round `round_`: with checkpoint_iter_{source} -> hard_negatives_iter_{round_ - 1}."""
    source = job.mining.checkpoint_for(round_)
    train = job.train_split
    mining = job.mining
    return Step(
        stage="mine",
        round=round_,
        iteration=round_ - 1,
        artifact=job.experiment.hard_negatives(round_ - 1),
        kind=HardNegatives,
        meta=lambda: mine_meta(job, source),
        run=lambda: mine_stage(job, round_ - 1, source),
        describes=(
            f"encode {len(train.images)} gallery images + {len(train.triplets)} queries with "
            f"checkpoint_iter_{source}, top {mining.hard_negative_k} ({mining.negative_source}, "
            f"scope {mining.mine_scope})"
        ),
        work={"encode": len(train.images) + len(train.triplets)},
    )


def mine_stage(job: Job, iteration: int, checkpoint_iteration: int) -> HardNegatives:
    """Mine with checkpoint_iter_{checkpoint_iteration} -> hard_negatives_iter_{iteration}.json,
    which round iteration + 1 trains with."""
    experiment = job.experiment
    checkpoint = experiment.verified_checkpoint(checkpoint_iteration)
    meta = mine_meta(job, checkpoint_iteration)

    def work() -> StageOutput:
        dataset = ComposedRetrievalDataset(job.train_split, job.train_split.triplets)
        cache = EmbeddingCache(experiment.embeddings_dir)
        with CheckpointEncoder(checkpoint.path, checkpoint.fingerprint, cache, job.encoding) as encoder:
            mined = dataset.mine_hard_negatives(encoder, job.dataset_name, job.mining, job.seed)
        log_mining_summary(mined.stats)
        extra = {"checkpoint": str(checkpoint.path), "time": time.strftime("%Y-%m-%dT%H:%M:%S")}
        artifact = HardNegatives(extra, mined.stats, mined.queries)
        return StageOutput(artifact, MineSummary(stats=mined.stats.headline()))

    return experiment.run_stage(
        "mine", iteration, experiment.hard_negatives(iteration), HardNegatives, meta, work
    )


def log_mining_summary(stats: MiningStats) -> None:
    recall = [
        "n/a" if value is None else f"{value:.1f}"
        for value in (stats.train_recall_at_1, stats.train_recall_at_5)
    ]
    logger.info(
        "mined %d of %d queries, %d negatives; train R@1 %s R@5 %s",
        stats.num_mined,
        stats.num_queries,
        stats.num_negatives,
        *recall,
    )
    logger.info("target rank histogram: %s", stats.target_rank_histogram)
    logger.info("candidates removed by filter: %s", stats.removed_by_filter)
    for name, distribution in (("target scores", stats.target_scores), ("negative scores", stats.negative_scores)):
        if distribution.count:
            logger.info(
                "%s: mean %.3f, p5 %.3f, median %.3f, p95 %.3f",
                name,
                distribution.mean,
                distribution.p5,
                distribution.p50,
                distribution.p95,
            )
