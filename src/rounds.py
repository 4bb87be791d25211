"""The iterative job as data: the list of steps it runs, in order.

round 0   train on the original triplets                  -> checkpoint_iter_0/
round i   mine with checkpoint_iter_{i-1}                  -> hard_negatives_iter_{i-1}.json
          (--mining_checkpoint first: with checkpoint_iter_0; skipped when nothing reads
          the negatives)
          augment (foundation-model texts)                 -> augmented_samples_iter_{i}.json
          train from checkpoint_iter_{i-1}, hard negatives -> checkpoint_iter_{i}/
every     evaluate on the validation split                 -> evaluation_val_iter_{i}.json

`job_steps` is the one place that says this: `run_rounds` executes its steps and `--plan`
prints them (src/plan.py). Each step (src/experiment/step.py) declares what it reads and
depends on, its meta derived from those, and goes through the one runner,
`Experiment.run_step`, which skips it when its artifact is done. docs/architecture.md
draws the whole.
"""

from __future__ import annotations

import contextlib
import logging

from src.devices import memory_line, release_device_memory
from src.distributed import barrier, decided_by_main, is_main
from src.experiment.step import Step
from src.job import Job
from src.stages.augment import augment_step, pair_selection
from src.stages.evaluate import evaluate_step
from src.stages.mine import mine_step
from src.stages.train import train_step

logger = logging.getLogger("rounds")


def captioned_pairs(job: Job, iteration: int) -> int:
    """Pairs round `iteration` captions: exact once its negatives are mined, else the bound."""
    with contextlib.suppress(OSError, KeyError, ValueError):
        return len(pair_selection(job, iteration)[1].pairs)
    pairs = len(job.train_split.triplets) * job.augment.augment_pairs_per_query
    return min(pairs, job.augment.pair_cap or pairs)


def job_steps(job: Job) -> list[Step]:
    """Every step of the job, in the order it runs."""

    def evaluate(i: int) -> Step:
        return evaluate_step(job.experiment, i, job.val_split, job.dataset_name, job.encoding)

    steps = [train_step(job, 0), evaluate(0)]
    for i in range(1, job.run.num_iterations + 1):
        if job.uses_mining:
            steps.append(mine_step(job, i))
        pairs = captioned_pairs(job, i) if job.captioner != "none" else 0
        steps += [augment_step(job, i, pairs), train_step(job, i, pairs), evaluate(i)]
    return steps


def start_experiment(job: Job) -> None:
    """Write or check experiment_config.json, and move rounds aside for --resume_from_iteration."""
    experiment, run = job.experiment, job.run
    if is_main():
        experiment.config.start(job.arguments(), run.resuming, run.allow_config_change)
        if run.resume_from_iteration is not None:
            moved = experiment.move_rounds_aside(run.resume_from_iteration)
            logger.info("rounds >= %d moved aside to %s", run.resume_from_iteration, moved)
    barrier()


def run_rounds(job: Job) -> dict:
    """Run (or resume) every step; returns the validation metrics of every round."""
    logger.info("experiment directory: %s", job.experiment.dir)
    if not job.uses_mining:
        logger.info("no mining: nothing uses hard negatives")
    for step in job_steps(job):
        step.run()
        release_device_memory()  # what the stage held (its model) is gone before the next
        logger.info("memory after %s %d: %s", step.stage, step.round, memory_line())
    return job.experiment.write_results_summary() if is_main() else {}


def run_job(job: Job) -> dict:
    """Lock the experiment (rank 0), start or check it, and run every step.

    Rank 0 takes the lock and every process gets its outcome: a directory in use stops
    every process with the same line, instead of leaving the others at the next barrier.
    """
    with contextlib.ExitStack() as held:
        decided_by_main(lambda: held.enter_context(job.experiment.lock()))
        start_experiment(job)
        return run_rounds(job)
