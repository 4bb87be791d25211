"""Evaluation stage: a checkpoint on a split -> evaluation_{split}_iter_{i}.json.

A labelled split gives the official metrics and each query's target rank and top five
(which the report shows; evaluation_results.json, the summary of every round's validation
metrics, is rebuilt); CIRR's test1 has no labels, so it gives the
two official submission files instead, named in the artifact. The meta names the
checkpoint's fingerprint and the split's rows, so a changed checkpoint or split is
evaluated again; the embeddings come from the cache whenever mining already made them.
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path

from src.data.records import Split
from src.distributed import is_main
from src.experiment import Experiment, StageResult
from src.experiment_io import write_json_atomic
from src.faults import fault_point
from src.retrieval.checkpoint_encoding import CheckpointEncoder, EncodeSettings
from src.retrieval.encode import EmbeddingCache
from src.retrieval.evaluate import split_metrics, split_rankings, submission_files

logger = logging.getLogger("rounds")


def _rows_digest(split: Split) -> str:
    rows = [[t.pairid, t.reference, t.caption, t.target] for t in split.triplets]
    return hashlib.sha256(json.dumps([rows, sorted(split.images)]).encode()).hexdigest()[:32]


def submission_path(experiment: Experiment, iteration: int, metric: str) -> Path:
    return experiment.dir / f"cirr_test_submission_iter_{iteration}_{metric}.json"


def evaluate_meta(experiment: Experiment, iteration: int, split: Split, dataset_name: str) -> dict:
    """What evaluation_{split}_iter_{iteration}.json must have been made from to count as done."""
    return {
        "checkpoint_fingerprint": experiment.verified_checkpoint(iteration).fingerprint,
        "dataset": dataset_name,
        "split": split.name,
        "rows": _rows_digest(split),
    }


def evaluate_stage(
    experiment: Experiment,
    iteration: int,
    split: Split,
    dataset_name: str,
    settings: EncodeSettings,
) -> dict:
    """Evaluate checkpoint_iter_{iteration} on `split`; returns the artifact's content
    ({"metrics"} for a labelled split, {"submission_files"} for test1)."""
    checkpoint = experiment.verified_checkpoint(iteration)
    meta = evaluate_meta(experiment, iteration, split, dataset_name)

    def work() -> StageResult:
        cache = EmbeddingCache(experiment.embeddings_dir)
        with CheckpointEncoder(checkpoint.path, checkpoint.fingerprint, cache, settings) as encoder:
            encoded = encoder.encode_split(split, split.triplets, dataset_name)
        fault_point("evaluation", iteration)
        if not split.has_labels:
            written = []
            for payload in submission_files(encoded):
                path = submission_path(experiment, iteration, payload["metric"])
                if is_main():
                    write_json_atomic(path, payload)
                written.append(path.name)
            return StageResult({"submission_files": written}, {"submission_files": written})
        metrics = split_metrics(encoded, split, dataset_name)
        logger.info(
            "iter_%d: %s", iteration, ", ".join(f"{k} {v:.2f}" for k, v in metrics.items())
        )
        rankings = split_rankings(encoded, split, dataset_name)
        return StageResult({"metrics": metrics, "queries": rankings}, metrics)

    content = experiment.run_stage(
        "evaluate", iteration, experiment.evaluation(split.name, iteration), meta, work
    )
    if split.has_labels and is_main():
        experiment.write_results_summary()
    return content
