"""Mining stage: hard negatives of the training queries, retrieved with checkpoint_iter_{i}.

-> hard_negatives_iter_{i}.json (`HardNegatives`, src/artifacts.py). The meta names the
checkpoint's fingerprint and the mining flags, so a rerun with either changed mines again.
"""

from __future__ import annotations

import logging
import time

from src.artifacts import HardNegatives
from src.data.dataset.composed_retrieval_dataset import ComposedRetrievalDataset
from src.experiment import StageOutput
from src.experiment.step import DependsOn, Reads, Step
from src.job import Job
from src.records import MineSummary, MiningStats
from src.retrieval.checkpoint_encoding import CheckpointEncoder
from src.retrieval.encode import EmbeddingCache

logger = logging.getLogger("rounds")


def mine_step(job: Job, round_: int) -> Step:
    """Mining for round `round_`: with checkpoint_iter_{source} -> hard_negatives_iter_{round_ - 1}
    (`--mining_checkpoint` says which checkpoint mines the file a round reads, not what is in
    one, so it is left out of the meta)."""
    source, iteration = job.mining.checkpoint_for(round_), round_ - 1
    experiment, train, mining = job.experiment, job.train_split, job.mining

    def produce() -> StageOutput:
        checkpoint = experiment.verified_checkpoint(source)
        dataset = ComposedRetrievalDataset(train, train.triplets)
        cache = EmbeddingCache(experiment.embeddings_dir)
        with CheckpointEncoder(checkpoint.path, checkpoint.fingerprint, cache, job.encoding) as encoder:
            mined = dataset.mine_hard_negatives(encoder, job.dataset_name, mining, job.seed)
        log_mining_summary(mined.stats)
        extra = {"checkpoint": str(checkpoint.path), "time": time.strftime("%Y-%m-%dT%H:%M:%S")}
        artifact = HardNegatives(extra, mined.stats, mined.queries)
        return StageOutput(artifact, MineSummary(stats=mined.stats.headline()))

    return Step(
        stage="mine",
        round=round_,
        iteration=iteration,
        artifact=experiment.hard_negatives(iteration),
        kind=HardNegatives,
        experiment=experiment,
        produce=produce,
        reads=(
            Reads.checkpoint(experiment, source),
        ),
        depends_on=(
            DependsOn("options", (mining,), leave_out=("mining_checkpoint",)),
            DependsOn("seed", (job.training,), only="seed"),
            DependsOn("encoding", (job.flags.encode,), omit_empty=True),  # the embeddings it ranks
        ),
        describes=(
            f"encode {len(train.images)} gallery images + {len(train.triplets)} queries with "
            f"checkpoint_iter_{source}, top {mining.hard_negative_k} ({mining.negative_source}, "
            f"scope {mining.mine_scope})"
        ),
        work={"encode": len(train.images) + len(train.triplets)},
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
