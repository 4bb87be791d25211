"""Clean exits: SIGTERM during training saves a checkpoint and exits, resumable; the
two-process job exits cleanly every time; a rank that fails takes the others down within
torchrun's grace period instead of leaving them waiting."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from preloaded_processes import start_training

from src.cli import train_main
from src.errors import INTERRUPTED_EXIT_STATUS
from src.experiment import Experiment
from src.experiment_io import read_json
from src.faults import FAULT_ENV, FAULT_EXIT_STATUS, FAULT_RANK_ENV
from src.training import CHECKPOINT_FILES_NAME

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[2]
TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]


def test_sigterm_during_training_saves_a_checkpoint_and_exits_cleanly(job_argv, preloaded, tmp_path):
    # 20 steps: SIGTERM goes at the first logged step, 19 steps before the end
    flags = ["--num_iterations", "0", "--max_steps", "20", "--save_steps", "1000",
             "--logging_steps", "1", "--batch_size", "4"]  # fmt: skip
    experiment = Experiment(tmp_path / "exp")
    log = tmp_path / "child.log"
    child = start_training(preloaded, job_argv(experiment.dir, *flags), log)
    deadline = time.monotonic() + 120
    while "'loss'" not in (log.read_text() if log.exists() else ""):  # the handler is in place
        assert child.is_alive() and time.monotonic() < deadline, log.read_text()[-2000:]
        time.sleep(0.05)
    os.kill(child.pid, signal.SIGTERM)
    child.join(120)
    said = log.read_text()
    assert child.exitcode == INTERRUPTED_EXIT_STATUS, said[-2000:]
    assert "stopped by SIGTERM after saving" in said and "--auto_resume" in said
    (saved,) = experiment.train_dir(0).glob("checkpoint-*")
    assert (saved / CHECKPOINT_FILES_NAME).is_file()
    assert not experiment.checkpoint(0).exists()

    argv = job_argv(experiment.dir, *flags, "--auto_resume")
    assert train_main(argv) == 0
    train = [s for s in experiment.log.entries() if s.stage == "train"][0]
    assert train.summary.resumed_from == str(saved) and train.summary.steps == 20
    straight = Experiment(tmp_path / "straight")
    assert train_main(job_argv(straight.dir, *flags)) == 0
    fingerprint = read_json(experiment.checkpoint(0) / "stage.json")["fingerprint"]
    assert fingerprint == read_json(straight.checkpoint(0) / "stage.json")["fingerprint"]


def two_process_job(job_argv, experiment_dir, rounds: int = 1) -> list[str]:
    """The whole job on two processes, as small as it gets (the exits are what is tested)."""
    return [*TORCHRUN, "train_iterative.py", *job_argv(
        experiment_dir, "--num_iterations", str(rounds), "--max_steps", "1", "--batch_size", "4",
        "--max_train_samples", "16", "--max_eval_samples", "8",
    )]  # fmt: skip


@pytest.mark.stress
def test_the_two_process_job_exits_cleanly_ten_times_in_a_row(job_argv, tmp_path):
    environment = os.environ | {"OMP_NUM_THREADS": "1"}
    for run in range(10):
        completed = subprocess.run(
            two_process_job(job_argv, tmp_path / f"exp{run}", rounds=0),
            cwd=REPO,
            env=environment,
            capture_output=True,
            text=True,
            timeout=300,
        )
        output = completed.stdout + completed.stderr
        assert completed.returncode == 0, f"run {run}: {output[-3000:]}"
        assert "terminate called" not in output and "SIGABRT" not in output, f"run {run}"


def test_a_failing_rank_takes_the_others_down_within_the_grace_period(job_argv, tmp_path):
    environment = os.environ | {FAULT_ENV: "mining:0", FAULT_RANK_ENV: "1", "OMP_NUM_THREADS": "1"}
    start = time.monotonic()
    completed = subprocess.run(
        two_process_job(job_argv, tmp_path / "exp"),
        cwd=REPO,
        env=environment,
        capture_output=True,
        text=True,
        timeout=300,
    )
    elapsed = time.monotonic() - start
    assert completed.returncode != 0
    assert f"exitcode  : {FAULT_EXIT_STATUS}" in completed.stderr, completed.stderr[-3000:]
    assert "fault injected: mining:0" in completed.stderr
    # rank 0 never waits on its dead peer for longer than torchrun's 30 s grace period
    assert elapsed < 120, elapsed
