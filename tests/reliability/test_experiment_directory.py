"""The experiment directory: config check on resume, lock, moving rounds aside, atomic JSON."""

import json
import multiprocessing
import os
import socket
import time

import pytest

from src.artifacts import Evaluation
from src.errors import ExperimentError
from src.experiment import Experiment
from src.experiment_io import read_json, write_json_atomic
from src.records import TrainSkipped

ARGS = {
    "model_name": "m",
    "seed": 0,
    "hard_negative_k": 5,
    "num_iterations": 3,
    "auto_resume": False,
}


def test_new_then_resume_requires_auto_resume(tmp_path):
    experiment = Experiment(tmp_path / "exp")
    experiment.config.start(ARGS, resuming=False, allow_config_change=False)
    saved = read_json(experiment.config_file)
    assert saved["arguments"] == ARGS and "versions" in saved and "start_time" in saved
    # a run that stopped before writing anything else: a corrected rerun may start afresh
    experiment.config.start(ARGS | {"seed": 3}, resuming=False, allow_config_change=False)
    assert read_json(experiment.config_file)["arguments"]["seed"] == 3
    experiment.log.record("train", 0, TrainSkipped(skipped="a test", num_samples=0))
    with pytest.raises(ExperimentError, match="--auto_resume"):
        experiment.config.start(ARGS, resuming=False, allow_config_change=False)
    experiment.config.start(
        ARGS | {"seed": 3, "num_iterations": 5}, resuming=True, allow_config_change=False
    )


def test_mismatched_resume_names_every_differing_key(tmp_path):
    experiment = Experiment(tmp_path / "exp")
    experiment.config.start(ARGS, resuming=False, allow_config_change=False)
    experiment.log.record("train", 0, TrainSkipped(skipped="a test", num_samples=0))
    changed = ARGS | {"seed": 1, "hard_negative_k": 7}
    with pytest.raises(ExperimentError) as error:
        experiment.config.start(changed, resuming=True, allow_config_change=False)
    assert "seed: experiment 0 -> now 1" in str(error.value)
    assert "hard_negative_k: experiment 5 -> now 7" in str(error.value)
    assert "model_name" not in str(error.value)
    experiment.config.start(changed, resuming=True, allow_config_change=True)
    assert (
        read_json(experiment.config_file)["config_changes"][0]["changes"][0][0] == "hard_negative_k"
    )


def test_second_run_on_the_same_directory_is_refused(tmp_path):
    experiment = Experiment(tmp_path / "exp")
    with experiment.lock(), pytest.raises(ExperimentError, match=f"process {os.getpid()}"):  # noqa: SIM117
        with Experiment(tmp_path / "exp").lock():
            pass
    with experiment.lock():
        pass


@pytest.mark.parametrize("content", ["", "garbage{", '{"pid": 1, "host": "elsewhere"}'])
def test_a_stale_empty_or_garbage_lock_file_never_blocks(tmp_path, content):
    experiment = Experiment(tmp_path / "exp")
    experiment.dir.mkdir()
    (experiment.dir / ".lock").write_text(content)
    (experiment.dir / ".lock.owner").write_text(content)
    with experiment.lock():
        owner = json.loads((experiment.dir / ".lock.owner").read_text())
        assert owner["pid"] == os.getpid() and owner["host"] == socket.gethostname()


@pytest.mark.parametrize("code", ["ENOLCK", "ENOSYS", "EOPNOTSUPP"])
def test_a_filesystem_without_flock_gets_a_soft_lock(tmp_path, monkeypatch, caplog, code):
    """Lustre mounted without flock, NFS without a lock manager: the lock is a marker file
    (filelock's SoftFileLock), probed before work, instead of rank 0 failing after the
    checks while the other processes wait."""
    import errno
    import fcntl

    from src.experiment.config import flock_works

    def no_flock(fd, operation):
        raise OSError(getattr(errno, code), os.strerror(getattr(errno, code)))

    monkeypatch.setattr(fcntl, "flock", no_flock)
    assert flock_works(tmp_path / "not" / "yet") is False  # probed where it will be made
    experiment = Experiment(tmp_path / "exp")
    with experiment.lock():
        assert (experiment.dir / ".lock").exists()
        with pytest.raises(ExperimentError, match=f"process {os.getpid()}.*delete {experiment.dir / '.lock'}"):  # noqa: SIM117
            with Experiment(tmp_path / "exp").lock():
                pass
    assert not (experiment.dir / ".lock").exists()
    with experiment.lock():
        pass
    assert "has no flock" in caplog.text


def hold_the_lock(directory: str, locked) -> None:
    with Experiment(directory).lock():
        locked.set()
        time.sleep(60)


def test_a_lock_held_by_a_killed_process_is_free(tmp_path):
    """The OS releases the lock of a process that dies, however it dies (a forked process:
    everything is imported already)."""
    experiment = Experiment(tmp_path / "exp")
    fork = multiprocessing.get_context("fork")
    locked = fork.Event()
    holder = fork.Process(target=hold_the_lock, args=(str(experiment.dir), locked))
    holder.start()
    assert locked.wait(60)
    with pytest.raises(ExperimentError, match=f"process {holder.pid}"):  # noqa: SIM117
        with experiment.lock():
            pass
    holder.kill()
    holder.join()
    with experiment.lock():
        pass


def test_resume_from_iteration_moves_rounds_aside(tmp_path):
    experiment = Experiment(tmp_path / "exp")
    for i in range(3):
        experiment.checkpoint(i).mkdir(parents=True)
        write_json_atomic(experiment.hard_negatives(i), {"i": i})
        write_json_atomic(experiment.augmented(i), {"i": i})
        Evaluation({}, {"r": i}).write(experiment.evaluation("val", i))
    experiment.write_results_summary()
    moved = experiment.move_rounds_aside(1)
    assert sorted(p.name for p in moved.iterdir()) == sorted(
        [
            "checkpoint_iter_1",
            "checkpoint_iter_2",
            "augmented_samples_iter_1.json",
            "augmented_samples_iter_2.json",
            "evaluation_val_iter_1.json",
            "evaluation_val_iter_2.json",
            "hard_negatives_iter_0.json",
            "hard_negatives_iter_1.json",
            "hard_negatives_iter_2.json",
        ]
    )
    assert experiment.checkpoint(0).is_dir() and experiment.augmented(0).is_file()
    assert read_json(experiment.evaluation_results) == {"iter_0": {"r": 0}}


def test_atomic_json_leaves_no_partial_file(tmp_path):
    path = tmp_path / "x.json"
    write_json_atomic(path, {"a": 1})
    with pytest.raises(TypeError):
        write_json_atomic(path, {"a": object()})
    assert read_json(path) == {"a": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["x.json"]
