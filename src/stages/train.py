"""Training stage of round i -> checkpoint_iter_{i}/.

Round 0 starts from the base model and trains on the original triplets; round i starts
from checkpoint_iter_{i-1} and trains on the round's dataset (original + augmented
triplets, mined hard negatives in the loss). The checkpoint is saved into a temporary
folder, described in stage.json (`CheckpointRecord`: meta, summary, fingerprint: the
digest of the files written, and for a LoRA adapter the records of its base model's files)
and renamed into place; a killed round resumes from the Trainer's last complete
`checkpoint-N`.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

from transformers import set_seed

from src.arguments import result_config
from src.artifacts import (
    AugmentedSamples,
    CheckpointRecord,
    HardNegatives,
    checkpoint_fingerprint,
    digest,
)
from src.data.dataset.composed_retrieval_dataset import ComposedRetrievalDataset
from src.distributed import world_size
from src.experiment import Experiment, StageOutput
from src.experiment.layout import PARTIAL_SUFFIX, STAGE_RECORD_NAME
from src.job import Job
from src.model.encoder import VLM2VecEncoder, build_encoder
from src.stages.step import Step
from src.training import optimizer_steps, train_round

logger = logging.getLogger("rounds")


def round_inputs(job: Job, iteration: int) -> tuple[HardNegatives | None, list[tuple[int, AugmentedSamples]]]:
    """The mined negatives and the augmented files (round, content) round `iteration` uses."""
    if iteration == 0:
        return None, []
    experiment = job.experiment
    mined = HardNegatives.read(experiment.hard_negatives(iteration - 1)) if job.uses_mining else None
    rounds = [iteration] if job.augment.augmented_pool == "current" else range(1, iteration + 1)
    return mined, [(i, AugmentedSamples.read(experiment.augmented(i))) for i in rounds]


def _input_digests(job: Job, iteration: int) -> dict:
    """What the round trains from, by content: the start checkpoint and the round's data
    (a mined or augmented file written again with the same data does not retrain)."""
    if iteration == 0:
        return {"start": "base model"}
    mined, augmented = round_inputs(job, iteration)
    return {
        "start": job.experiment.verified_checkpoint(iteration - 1).fingerprint,
        "hard_negatives": digest(mined.queries_json() if mined else None),
        "augmented": {str(i): digest(payload.training_content()) for i, payload in augmented},
    }


def train_meta(job: Job, iteration: int) -> dict:
    """What checkpoint_iter_{iteration} must have been made from to count as done."""
    meta = {"inputs": _input_digests(job, iteration)}
    if not job.run.allow_config_change:
        meta["config"] = result_config(job.arguments())
    return meta


def train_step(job: Job, iteration: int, augmented_pairs: int = 0) -> Step:
    """Round `iteration`'s training (`augmented_pairs`: at most that many new triplets)."""
    original = len(job.train_split.triplets)
    steps = optimizer_steps(job.training, original + augmented_pairs, world_size())
    if iteration == 0:
        describes = (
            "keep the base model (--skip_round0)"
            if job.run.skip_round0
            else f"train {original} triplets, {steps} optimizer steps"
        )
        steps = 0 if job.run.skip_round0 else steps
    else:
        describes = (
            f"train {original} original + up to {augmented_pairs} augmented triplets, "
            f"{job.training.num_hard_negatives} hard negative(s) each, up to {steps} steps"
        )
    return Step(
        stage="train",
        round=iteration,
        iteration=iteration,
        artifact=job.experiment.checkpoint(iteration),
        kind=CheckpointRecord,
        meta=lambda: train_meta(job, iteration),
        run=lambda: train_stage(job, iteration),
        describes=describes,
        work={"train": steps},
    )


def train_stage(job: Job, iteration: int) -> CheckpointRecord:
    """Train round `iteration` into checkpoint_iter_{iteration} unless it is already there."""
    experiment = job.experiment
    meta = train_meta(job, iteration)
    state: dict = {}

    def work() -> StageOutput:
        start_from = job.model_path if iteration == 0 else experiment.checkpoint(iteration - 1)
        set_seed(job.seed)
        encoder = build_encoder(start_from, job.model)
        mined, augmented = round_inputs(job, iteration)
        dataset = ComposedRetrievalDataset.for_round(
            job.train_split,
            mined,
            augmented,
            job.training.num_hard_negatives if iteration > 0 else 0,
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
        if iteration == 0 and job.run.skip_round0:
            summary = {"skipped": "checkpoint_iter_0 is the base model (--skip_round0)"}
        else:
            summary = train_round(
                encoder,
                dataset,
                job.training,
                job.dataset_name,
                experiment.train_dir(iteration),
                iteration,
                experiment.tensorboard_dir(iteration),
                job.image_store,
            )
        state["encoder"] = encoder
        summary = summary | {"num_samples": len(dataset)}
        return StageOutput(CheckpointRecord({}, iteration, summary, fingerprint=""), summary)

    def save(path: Path, output: StageOutput) -> None:
        save_checkpoint(experiment, state.pop("encoder"), path, output.artifact)

    record = experiment.run_stage(
        "train", iteration, experiment.checkpoint(iteration), CheckpointRecord, meta, work, save
    )
    state.clear()  # the trained model (rank 0 dropped it after saving; the others here)
    return record


def save_checkpoint(
    experiment: Experiment, encoder: VLM2VecEncoder, checkpoint: Path, record: CheckpointRecord
) -> None:
    """Save into a temporary folder, describe it in stage.json, then rename into place."""
    partial = checkpoint.with_name(checkpoint.name + PARTIAL_SUFFIX)
    shutil.rmtree(partial, ignore_errors=True)
    encoder.save(partial)
    files = experiment.digests.directory(partial)
    record.base_models = [  # a LoRA adapter's embeddings depend on its base model's files too
        {"path": path, "files": experiment.digests.directory(path)}
        for path in encoder.config.base_models()
    ]
    record.fingerprint = checkpoint_fingerprint(files, [base["files"] for base in record.base_models])
    record.write(partial / STAGE_RECORD_NAME)
    partial.rename(checkpoint)
