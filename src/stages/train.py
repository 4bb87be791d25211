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
from src.experiment.step import DependsOnArguments, Reads, Step
from src.job import Job
from src.model.encoder import VLM2VecEncoder, build_encoder
from src.records import TrainSkipped
from src.training import optimizer_steps, train_round

logger = logging.getLogger("rounds")


def mined_input(job: Job, iteration: int) -> HardNegatives | None:
    """The mined negatives round `iteration` trains with (None: round 0, or nothing reads them)."""
    if iteration == 0 or not job.uses_mining:
        return None
    return HardNegatives.read(job.experiment.hard_negatives(iteration - 1))


def augmented_inputs(job: Job, iteration: int) -> list[tuple[int, AugmentedSamples]]:
    """The augmented files (round, content) round `iteration` trains on."""
    if iteration == 0:
        return []
    rounds = [iteration] if job.augment.augmented_pool == "current" else range(1, iteration + 1)
    return [(i, AugmentedSamples.read(job.experiment.augmented(i))) for i in rounds]


def round_inputs(job: Job, iteration: int) -> tuple[HardNegatives | None, list[tuple[int, AugmentedSamples]]]:
    """The mined negatives and the augmented files (round, content) round `iteration` uses."""
    return mined_input(job, iteration), augmented_inputs(job, iteration)


def _reads(job: Job, iteration: int) -> tuple[Reads, ...]:
    """What a round trains from, by content: the start checkpoint and the round's data (a
    mined or augmented file written again with the same data does not retrain)."""
    experiment = job.experiment
    if iteration == 0:
        return (Reads("inputs.start", lambda: "base model", Path(job.model_path)),)

    def mined_digest() -> str:
        mined = mined_input(job, iteration)
        return digest(mined.queries_json() if mined else None)

    def augmented_digests() -> dict:
        return {str(i): digest(payload.training_content()) for i, payload in augmented_inputs(job, iteration)}

    return (
        Reads(
            "inputs.start",
            lambda: experiment.verified_checkpoint(iteration - 1).fingerprint,
            experiment.checkpoint(iteration - 1),
        ),
        Reads("inputs.hard_negatives", mined_digest, experiment.hard_negatives(iteration - 1)),
        Reads("inputs.augmented", augmented_digests, experiment.augmented(iteration)),
    )


def train_step(job: Job, iteration: int, augmented_pairs: int = 0) -> Step:
    """Round `iteration`'s training (`augmented_pairs`: at most that many new triplets), into
    checkpoint_iter_{iteration}: it depends on every result-changing argument (unless
    --allow_config_change) and reads the start checkpoint and the round's data."""
    experiment = job.experiment
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
    state: dict = {}

    def produce() -> StageOutput:
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
            summary = TrainSkipped(
                skipped="checkpoint_iter_0 is the base model (--skip_round0)", num_samples=len(dataset)
            )
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
        return StageOutput(CheckpointRecord({}, iteration, summary, fingerprint=""), summary)

    def save(path: Path, output: StageOutput) -> None:
        save_checkpoint(experiment, state.pop("encoder"), path, output.artifact)

    return Step(
        stage="train",
        round=iteration,
        iteration=iteration,
        artifact=experiment.checkpoint(iteration),
        kind=CheckpointRecord,
        experiment=experiment,
        produce=produce,
        reads=_reads(job, iteration),
        depends_on=() if job.run.allow_config_change else (DependsOnArguments("config", job.arguments),),
        save=save,
        # the trained model (rank 0 dropped it after saving; the others here)
        after=lambda artifact: state.clear(),
        describes=describes,
        work={"train": steps},
    )


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
