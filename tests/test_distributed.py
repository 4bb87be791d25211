"""Several processes and several nodes, checked on a CPU machine as a GPU user would meet them.

Every process these tests start runs under tests/harness/simulated_nccl.py: a tensor made
without a device inside src/distributed.py is refused by every collective, as NCCL refuses
a CPU tensor (the harness's docstring says how). So a collective that would fail at the
first step of a multi-GPU run fails here too, although gloo itself would take it.

- Two processes give the same update as one process with the same global batch, in plain
  and cached (GradCache) mode: the gather keeps local gradients and nothing is lost; DDP
  runs without looking for unused parameters after each backward.
- The whole job on two processes of one node and on two "nodes" (two torchrun agents on
  127.0.0.1, one process each) writes the same artifacts with the same numbers.
- Two "nodes" that each get their own experiment directory stop with one line naming it,
  within a bounded time, instead of failing later on missing files or hanging.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from src.distributed import SHARED_DIRECTORY_WAIT_ENV

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[1]
SCRIPT = "tests/scripts/distributed_train_step.py"
ENV = os.environ | {
    "PYTHONPATH": f"{REPO / 'tests' / 'harness'}{os.pathsep}{REPO}",
    "CIR_SIMULATED_NCCL": "1",
    "OMP_NUM_THREADS": "1",
    "PYTHON": sys.executable,
}


def run(command: list[str], timeout: int = 300) -> subprocess.CompletedProcess:
    completed = subprocess.run(command, cwd=REPO, env=ENV, capture_output=True, text=True, timeout=timeout)
    assert completed.returncode == 0, completed.stdout[-3000:] + completed.stderr[-3000:]
    return completed


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_two_processes_match_one(tiny_qwen, small_benchmark, tmp_path):
    one, two = tmp_path / "one.pt", tmp_path / "two.pt"
    run([sys.executable, SCRIPT, str(tiny_qwen), str(small_benchmark), "8", str(one)])
    run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
         SCRIPT, str(tiny_qwen), str(small_benchmark), "4", str(two)]
    )  # fmt: skip
    for mode in ("plain", "grad_cache"):
        single, double = torch.load(one)[mode], torch.load(two)[mode]
        assert double["find_unused"] is False, mode  # no graph walk after each backward
        assert double["loss"] == pytest.approx(single["loss"], abs=1e-5), mode
        changed = 0
        for name, weight in single["weights"].items():
            assert torch.allclose(weight, double["weights"][name], atol=2e-5), (mode, name)
            changed += int(not torch.equal(weight, single["initial"][name]))
        assert changed > 10, mode


def two_nodes(flags_of_node, timeout: int = 600, env: dict | None = None) -> list[subprocess.CompletedProcess]:
    """Two torchrun agents on 127.0.0.1, one process each, started through the launcher."""
    port = free_port()
    agents = [
        subprocess.Popen(
            ["bash", "run_iterative_training.sh", "--nnodes", "2", "--node_rank", str(node),
             "--master_addr", "127.0.0.1", "--master_port", str(port), "--nproc", "1",
             *flags_of_node(node)],
            cwd=REPO, env=ENV | (env or {}), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        for node in (0, 1)
    ]
    results = []
    for agent in agents:
        stdout, stderr = agent.communicate(timeout=timeout)
        results.append(subprocess.CompletedProcess(agent.args, agent.returncode, stdout, stderr))
    return results


def artifacts(experiment: Path) -> dict:
    """What a run wrote, by stage: checkpoint fingerprints and metrics."""
    stages = [json.loads(line) for line in (experiment / "stages.jsonl").read_text().splitlines()]
    found = {}
    for stage in stages:
        key = (stage["stage"], stage["iteration"])
        if stage["stage"] == "train":
            found[key] = json.loads((experiment / f"checkpoint_iter_{key[1]}" / "stage.json").read_text())["fingerprint"]
        elif stage["stage"] == "evaluate":
            found[key] = stage["meta"]
        else:
            found[key] = stage["artifact"]["name"]
    return found


def test_the_job_on_two_processes_of_one_node_and_on_two_nodes(job_argv, tmp_path):
    """./run_iterative_training.sh --nproc 2, and the same job on two nodes: same files, same numbers."""
    one_node = tmp_path / "one_node"
    completed = run(["bash", "run_iterative_training.sh", "--nproc", "2",
                     *job_argv(one_node, "--fast_mode")], timeout=600)  # fmt: skip
    assert "launching: " in completed.stderr and "--nproc_per_node 2" in completed.stderr
    assert completed.stdout.count("experiment directory:") == 2  # the log line and the final report
    expected = artifacts(one_node)
    assert sorted(expected) == [
        ("augment", 1), ("evaluate", 0), ("evaluate", 1), ("mine", 0), ("train", 0), ("train", 1),
    ]  # fmt: skip
    stages = [json.loads(line) for line in (one_node / "stages.jsonl").read_text().splitlines()]
    assert all(s["meta"]["processes"] == 2 for s in stages if s["stage"] == "train")

    two_node = tmp_path / "two_nodes"
    for node, completed in enumerate(two_nodes(lambda _: job_argv(two_node, "--fast_mode"))):
        assert completed.returncode == 0, f"node {node}: {completed.stderr[-3000:]}"
    assert artifacts(two_node) == expected
    assert not (two_node / ".shared_check").exists()


def test_nodes_with_their_own_experiment_directories_stop_with_one_line(job_argv, tmp_path):
    start = time.monotonic()
    results = two_nodes(
        lambda node: job_argv(tmp_path / f"node{node}", "--fast_mode"), 300, env={SHARED_DIRECTORY_WAIT_ENV: "4"}
    )
    elapsed = time.monotonic() - start
    for node, completed in enumerate(results):
        assert completed.returncode != 0
        lines = [line for line in completed.stderr.splitlines() if line.startswith("error: ")]
        assert len(lines) == 1, completed.stderr[-3000:]
        assert f"--experiment_dir {tmp_path / f'node{node}'} is not shared by every process" in lines[0]
        assert "rank 1 on" in lines[0] and "rank 0 on" in lines[0] and "within 4 s" in lines[0]
        assert not (tmp_path / f"node{node}" / "experiment_config.json").exists()
    assert elapsed < 4 + 90, elapsed
