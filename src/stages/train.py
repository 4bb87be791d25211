"""Training stage of round i -> checkpoint_iter_{i}/.

Round 0 starts from the base model and trains on the original triplets; round i starts
from checkpoint_iter_{i-1} and trains on the round's dataset (original + augmented
triplets, mined hard negatives in the loss). The checkpoint is saved into a temporary
folder, described in stage.json (meta, summary, fingerprint: the digest of the files
written, and for a LoRA adapter the records of its base model's files) and renamed into
place; a killed round resumes from the Trainer's last complete `checkpoint-N`.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

from transformers import set_seed

from src.data.dataset.composed_retrieval_dataset import ComposedRetrievalDataset
from src.experiment import STAGE_META_NAME, Experiment, StageResult, result_config
from src.experiment_io import read_json, write_json_atomic
from src.integrity import content_digest, digest_of
from src.job import Job
from src.model.encoder import VLM2VecEncoder
from src.training import train_round

logger = logging.getLogger("rounds")


def round_inputs(job: Job, iteration: int) -> tuple[dict | None, list[tuple[int, dict]]]:
    """The mined negatives and the augmented files (round, content) round `iteration` uses."""
    if iteration == 0:
        return None, []
    experiment = job.experiment
    mined = None
    if job.uses_mining:
        mined = read_json(experiment.hard_negatives(iteration - 1))["queries"]
    rounds = [iteration] if job.augment.pool == "current" else range(1, iteration + 1)
    return mined, [(i, read_json(experiment.augmented(i))) for i in rounds]


def _input_digests(job: Job, iteration: int) -> dict:
    """What the round trains from, by content: the start checkpoint and the round's data
    (a mined or augmented file written again with the same data does not retrain)."""
    if iteration == 0:
        return {"start": "base model"}
    mined, augmented = round_inputs(job, iteration)
    return {
        "start": job.experiment.verified_checkpoint(iteration - 1).fingerprint,
        "hard_negatives": content_digest(mined),
        "augmented": {
            str(i): content_digest([payload["samples"], payload.get("false_negatives", {})])
            for i, payload in augmented
        },
    }


def train_meta(job: Job, iteration: int) -> dict:
    """What checkpoint_iter_{iteration} must have been made from to count as done."""
    meta = {"inputs": _input_digests(job, iteration)}
    if not job.iter_args.allow_config_change:
        meta["config"] = result_config(job.arguments())
    return meta


def train_stage(job: Job, iteration: int) -> None:
    """Train round `iteration` into checkpoint_iter_{iteration} unless it is already there."""
    experiment = job.experiment
    meta = train_meta(job, iteration)
    checkpoint = experiment.checkpoint(iteration)
    state: dict = {}

    def work() -> StageResult:
        start_from = job.model_path if iteration == 0 else experiment.checkpoint(iteration - 1)
        set_seed(job.seed)
        encoder = job.encoder.build(start_from)
        mined, augmented = round_inputs(job, iteration)
        dataset = ComposedRetrievalDataset.for_round(
            job.train_split,
            mined,
            augmented,
            job.iter_args.num_hard_negatives if iteration > 0 else 0,
            seed=job.seed,
        )
        counts = dataset.counts()
        logger.info(
            "round %d: %d training triplets (%d original, %d augmented), %d with hard negatives",
            iteration,
            len(dataset),
            counts["original"],
            counts["augmented"],
            counts["with_hard_negatives"],
        )
        if iteration == 0 and job.iter_args.skip_round0:
            summary = {"skipped": "checkpoint_iter_0 is the base model (--skip_round0)"}
        else:
            summary = train_round(
                encoder,
                dataset,
                job.training_args,
                job.loss,
                job.instruction_set,
                experiment.train_dir(iteration),
                iteration,
                experiment.tensorboard_dir(iteration),
            )
        state["encoder"] = encoder
        summary = summary | {"num_samples": len(dataset)}
        return StageResult({"iteration": iteration, "summary": summary}, summary)

    def save(path: Path, result: StageResult) -> None:
        save_checkpoint(experiment, state.pop("encoder"), path, meta, result.content)

    experiment.run_stage("train", iteration, checkpoint, meta, work, save)


def save_checkpoint(
    experiment: Experiment, encoder: VLM2VecEncoder, checkpoint: Path, meta: dict, content: dict
) -> None:
    """Save into a temporary folder, describe it in stage.json, then rename into place."""
    partial = checkpoint.with_name(checkpoint.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    encoder.save(partial)
    files = experiment.digests.directory(partial)
    bases = []
    if encoder.config.lora:  # the adapter's embeddings depend on its base model's files too
        config = encoder.config
        paths = [config.base_model] + ([config.adapter_base_model] if config.adapter_base_model else [])
        bases = [{"path": path, "files": experiment.digests.directory(path)} for path in paths]
    stage = {
        **content,
        "meta": meta,
        "fingerprint": digest_of({"files": files, "bases": [base["files"] for base in bases]}),
        "base_models": bases,
    }
    write_json_atomic(partial / STAGE_META_NAME, stage)
    partial.rename(checkpoint)
