"""Kill the job at named points (fault injection, CIR_FAULT) and resume it: a resumed run
ends with the same artifacts as an uninterrupted one and never redoes a finished stage."""

import json
from pathlib import Path

import pytest
from preloaded_processes import start_training

from src.artifacts import AugmentedSamples, CheckpointRecord, HardNegatives, PartialGenerations
from src.cli import train_main
from src.experiment import Experiment
from src.experiment_io import read_json
from src.faults import FAULT_ENV, FAULT_EXIT_STATUS

pytestmark = pytest.mark.slow


KILLABLE = ("--max_steps", "6", "--save_steps", "2", "--num_hard_negatives", "2",
            "--encode_batch_size", "16", "--augment_flush_every", "4", "--foundation_batch_size", "2")  # fmt: skip


def run_with_fault(preloaded, args: list[str], fault: str, log: Path) -> None:
    """train_iterative.py's work in a child process that ends itself at the named point."""
    child = start_training(preloaded, args, log, {FAULT_ENV: fault})
    child.join(300)
    said = log.read_text()
    assert child.exitcode == FAULT_EXIT_STATUS, said[-3000:]
    assert f"fault injected: {fault}" in said


def artifacts(experiment: Experiment) -> dict:
    """Everything a run produces that must not depend on where it was interrupted."""
    augmented = AugmentedSamples.read(experiment.augmented(1))
    return {
        "mined": HardNegatives.read(experiment.hard_negatives(0)).queries,
        "augmented": [augmented.samples, augmented.rejected],
        "fingerprints": [CheckpointRecord.read(experiment.checkpoint_record(i)).fingerprint for i in (0, 1)],
        "results": read_json(experiment.evaluation_results),
    }


def test_killed_at_every_named_point_resumes_to_the_same_artifacts(job_argv, preloaded, tmp_path):
    baseline = Experiment(tmp_path / "baseline")
    assert train_main(job_argv(baseline.dir, *KILLABLE)) == 0

    killed = Experiment(tmp_path / "killed")
    args = job_argv(killed.dir, *KILLABLE)
    run_with_fault(preloaded, args, "mining:10", tmp_path / "killed.log")
    assert killed.checkpoint(0).is_dir() and not killed.hard_negatives(0).exists()

    resume = [*args, "--auto_resume"]
    run_with_fault(preloaded, resume, "augmentation:4", tmp_path / "killed.log")
    assert not killed.augmented(1).exists()
    (partial,) = killed.partial_augmented_files(1)
    assert len(PartialGenerations.read(partial).generations) == 4

    run_with_fault(preloaded, resume, "training@1:4", tmp_path / "killed.log")
    trainer_checkpoints = sorted(p.name for p in killed.train_dir(1).glob("checkpoint-*"))
    assert trainer_checkpoints == ["checkpoint-2", "checkpoint-4"]
    assert not killed.checkpoint(1).exists()

    run_with_fault(preloaded, resume, "evaluation:1", tmp_path / "killed.log")
    assert killed.checkpoint(1).is_dir() and not killed.evaluation("val", 1).exists()

    assert train_main(resume) == 0
    assert artifacts(killed) == artifacts(baseline)
    stages = [(s.stage, s.iteration) for s in killed.log.entries()]
    assert sorted(stages) == sorted(set(stages)), f"a finished stage ran twice: {stages}"
    train_1 = [s for s in killed.log.entries() if s.stage == "train" and s.iteration == 1][0]
    assert train_1.summary.resumed_from.endswith("checkpoint-4")
    augment_1 = [s for s in killed.log.entries() if s.stage == "augment"][0]
    assert augment_1.summary.pairs_resumed == 4


def test_resume_from_iteration_reruns_and_keeps_the_old_artifacts(copied, job_argv, two_round_flags):
    experiment = copied
    old = json.loads(experiment.hard_negatives(0).read_text())
    args = job_argv(experiment.dir, *two_round_flags, "--auto_resume", "--resume_from_iteration", "1")
    assert train_main(args) == 0
    moved = sorted(experiment.dir.glob("moved_aside_*"))
    assert len(moved) == 1
    assert {p.name for p in moved[0].iterdir()} >= {
        "checkpoint_iter_1",
        "hard_negatives_iter_0.json",
        "train_iter_1",
        "evaluation_val_iter_1.json",
    }
    assert json.loads((moved[0] / "hard_negatives_iter_0.json").read_text()) == old
    assert experiment.checkpoint(1).is_dir()
    assert json.loads(experiment.hard_negatives(0).read_text())["queries"] == old["queries"]
