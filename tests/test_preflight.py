"""Every bad path or flag of a run fails before any work: exit status 2, one line on
stderr, no traceback, no stage started, nothing written into the experiment directory."""

from __future__ import annotations

import json
import re
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest

from src.cli import train_main
from src.errors import ArgumentError

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def dataset(small_benchmark, tmp_path_factory) -> Path:
    """A private copy of the small benchmark that the tests may damage."""
    return Path(shutil.copytree(small_benchmark, tmp_path_factory.mktemp("data") / "bench"))


@pytest.fixture()
def base_args(job_argv) -> Callable[..., list[str]]:
    """`base_args(dataset, experiment_dir)`: the small job on `dataset`, batch 4."""
    return lambda dataset, experiment_dir: job_argv(experiment_dir, "--batch_size", "4", dataset=dataset)


def refused(argv: list[str], capsys, *parts: str) -> str:
    assert train_main(argv) == 2
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err
    assert re.search(r"(^|\n)error: ", captured.err), captured.err
    assert "== train" not in captured.out, "a stage started"
    for part in parts:
        assert part in captured.err, f"{part!r} not in {captured.err!r}"
    return captured.err


@pytest.mark.parametrize(
    ("extra", "parts"),
    [
        (["--batch_size", "0"], ["--batch_size 0", "must be >= 1"]),
        (["--learning_rate", "-1"], ["--learning_rate -1"]),
        (["--num_iterations", "-1"], ["--num_iterations -1"]),
        (["--hard_negative_k", "0"], ["--hard_negative_k 0"]),
        (["--batch_size", "500"], ["queries per step", "lower --batch_size"]),
        (["--model_name", "/nonexistent/model"], ["--model_name /nonexistent/model", "no such"]),
        (
            ["--foundation_model_path", "/nonexistent/vlm"],
            ["--foundation_model_path /nonexistent/vlm", "no config.json"],
        ),
        (["--lora", "--lora_target_modules", "q_proj,qkv_nowhere"], ["qkv_nowhere", "match no"]),
        (["--resume_from_iteration", "1", "--auto_resume"], ["--resume_from_iteration 1"]),
    ],
)
def test_a_bad_flag_or_path_fails_before_any_work(
    base_args, dataset, tmp_path, capsys, extra, parts
):
    experiment = tmp_path / "exp"
    refused([*base_args(dataset, experiment), *extra], capsys, *parts)
    assert not experiment.exists(), "something was written into the experiment directory"


def test_a_malformed_config_file_names_it(base_args, dataset, tmp_path, capsys):
    preset = tmp_path / "preset.json"
    preset.write_text('{"num_iterations": 2,,}')
    refused(
        [*base_args(dataset, tmp_path / "exp"), "--config", str(preset)],
        capsys,
        str(preset),
        "invalid JSON at line 1",
    )


def test_an_unwritable_experiment_directory(base_args, dataset, tmp_path, capsys):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    refused(base_args(dataset, blocker / "exp"), capsys, "is not writable")


def test_a_damaged_validation_image_stops_the_run_before_round_0(
    base_args, small_benchmark, tmp_path, capsys
):
    data = Path(shutil.copytree(small_benchmark, tmp_path / "bench"))
    paths = json.loads((data / "image_splits" / "split.rc2.val.json").read_text())
    truncated, garbage = [data / rel for rel in list(paths.values())[:2]]
    truncated.write_bytes(truncated.read_bytes()[:60])
    garbage.write_bytes(b"not an image at all")
    experiment = tmp_path / "exp"
    error = refused(base_args(data, experiment), capsys, "2 of", "cannot be read")
    assert truncated.name in error and garbage.name in error
    assert not experiment.exists()


def test_caption_problems_name_the_entry(base_args, small_benchmark, tmp_path, capsys):
    data = Path(shutil.copytree(small_benchmark, tmp_path / "bench"))
    captions_file = data / "captions" / "cap.rc2.train.json"
    captions = json.loads(captions_file.read_text())
    original = captions[3]["caption"]
    captions[3]["caption"] = "add a <|image_pad|> here"
    captions_file.write_text(json.dumps(captions))
    pairid = captions[3]["pairid"]
    refused(
        base_args(data, tmp_path / "e1"), capsys, f"pairid {pairid}", "<|image_pad|>"
    )
    captions[3]["caption"] = "   "
    captions_file.write_text(json.dumps(captions))
    refused(
        base_args(data, tmp_path / "e2"),
        capsys,
        f"pairid {pairid}",
        "'caption' is empty",
    )
    captions[3]["caption"] = original


def test_a_directory_holding_an_experiment_is_a_usage_error_not_a_traceback(
    base_args, dataset, tmp_path, capsys
):
    experiment = tmp_path / "exp"
    experiment.mkdir()
    (experiment / "experiment_config.json").write_text(
        json.dumps({"arguments": {}, "result_config": {}})
    )
    (experiment / "stages.jsonl").write_text("")
    (experiment / "checkpoint_iter_0").mkdir()
    refused(
        base_args(dataset, experiment),
        capsys,
        "already holds an experiment",
        "--auto_resume",
    )


def test_debug_shows_the_traceback(base_args, dataset, tmp_path, capsys):
    argv = [*base_args(dataset, tmp_path / "exp"), "--batch_size", "0"]
    assert train_main(argv) == 2
    error = capsys.readouterr().err
    assert "Traceback" not in error and error.strip().splitlines() == ["error: --batch_size 0: must be >= 1"]
    with pytest.raises(ArgumentError, match="--batch_size 0"):
        train_main([*argv, "--debug"])
