"""The device collective tensors go to, from the process group's backend configuration."""

from __future__ import annotations

import pytest
import torch

from src import distributed


@pytest.mark.parametrize(
    ("config", "expected"),
    [("cuda:nccl", "cuda:1"), ("cpu:gloo,cuda:gloo", "cpu"), ("cpu:gloo,cuda:nccl", "cpu")],
)
def test_collective_tensors_go_where_the_backend_serves(monkeypatch, config, expected):
    """NCCL serves only this process's GPU (cuda:1 for local rank 1); gloo serves the CPU."""
    monkeypatch.setattr(distributed, "initialized", lambda: True)
    monkeypatch.setattr(distributed.dist, "get_backend_config", lambda: config)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 1)
    assert distributed.collective_device() == torch.device(expected)


def test_without_a_process_group_everything_is_local():
    assert distributed.collective_device() == torch.device("cpu")
    assert distributed.any_process(True) is True
    assert distributed.decided_by_main(lambda: 7) == 7
    with pytest.raises(ValueError, match="boom"):
        distributed.decided_by_main(lambda: (_ for _ in ()).throw(ValueError("boom")))


@pytest.mark.parametrize(("value", "expected"), [(None, 20.0), ("60", 60.0), ("2.5", 2.5)])
def test_the_shared_directory_wait_can_be_set_for_a_slow_filesystem(monkeypatch, value, expected):
    if value is None:
        monkeypatch.delenv(distributed.SHARED_DIRECTORY_WAIT_ENV, raising=False)
    else:
        monkeypatch.setenv(distributed.SHARED_DIRECTORY_WAIT_ENV, value)
    assert distributed.shared_directory_wait_s() == expected


@pytest.mark.parametrize("value", ["soon", "0", "-5"])
def test_a_bad_shared_directory_wait_is_one_line_naming_the_variable(monkeypatch, value):
    monkeypatch.setenv(distributed.SHARED_DIRECTORY_WAIT_ENV, value)
    with pytest.raises(distributed.ArgumentError, match="CIR_SHARED_DIRECTORY_WAIT_S"):
        distributed.shared_directory_wait_s()


def test_a_check_that_fails_on_one_process_stops_every_process_with_the_same_line(monkeypatch):
    """Every process's outcome is gathered: rank 1's user error (a path its node cannot see)
    is raised on rank 0 too, naming rank 1 and its host (simulated: two processes, this one
    rank 0, rank 1's report given)."""
    from src.errors import ArgumentError

    monkeypatch.setattr(distributed, "world_size", lambda: 2)
    rank1 = ("node-b", (ArgumentError, "--model_name /models/x: no such directory"))
    monkeypatch.setattr(distributed, "gather_objects", lambda local: [local, rank1])
    with pytest.raises(ArgumentError) as error:
        distributed.checked_everywhere(lambda: "fine here")
    assert str(error.value) == "--model_name /models/x: no such directory (rank 1 on node-b)"
    # a bug elsewhere: a RuntimeError naming it; where it happened, the error itself
    monkeypatch.setattr(distributed, "gather_objects", lambda local: [local, ("node-b", (None, "KeyError: 'x'"))])
    with pytest.raises(RuntimeError, match=r"rank 1 on node-b failed: KeyError: 'x'"):
        distributed.checked_everywhere(lambda: "fine here")
    monkeypatch.setattr(distributed, "gather_objects", lambda local: [local, ("node-b", None)])
    assert distributed.checked_everywhere(lambda: 7) == 7


def test_asking_where_this_process_stands_sets_nothing_up(monkeypatch):
    """Under torchrun's environment with no process group yet, the helpers answer as one
    process and set nothing up: no process group, no accelerate PartialState (whose first
    call would initialise a group from these variables; src/distributed.py's docstring)."""
    import torch.distributed as dist
    from accelerate.state import PartialState

    for name, value in {"RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "1", "LOCAL_WORLD_SIZE": "1",
                        "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "29531"}.items():  # fmt: skip
        monkeypatch.setenv(name, value)
    earlier = dict(PartialState._shared_state)  # an earlier test's Trainer may have set it up
    PartialState._shared_state.clear()
    try:
        assert (distributed.rank(), distributed.world_size(), distributed.is_main()) == (0, 1, True)
        with distributed.main_process_first():
            distributed.barrier()
        assert distributed.gather_objects("here") == ["here"]
        assert distributed.merge_dicts({"a": 1}) == {"a": 1}
        assert dist.is_initialized() is False
        assert PartialState._shared_state == {}
    finally:
        if dist.is_initialized():  # a helper set one up: leave no group to the next tests
            dist.destroy_process_group()
        PartialState._shared_state.clear()
        PartialState._shared_state.update(earlier)
