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
import runpy
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


def run(command: list[str], timeout: int = 300, env: dict | None = None) -> subprocess.CompletedProcess:
    completed = subprocess.run(
        command, cwd=REPO, env=ENV | (env or {}), capture_output=True, text=True, timeout=timeout
    )
    assert completed.returncode == 0, completed.stdout[-3000:] + completed.stderr[-3000:]
    return completed


def harness_reports(directory: Path) -> dict[str, dict]:
    """What the simulated NCCL harness checked in each worker (by rank; the agent has none)."""
    reports = [json.loads(path.read_text()) for path in directory.glob("*.json")]
    return {report["rank"]: report for report in reports if report["rank"] is not None}


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_two_processes_match_one(tiny_qwen, small_benchmark, tmp_path, monkeypatch):
    one, two = tmp_path / "one.pt", tmp_path / "two.pt"
    # one process: this one (the script as `python` runs it), no interpreter to start
    monkeypatch.setattr(sys, "argv", [SCRIPT, str(tiny_qwen), str(small_benchmark), "8", str(one)])
    runpy.run_path(str(REPO / SCRIPT), run_name="__main__")
    reports = tmp_path / "harness"
    reports.mkdir()
    run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
         SCRIPT, str(tiny_qwen), str(small_benchmark), "4", str(two)],
        env={"CIR_SIMULATED_NCCL_REPORT": str(reports)},
    )  # fmt: skip
    checked = harness_reports(reports)  # the harness ran in both workers and saw the gathers
    assert sorted(checked) == ["0", "1"]
    assert all(r["tensor_collectives"] >= 8 and r["refused"] == 0 for r in checked.values()), checked
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


def ends_with_one_line(completed: subprocess.CompletedProcess) -> str:
    """The launcher's stderr ends with the project's one line (exit status 2), and holds no
    other error line and no torchrun traceback (ChildFailedError) after it."""
    assert completed.returncode == 2, completed.stderr[-3000:]
    lines = completed.stderr.strip().splitlines()
    assert [line for line in lines if line.startswith("error: ")] == lines[-1:], completed.stderr[-3000:]
    assert "ChildFailedError" not in completed.stderr and "Traceback" not in completed.stderr
    return lines[-1]


def test_nodes_with_their_own_experiment_directories_stop_with_one_line(job_argv, tmp_path):
    start = time.monotonic()
    results = two_nodes(
        lambda node: job_argv(tmp_path / f"node{node}", "--fast_mode"), 300, env={SHARED_DIRECTORY_WAIT_ENV: "1"}
    )
    elapsed = time.monotonic() - start
    for node, completed in enumerate(results):
        line = ends_with_one_line(completed)
        assert f"--experiment_dir {tmp_path / f'node{node}'} is not shared by every process" in line
        assert "rank 1 on" in line and "rank 0 on" in line and "within 1 s" in line
        assert not (tmp_path / f"node{node}" / "experiment_config.json").exists()
    assert elapsed < 1 + 90, elapsed


def test_a_path_one_node_cannot_see_stops_every_node_with_the_same_line(job_argv, tiny_qwen, tmp_path):
    """Node 1 has no copy of the model: its check fails there only; every process's outcome
    is gathered, so node 0 stops with the same line at once instead of waiting at its next
    collective until the NCCL timeout."""
    missing = tmp_path / "models" / "tiny_qwen"
    start = time.monotonic()
    results = two_nodes(
        lambda node: job_argv(tmp_path / "exp", "--fast_mode", model=tiny_qwen if node == 0 else missing), 300
    )
    elapsed = time.monotonic() - start
    lines = [ends_with_one_line(completed) for completed in results]
    assert lines[0] == lines[1], lines
    assert lines[0].startswith(f"error: --model_name {missing}: no such directory") and "(rank 1 on " in lines[0]
    assert not (tmp_path / "exp" / "experiment_config.json").exists()
    assert elapsed < 90, elapsed


def test_a_cpu_tensor_collective_in_a_child_process_is_refused(tmp_path):
    """The harness is active in the processes torchrun starts, and refuses there every way
    of handing a collective a CPU tensor that NCCL would refuse (tests/scripts/
    cpu_tensor_collective.py); tensors on collective_device() pass."""
    reports = tmp_path / "harness"
    reports.mkdir()
    output = tmp_path / "outcome"
    run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
         "tests/scripts/cpu_tensor_collective.py", str(output)],
        env={"CIR_SIMULATED_NCCL_REPORT": str(reports)},
    )  # fmt: skip
    for rank in (0, 1):
        found = json.loads(Path(f"{output}.rank{rank}.json").read_text())
        results = found["results"]
        assert {name: results[name] for name in found["mistakes"]} == dict.fromkeys(found["mistakes"], "refused")
        assert {v for k, v in results.items() if k not in found["mistakes"]} == {"ran"}, results
        assert harness_reports(reports)[str(rank)]["refused"] == len(found["mistakes"])
