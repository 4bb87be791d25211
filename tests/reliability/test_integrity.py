"""Artifacts are trusted only if they match what was recorded when they were written:
a changed or damaged checkpoint, mined file or Trainer checkpoint is reported and its
stage redone (or, where it cannot be rebuilt, refused in one line); a failed write leaves
the previous version intact."""

from __future__ import annotations

import errno
import json
import shutil

import pytest

import src.experiment_io as experiment_io
from src.artifacts import CheckpointRecord, HardNegatives
from src.cli import eval_main, train_main
from src.experiment import Experiment
from src.experiment_io import read_json, write_json_atomic
from src.integrity import DigestCache
from src.training import CHECKPOINT_FILES_NAME, last_complete_checkpoint

pytestmark = pytest.mark.slow


@pytest.fixture()
def finished(two_round_experiment) -> Experiment:
    return two_round_experiment


@pytest.fixture()
def copy(copied) -> Experiment:
    return copied


@pytest.fixture()
def resume(job_argv, two_round_flags, copy) -> list[str]:
    return job_argv(copy.dir, *two_round_flags, "--auto_resume")


def test_round_0_weights_copied_over_round_1_never_give_round_1s_old_metrics(copy, capsys):
    """The cache key is the digest of the weights on disk, which must match their record."""
    weights = copy.checkpoint(1) / "model.safetensors"
    shutil.copyfile(copy.checkpoint(0) / "model.safetensors", weights)
    assert eval_main(["--experiment_dir", str(copy.dir), "--iterations", "1"]) == 2
    error = capsys.readouterr().err
    assert "checkpoint_iter_1 cannot be used" in error and str(weights) in error
    assert "Traceback" not in error


def test_a_truncated_checkpoint_is_retrained_on_auto_resume(copy, finished, resume, capsys):
    weights = copy.checkpoint(1) / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    assert train_main(resume) == 0
    log = capsys.readouterr().out
    assert f"{weights} has 1000 bytes" in log and "redoing it" in log
    assert [s.stage for s in copy.log.entries()][-2:] == ["train", "evaluate"]
    fingerprint = CheckpointRecord.read(copy.checkpoint_record(1)).fingerprint
    assert fingerprint == CheckpointRecord.read(finished.checkpoint_record(1)).fingerprint
    assert any(copy.dir.glob("moved_aside_*/checkpoint_iter_1"))  # kept, not deleted


def test_a_truncated_mined_file_is_mined_again(copy, finished, resume, capsys):
    mined = copy.hard_negatives(0)
    mined.write_text(mined.read_text()[:200])
    assert train_main(resume) == 0
    log = capsys.readouterr().out
    assert f"{mined} has 200 bytes" in log and "redoing it" in log
    assert HardNegatives.read(mined).queries == HardNegatives.read(finished.hard_negatives(0)).queries
    assert read_json(copy.evaluation_results) == read_json(finished.evaluation_results)
    assert [s.stage for s in copy.log.entries()][-1] == "mine", log  # same data: nothing retrained


def test_a_trainer_checkpoint_counts_only_if_its_weight_files_verify(finished, tmp_path):
    output = shutil.copytree(finished.train_dir(1), tmp_path / "train_iter_1")
    newest, older = sorted(output.glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[1]))[::-1]
    assert last_complete_checkpoint(output) == str(newest)
    weights = newest / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-10])
    assert last_complete_checkpoint(output) == str(older)
    assert not newest.exists()  # nothing in it could be resumed
    (older / CHECKPOINT_FILES_NAME).unlink()  # cut off before its files were recorded
    assert last_complete_checkpoint(output) is None


def test_a_failed_write_leaves_the_previous_version_intact(tmp_path, monkeypatch):
    path = tmp_path / "results.json"
    write_json_atomic(path, {"version": 1})

    def disk_full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(experiment_io.os, "fsync", disk_full)
    with pytest.raises(OSError, match="No space left"):
        write_json_atomic(path, {"version": 2, "big": "x" * 10000})
    assert read_json(path) == {"version": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["results.json"]


def test_a_damaged_json_names_its_file(tmp_path):
    path = tmp_path / "hard_negatives_iter_0.json"
    path.write_text('{"meta": {"x": 1}, "queries": {')
    with pytest.raises(ValueError, match="hard_negatives_iter_0.json: not valid JSON"):
        read_json(path)


def test_file_records_catch_same_size_changes_and_copies(tmp_path):
    path = tmp_path / "weights.bin"
    path.write_bytes(b"a" * 4096)
    digests = DigestCache(tmp_path / ".digests.json")
    record = digests.record(path)
    assert digests.mismatch(path, record) is None
    path.write_bytes(b"b" * 4096)  # same size, other bytes
    assert "has changed" in digests.mismatch(path, record)
    shutil.copy2(tmp_path / "weights.bin", tmp_path / "copy.bin")  # cp -p keeps the mtime
    assert digests.mismatch(tmp_path / "copy.bin", record) is not None
    json.loads((tmp_path / ".digests.json").read_text())  # the stamps are plain JSON
