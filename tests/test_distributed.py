"""Two processes (torchrun, gloo) give the same update as one process with the same global batch,
in plain and in cached (GradCache) mode: the gather keeps local gradients and nothing is lost."""

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


@pytest.mark.parametrize("grad_cache", ["0", "1"])
def test_two_processes_match_one(tiny_qwen, small_benchmark, tmp_path, grad_cache):
    one, two = tmp_path / "one.pt", tmp_path / "two.pt"
    run([sys.executable, SCRIPT, str(tiny_qwen), str(small_benchmark), "8", grad_cache, str(one)])
    run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc_per_node",
            "2",
            SCRIPT,
        ]
        + [str(tiny_qwen), str(small_benchmark), "4", grad_cache, str(two)]
    )
    single, double = torch.load(one), torch.load(two)
    assert double["loss"] == pytest.approx(single["loss"], abs=1e-5)
    changed = 0
    for name, weight in single["weights"].items():
        assert torch.allclose(weight, double["weights"][name], atol=2e-5), name
        changed += int(not torch.equal(weight, single["initial"][name]))
    assert changed > 10
