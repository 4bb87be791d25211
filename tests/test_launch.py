"""The launcher's command for one process, N processes on one node and several nodes, and
the refusal of one process that sees several GPUs (device counts simulated)."""

from __future__ import annotations

import pytest
import torch

from src.cli import train_main
from src.launch import TRAIN_SCRIPT, launch_command

PY = "/venv/bin/python"
TORCHRUN = [PY, "-m", "torch.distributed.run"]


def test_one_process_on_a_machine_without_a_gpu():
    assert launch_command(["--fast_mode"], visible_gpus=0, python=PY) == [PY, TRAIN_SCRIPT, "--fast_mode"]


def test_one_process_per_visible_gpu_by_default():
    assert launch_command(["--lora"], visible_gpus=4, python=PY) == [
        *TORCHRUN, "--standalone", "--nproc_per_node", "4", TRAIN_SCRIPT, "--lora",
    ]  # fmt: skip
    assert launch_command(["--nproc", "2"], visible_gpus=4, python=PY)[5] == "2"
    assert launch_command(["--nproc=1", "--x"], visible_gpus=4, python=PY) == [PY, TRAIN_SCRIPT, "--x"]


def test_two_nodes_static_and_rendezvous():
    static = launch_command(
        ["--nnodes", "2", "--node_rank", "1", "--master_addr", "10.0.0.1", "--nproc", "8", "--lora"],
        visible_gpus=8,
        python=PY,
    )
    assert static == [*TORCHRUN, "--nnodes", "2", "--nproc_per_node", "8", "--node_rank", "1",
                      "--master_addr", "10.0.0.1", "--master_port", "29500", TRAIN_SCRIPT, "--lora"]  # fmt: skip
    rendezvous = launch_command(["--nnodes", "2", "--rdzv_endpoint", "h:29400"], visible_gpus=8, python=PY)
    assert rendezvous == [*TORCHRUN, "--nnodes", "2", "--nproc_per_node", "8", "--rdzv_backend",
                          "c10d", "--rdzv_endpoint", "h:29400", TRAIN_SCRIPT]  # fmt: skip


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--nnodes", "2"], "give each node --node_rank"),
        (["--nnodes", "2", "--node_rank", "2", "--master_addr", "h"], "--node_rank 2"),
        (["--node_rank", "1"], "need --nnodes > 1"),
        (["--nproc", "0"], "must be >= 1"),
    ],
)
def test_launcher_flags_that_do_not_go_together(argv, message, capsys):
    with pytest.raises(SystemExit) as stop:
        launch_command(argv, visible_gpus=1, python=PY)
    assert stop.value.code == 2 and message in capsys.readouterr().err


def test_more_processes_than_the_node_has_gpus_is_refused(capsys):
    """Each process takes one GPU (LOCAL_RANK): the ones above the count failed at set_device
    with a traceback."""
    for argv in (["--nproc", "8"], ["--nnodes", "2", "--node_rank", "0", "--master_addr", "h", "--nproc", "5"]):
        with pytest.raises(SystemExit) as stop:
            launch_command(argv, visible_gpus=4, python=PY)
        error = capsys.readouterr().err
        assert stop.value.code == 2 and error.count("\n") == 1
        assert "this node sees 4 GPU(s) and each process takes one; use --nproc 4 or fewer" in error
    assert launch_command(["--nproc", "4"], visible_gpus=4, python=PY)[5] == "4"
    assert launch_command(["--nproc", "3"], visible_gpus=0, python=PY)[5] == "3"  # CPU processes


def test_one_process_that_sees_several_gpus_stops_before_any_work(monkeypatch, tmp_path, capsys):
    """Without this, the Trainer would wrap the model in nn.DataParallel."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 4)
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    monkeypatch.delenv("LOCAL_RANK", raising=False)
    status = train_main(["--cache_dir", str(tmp_path / "cache"), "--experiment_dir", str(tmp_path / "exp")])
    error = capsys.readouterr().err
    assert status == 2
    assert "sees 4 GPUs" in error and "./run_iterative_training.sh --nproc 4" in error
    assert "CUDA_VISIBLE_DEVICES=0" in error and error.count("\n") == 1
    assert not (tmp_path / "cache").exists() and not (tmp_path / "exp").exists()


def test_a_launcher_that_exports_world_size_but_not_local_rank_is_refused(monkeypatch, tmp_path, capsys):
    """accelerate and transformers read LOCAL_RANK: without it every process would drive all
    the node's GPUs with nn.DataParallel, whatever WORLD_SIZE says."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 8)
    monkeypatch.setenv("WORLD_SIZE", "8")
    monkeypatch.delenv("LOCAL_RANK", raising=False)
    status = train_main(["--cache_dir", str(tmp_path / "cache"), "--experiment_dir", str(tmp_path / "exp")])
    error = capsys.readouterr().err
    assert status == 2 and error.count("\n") == 1
    assert "WORLD_SIZE=8 is set but LOCAL_RANK is not" in error and "nn.DataParallel" in error
    assert not (tmp_path / "cache").exists()
