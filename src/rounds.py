"""The iterative job, stage by stage.

round 0   train on the original triplets                  -> checkpoint_iter_0/
round i   mine with checkpoint_iter_{i-1}                  -> hard_negatives_iter_{i-1}.json
          augment (foundation-model texts)                 -> augmented_samples_iter_{i}.json
          train from checkpoint_iter_{i-1}, hard negatives -> checkpoint_iter_{i}/
every     evaluate on the validation split                 -> evaluation_val_iter_{i}.json

Each stage goes through `Experiment.run_stage`, which skips it when its artifact is done;
the stages that run are appended to stages.jsonl. docs/architecture.md draws the whole.
"""

from __future__ import annotations

import contextlib
import logging

from src.distributed import barrier, is_main
from src.job import Job
from src.stages.augment import augment_stage
from src.stages.evaluate import evaluate_stage
from src.stages.mine import mine_stage
from src.stages.train import train_stage

logger = logging.getLogger("rounds")


def start_experiment(job: Job) -> None:
    """Write or check experiment_config.json, and move rounds aside for --resume_from_iteration."""
    experiment, args = job.experiment, job.iter_args
    if is_main():
        experiment.start(job.arguments(), args.resuming, args.allow_config_change)
        if args.resume_from_iteration is not None:
            moved = experiment.move_rounds_aside(args.resume_from_iteration)
            logger.info("rounds >= %d moved aside to %s", args.resume_from_iteration, moved)
    barrier()


def run_rounds(job: Job) -> dict:
    """Run (or resume) every round; returns the validation metrics of every round."""
    experiment = job.experiment
    logger.info("experiment directory: %s", experiment.dir)

    def evaluate(iteration: int) -> None:
        evaluate_stage(experiment, iteration, job.val_split, job.dataset_name, job.encoding)

    train_stage(job, 0)
    evaluate(0)
    for iteration in range(1, job.iter_args.num_iterations + 1):
        if job.uses_mining:
            mine_stage(job, iteration - 1, job.mining_checkpoint(iteration))
        else:
            logger.info("round %d: no mining (nothing uses hard negatives)", iteration)
        augment_stage(job, iteration)
        train_stage(job, iteration)
        evaluate(iteration)
    return experiment.write_results_summary() if is_main() else {}


def run_job(job: Job) -> dict:
    """Lock the experiment (rank 0), start or check it, and run every round."""
    with job.experiment.lock() if is_main() else contextlib.nullcontext():
        start_experiment(job)
        return run_rounds(job)
