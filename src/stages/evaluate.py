"""Evaluation stage: a checkpoint on a split -> evaluation_{split}_iter_{i}.json.

A labelled split gives the official metrics and each query's target rank and top five
(which the report shows; evaluation_results.json, the summary of every round's validation
metrics, is rebuilt); CIRR's test1 has no labels, so it gives the two official submission
files instead, named in the artifact. The meta names the checkpoint's fingerprint and the
split's rows, so a changed checkpoint or split is evaluated again; the embeddings come
from the cache whenever mining already made them.
"""

from __future__ import annotations

import logging

from src.artifacts import Evaluation, QueryRanking, digest
from src.data.records import Split
from src.distributed import is_main
from src.experiment import Experiment, StageOutput
from src.experiment_io import write_json_atomic
from src.faults import fault_point
from src.retrieval.checkpoint_encoding import CheckpointEncoder, EncodeSettings
from src.retrieval.encode import EmbeddingCache
from src.retrieval.evaluate import split_metrics, split_rankings, submission_files
from src.stages.step import Step

logger = logging.getLogger("rounds")


def evaluate_meta(experiment: Experiment, iteration: int, split: Split, dataset_name: str) -> dict:
    """What evaluation_{split}_iter_{iteration}.json must have been made from to count as done."""
    rows = [[t.pairid, t.reference, t.caption, t.target] for t in split.triplets]
    return {
        "checkpoint_fingerprint": experiment.verified_checkpoint(iteration).fingerprint,
        "dataset": dataset_name,
        "split": split.name,
        "rows": digest([rows, sorted(split.images)]),
    }


def evaluate_step(
    experiment: Experiment, iteration: int, split: Split, dataset_name: str, settings: EncodeSettings
) -> Step:
    return Step(
        stage="evaluate",
        round=iteration,
        iteration=iteration,
        artifact=experiment.evaluation(split.name, iteration),
        kind=Evaluation,
        meta=lambda: evaluate_meta(experiment, iteration, split, dataset_name),
        run=lambda: evaluate_stage(experiment, iteration, split, dataset_name, settings),
        describes=f"encode {len(split.images)} gallery images + {len(split.triplets)} queries, metrics",
        work={"encode": len(split.images) + len(split.triplets)},
    )


def evaluate_stage(
    experiment: Experiment,
    iteration: int,
    split: Split,
    dataset_name: str,
    settings: EncodeSettings,
) -> Evaluation:
    """Evaluate checkpoint_iter_{iteration} on `split` (metrics for a labelled split, the
    submission files for test1)."""
    checkpoint = experiment.verified_checkpoint(iteration)
    meta = evaluate_meta(experiment, iteration, split, dataset_name)

    def work() -> StageOutput:
        cache = EmbeddingCache(experiment.embeddings_dir)
        with CheckpointEncoder(checkpoint.path, checkpoint.fingerprint, cache, settings) as encoder:
            encoded = encoder.encode_split(split, split.triplets, dataset_name)
        fault_point("evaluation", iteration)
        if not split.has_labels:
            written = []
            for payload in submission_files(encoded):
                path = experiment.submission(iteration, payload["metric"])
                if is_main():
                    write_json_atomic(path, payload)
                written.append(path.name)
            return StageOutput(Evaluation({}, submission_files=written), {"submission_files": written})
        metrics = split_metrics(encoded, split, dataset_name)
        logger.info(
            "iter_%d: %s", iteration, ", ".join(f"{k} {v:.2f}" for k, v in metrics.items())
        )
        rankings = split_rankings(encoded, split, dataset_name)
        queries = {pairid: QueryRanking(**ranking) for pairid, ranking in rankings.items()}
        return StageOutput(Evaluation({}, metrics, queries), metrics)

    evaluation = experiment.run_stage(
        "evaluate", iteration, experiment.evaluation(split.name, iteration), Evaluation, meta, work
    )
    if split.has_labels and is_main():
        experiment.write_results_summary()
    return evaluation
