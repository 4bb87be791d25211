"""Kill the job (SIGKILL) during mining, training and evaluation; --auto_resume finishes it
with the same results as an uninterrupted run and never redoes a finished stage."""

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from src.cli import train_main
from src.experiment import Experiment
from src.training import last_complete_checkpoint

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[1]


def job_args(tiny_qwen, small_benchmark, experiment_dir):
    return [
        "--model_name", str(tiny_qwen),
        "--dataset_path", str(small_benchmark),
        "--experiment_dir", str(experiment_dir),
        "--num_iterations", "1",
        "--max_steps", "6",
        "--save_steps", "2",
        "--batch_size", "8",
        "--num_hard_negatives", "2",
        "--dataloader_num_workers", "0",
        "--encode_batch_size", "16",
        "--foundation_model_backbone", "none",
    ]  # fmt: skip


def run_until_killed(args: list[str], kill_when) -> None:
    """Run train_iterative.py and SIGKILL it as soon as `kill_when(line)` is true."""
    process = subprocess.Popen(
        [sys.executable, "train_iterative.py", *args],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
        env=os.environ | {"PYTHONUNBUFFERED": "1"},
    )
    lines = []
    for line in process.stdout:
        lines.append(line)
        if kill_when(line):
            os.killpg(process.pid, signal.SIGKILL)
            break
    process.wait(timeout=60)
    assert process.returncode == -signal.SIGKILL, "".join(lines[-30:])


def test_killed_run_resumes_to_the_same_results(tiny_qwen, small_benchmark, tmp_path):
    baseline = Experiment(tmp_path / "baseline")
    assert train_main(job_args(tiny_qwen, small_benchmark, baseline.dir)) == 0

    killed = Experiment(tmp_path / "killed")
    args = job_args(tiny_qwen, small_benchmark, killed.dir)
    run_until_killed(args, lambda line: "== mining with checkpoint_iter_0" in line)
    assert not killed.hard_negatives(0).exists() and killed.checkpoint(0).is_dir()

    mid_training = killed.train_dir(1) / "checkpoint-4"
    run_until_killed(
        [*args, "--auto_resume"],
        lambda line: (mid_training / "trainer_state.json").is_file(),
    )
    assert mid_training.is_dir() and not killed.checkpoint(1).exists()

    run_until_killed(
        [*args, "--auto_resume"], lambda line: "== evaluating checkpoint_iter_1" in line
    )
    assert "iter_1" not in json.loads(killed.evaluation_results.read_text())

    assert train_main([*args, "--auto_resume"]) == 0

    def queries(experiment):
        return json.loads(experiment.hard_negatives(0).read_text())["queries"]

    assert queries(killed) == queries(baseline)
    assert json.loads(killed.evaluation_results.read_text()) == json.loads(
        baseline.evaluation_results.read_text()
    )
    stages = [(s["stage"], s["iteration"]) for s in killed.stage_log()]
    assert sorted(stages) == sorted(set(stages)), f"a finished stage ran twice: {stages}"
    train_1 = [s for s in killed.stage_log() if s["stage"] == "train" and s["iteration"] == 1][0]
    assert train_1["meta"]["resumed_from"].endswith("checkpoint-4")


def test_resume_from_iteration_reruns_and_keeps_the_old_artifacts(
    tiny_qwen, small_benchmark, tmp_path
):
    experiment = Experiment(tmp_path / "exp")
    args = job_args(tiny_qwen, small_benchmark, experiment.dir)
    assert train_main(args) == 0
    old = json.loads(experiment.hard_negatives(0).read_text())
    assert train_main([*args, "--auto_resume", "--resume_from_iteration", "1"]) == 0
    moved = sorted(experiment.dir.glob("moved_aside_*"))
    assert len(moved) == 1
    assert {p.name for p in moved[0].iterdir()} >= {
        "checkpoint_iter_1",
        "hard_negatives_iter_0.json",
        "train_iter_1",
    }
    assert json.loads((moved[0] / "hard_negatives_iter_0.json").read_text()) == old
    assert experiment.checkpoint(1).is_dir()
    assert json.loads(experiment.hard_negatives(0).read_text())["queries"] == old["queries"]


def test_an_interrupted_trainer_checkpoint_is_not_resumed_from(tmp_path):
    for step, complete in ((2, True), (4, True), (6, False)):
        path = tmp_path / f"checkpoint-{step}"
        path.mkdir()
        (path / "model.safetensors").write_text("x")
        if complete:
            (path / "trainer_state.json").write_text("{}")
    (tmp_path / "checkpoint-4" / "trainer_state.json").write_text('{"trunc')
    assert last_complete_checkpoint(tmp_path) == str(tmp_path / "checkpoint-2")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint-2"]
    assert last_complete_checkpoint(tmp_path / "absent") is None
