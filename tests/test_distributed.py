"""Two processes (torchrun, gloo) give the same update as one process with the same global batch,
in plain and in cached (GradCache) mode: the gather keeps local gradients and nothing is lost."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[1]
SCRIPT = "tests/scripts/distributed_train_step.py"


def run(command: list[str]) -> None:
    env = os.environ | {"PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    completed = subprocess.run(
        command, cwd=REPO, env=env, capture_output=True, text=True, timeout=300
    )
    assert completed.returncode == 0, completed.stdout[-3000:] + completed.stderr[-3000:]


def test_two_processes_match_one(tiny_qwen, small_benchmark, tmp_path):
    one, two = tmp_path / "one.pt", tmp_path / "two.pt"
    run([sys.executable, SCRIPT, str(tiny_qwen), str(small_benchmark), "8", str(one)])
    run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
         SCRIPT, str(tiny_qwen), str(small_benchmark), "4", str(two)]
    )  # fmt: skip
    for mode in ("plain", "grad_cache"):
        single, double = torch.load(one)[mode], torch.load(two)[mode]
        assert double["loss"] == pytest.approx(single["loss"], abs=1e-5), mode
        changed = 0
        for name, weight in single["weights"].items():
            assert torch.allclose(weight, double["weights"][name], atol=2e-5), (mode, name)
            changed += int(not torch.equal(weight, single["initial"][name]))
        assert changed > 10, mode


def test_launcher_runs_the_whole_job_on_two_processes(tiny_qwen, small_benchmark, tmp_path):
    """./run_iterative_training.sh --nproc 2: every artifact, each stage recorded once."""
    experiment = tmp_path / "exp"
    args = ["--model_name", str(tiny_qwen), "--dataset_path", str(small_benchmark), "--fast_mode",
            "--num_iterations", "1", "--batch_size", "8", "--experiment_dir", str(experiment),
            "--dataloader_num_workers", "0"]  # fmt: skip
    completed = subprocess.run(
        ["bash", "run_iterative_training.sh", "--nproc", "2", *args],
        cwd=REPO,
        env=os.environ | {"OMP_NUM_THREADS": "1"},
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert completed.returncode == 0, completed.stdout[-3000:] + completed.stderr[-3000:]
    assert completed.stdout.count("experiment directory:") == 2  # the log line and the final report
    stages = [json.loads(line) for line in (experiment / "stages.jsonl").read_text().splitlines()]
    assert sorted((s["stage"], s["iteration"]) for s in stages) == [
        ("augment", 1), ("evaluate", 0), ("evaluate", 1), ("mine", 0), ("train", 0), ("train", 1),
    ]  # fmt: skip
    assert all(s["meta"]["processes"] == 2 for s in stages if s["stage"] == "train")
    results = json.loads((experiment / "evaluation_results.json").read_text())
    assert sorted(results) == ["iter_0", "iter_1"]
    assert (experiment / "checkpoint_iter_1" / "stage.json").is_file()
