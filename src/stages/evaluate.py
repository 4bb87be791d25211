"""Evaluation stage: a checkpoint on a split -> evaluation_{split}_iter_{i}.json.

A labelled split gives the official metrics and each query's target rank and top five
(which the report shows; evaluation_results.json, the summary of every round's validation
metrics, is rebuilt), and whether the model composes: each query ranked again with its
reference image alone and with its text alone (src/retrieval/metrics.py), the share of
queries one modality solves and the recall on the others (`Evaluation.modalities`,
each query's `image_rank` and `text_rank`). CIRR's test1 has no labels, so it gives the
two official submission files instead, named in the artifact. The meta names the
checkpoint's fingerprint, the split's rows and the encoding flags that change embeddings
(`EncodeArguments`, e.g. another pixel budget), so a changed checkpoint, split or
encoding is evaluated again, and, for a labelled split, the rankings made (`RANKINGS`), so a file
written before the image-only and text-only rankings existed is evaluated again on resume
(seconds: the gallery and composed queries come from the embedding cache, only the texts
are encoded). The embeddings come from the cache whenever mining already made them.
"""

from __future__ import annotations

import logging

from src.artifacts import Evaluation, QueryRanking, digest
from src.data.records import Split
from src.distributed import is_main
from src.experiment import Experiment, StageOutput
from src.experiment.step import DependsOn, Reads, Step
from src.experiment_io import write_json_atomic
from src.faults import fault_point
from src.records import SubmissionSummary
from src.retrieval.checkpoint_encoding import CheckpointEncoder, EncodeSettings
from src.retrieval.encode import EmbeddingCache
from src.retrieval.evaluate import (
    split_metrics,
    split_modalities,
    split_rankings,
    submission_files,
)

logger = logging.getLogger("rounds")

# The rankings a labelled split's evaluation makes (its meta names them: a file without
# the image-only and text-only rankings is evaluated again).
RANKINGS = ["composed", "image_only", "text_only"]


def split_rows(split: Split) -> str:
    """The digest of what a split evaluates: its queries and its gallery."""
    rows = [[t.pairid, t.reference, t.caption, t.target] for t in split.triplets]
    return digest([rows, sorted(split.images)])


def evaluate_step(
    experiment: Experiment, iteration: int, split: Split, dataset_name: str, settings: EncodeSettings
) -> Step:
    """checkpoint_iter_{iteration} on `split` -> evaluation_{split}_iter_{iteration}.json (metrics
    for a labelled split, the submission files for test1). It reads the checkpoint and the
    split's rows and depends on the encoding flags (`settings.options`)."""

    def facts() -> dict:
        return {"dataset": dataset_name, "split": split.name} | (
            {"rankings": RANKINGS} if split.has_labels else {}
        )

    def produce() -> StageOutput:
        checkpoint = experiment.verified_checkpoint(iteration)
        cache = EmbeddingCache(experiment.embeddings_dir)
        with CheckpointEncoder(checkpoint.path, checkpoint.fingerprint, cache, settings) as encoder:
            encoded = encoder.encode_split(
                split, split.triplets, dataset_name, text_only=split.has_labels
            )
        fault_point("evaluation", iteration)
        if not split.has_labels:
            written = []
            for payload in submission_files(encoded):
                path = experiment.submission(iteration, payload["metric"])
                if is_main():
                    write_json_atomic(path, payload)
                written.append(path.name)
            artifact = Evaluation({}, submission_files=written)
            return StageOutput(artifact, SubmissionSummary(submission_files=written))
        metrics = split_metrics(encoded, split, dataset_name)
        logger.info(
            "iter_%d: %s", iteration, ", ".join(f"{k} {v:.2f}" for k, v in metrics.items())
        )
        rankings = split_rankings(encoded, split, dataset_name)
        modalities, unimodal = split_modalities(encoded, split, dataset_name)
        logger.info("iter_%d: %s", iteration, modality_line(modalities))
        queries = {
            pairid: QueryRanking(**ranking, **unimodal[pairid])
            for pairid, ranking in rankings.items()
        }
        return StageOutput(Evaluation({}, metrics, queries, modalities=modalities), metrics)

    def after(evaluation: Evaluation) -> None:
        if split.has_labels and is_main():
            experiment.write_results_summary()

    return Step(
        stage="evaluate",
        round=iteration,
        iteration=iteration,
        artifact=experiment.evaluation(split.name, iteration),
        kind=Evaluation,
        experiment=experiment,
        produce=produce,
        reads=(
            Reads.checkpoint(experiment, iteration),
            Reads("rows", lambda: split_rows(split)),
        ),
        depends_on=(DependsOn("encoding", (settings.options,), omit_empty=True),),
        facts=facts,
        after=after,
        describes=f"encode {len(split.images)} gallery images + {len(split.triplets)} queries"
        + (" (+ their texts alone), metrics" if split.has_labels else ", submission files"),
        work={"encode": len(split.images) + len(split.triplets)},
    )


def modality_line(modalities: dict) -> str:
    """The log's line: per K, the share solved by one modality and R@K on the rest."""
    ks = [int(key.split("@")[1]) for key in modalities if key.startswith("need_both_recall@")]
    parts = []
    for k in ks:
        rest = modalities[f"need_both_recall@{k}"]
        parts.append(
            f"@{k} {modalities[f'solved_by_one_modality@{k}']:.2f}% solved by one modality, "
            f"R@{k} {'-' if rest is None else f'{rest:.2f}'} on the "
            f"{modalities[f'need_both_queries@{k}']} that need both"
        )
    return "; ".join(parts)
