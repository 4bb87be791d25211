"""Shared fixtures: one tiny Qwen2-VL checkpoint and one small synthetic benchmark per test
run (the other tiny backbones built only when a test asks for them), the argv of a small
job, and one small finished two-round experiment that tests copy before changing.

The builds go through `build_once` (a file lock and a rename), into the folder pytest
shares between the processes of one run, so they are made once per run however the tests
are scheduled.
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from filelock import FileLock
from preloaded_processes import preloaded_context

from src.cli import train_main
from src.data.loading import load_split
from src.devices import freeze_long_lived_objects
from src.experiment import Experiment
from src.offline.builders import build_once
from src.offline.synthetic.benchmark import build_synthetic_benchmark
from src.offline.tiny import build_tiny_checkpoint

torch.set_num_threads(2)
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def pytest_collection_finish(session: pytest.Session) -> None:
    """What collection imported is kept out of later garbage collections, as the entry
    points do (tests call the stages directly too)."""
    freeze_long_lived_objects()


@pytest.fixture(scope="session")
def preloaded():
    """Child processes that start with the project imported (tests/preloaded_processes.py)."""
    return preloaded_context()


@pytest.fixture(scope="session")
def shared_dir(tmp_path_factory) -> Path:
    """A folder every test process of this run sees (pytest-xdist workers share the parent
    of their base folders)."""
    base = tmp_path_factory.getbasetemp()
    return (base.parent if base.name.startswith("popen-") else base) / "shared"


def _tiny(shared_dir: Path, backbone: str) -> Path:
    return build_once(
        shared_dir / f"tiny_{backbone}",
        lambda out: build_tiny_checkpoint(backbone, out, image_size=56, seed=0),
    )


@pytest.fixture(scope="session")
def tiny_qwen(shared_dir) -> Path:
    return _tiny(shared_dir, "qwen2_vl")


@pytest.fixture(scope="session")
def tiny_model_dirs(tiny_qwen, shared_dir) -> dict[str, Path]:
    """Every tiny backbone (the two others are built here, for the tests that need them)."""
    return {
        "qwen2_vl": tiny_qwen,
        "qwen2_5_vl": _tiny(shared_dir, "qwen2_5_vl"),
        "llava_next": _tiny(shared_dir, "llava_next"),
    }


@pytest.fixture(scope="session")
def small_benchmark(shared_dir) -> Path:
    """120 train, 60 validation and 30 test images: 40 training and 20 validation triplets."""
    return build_once(
        shared_dir / "bench",
        lambda out: build_synthetic_benchmark(
            out, num_train_images=120, num_val_images=60, num_test_images=30, image_size=56, seed=0
        ),
    )


@pytest.fixture(scope="session")
def small_train_split(small_benchmark):
    return load_split("cirr", small_benchmark, "train")


@pytest.fixture(scope="session")
def job_argv(tiny_qwen, small_benchmark) -> Callable[..., list[str]]:
    """`job_argv(experiment_dir, *flags)`: a small job on the tiny model and the small
    benchmark (one round, 2 steps each, batch 8; `dataset=` / `model=` for others); later
    flags win over these."""

    def argv(
        experiment_dir: Path, *flags: str, dataset: Path | None = None, model: Path | None = None
    ) -> list[str]:
        return [
            "--model_name", str(model or tiny_qwen),
            "--dataset_path", str(dataset or small_benchmark),
            "--experiment_dir", str(experiment_dir),
            "--num_iterations", "1",
            "--max_steps", "2",
            "--batch_size", "8",
            "--dataloader_num_workers", "0",
            "--encode_batch_size", "32",
            *flags,
        ]  # fmt: skip

    return argv


@pytest.fixture(scope="session")
def two_round_flags() -> tuple[str, ...]:
    """The flags of `two_round_experiment` beyond `job_argv`'s."""
    return ("--num_iterations", "2", "--max_steps", "4", "--save_steps", "2",
            "--num_hard_negatives", "2", "--report_queries", "6", "--logging_steps", "2")  # fmt: skip


@pytest.fixture(scope="session")
def two_round_experiment(job_argv, two_round_flags, shared_dir) -> Experiment:
    """A finished two-round job (4 steps a round, Trainer checkpoints every 2, two hard
    negatives per query, the report written). Read it, or copy it (`copied`) to change it."""
    experiment = Experiment(shared_dir / "two_rounds")
    with FileLock(f"{experiment.dir}.lock"):  # trained in place: its files record the folder
        if not experiment.evaluation("val", 2).is_file():
            shutil.rmtree(experiment.dir, ignore_errors=True)
            assert train_main(job_argv(experiment.dir, *two_round_flags)) == 0
    return experiment


@pytest.fixture()
def copied(two_round_experiment, tmp_path) -> Experiment:
    """A private copy of the two-round experiment, free to change."""
    return Experiment(shutil.copytree(two_round_experiment.dir, tmp_path / "exp", symlinks=True))


@pytest.fixture()
def browser_screenshot(tmp_path) -> Callable[[Path, str], Path]:
    """`browser_screenshot(page, "1200,1600")`: a PNG of a local page taken by headless
    Chromium (a fresh profile, nothing reached over the network); checks that Chromium
    exits cleanly, reports no console error and draws something. Skips the test where
    Chromium is not installed (README: development)."""
    if CHROMIUM is None:
        pytest.skip("headless Chromium is not installed (README: development)")
    from PIL import Image

    def screenshot(page: Path, window: str = "1200,1600") -> Path:
        shot = tmp_path / f"{page.stem}.png"
        completed = subprocess.run(
            [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             f"--user-data-dir={tmp_path / 'profile'}", "--enable-logging=stderr", "--v=0",
             f"--window-size={window}", f"--screenshot={shot}", page.as_uri()],
            capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        assert completed.returncode == 0, completed.stderr[-2000:]
        console_errors = [
            line for line in completed.stderr.splitlines() if "CONSOLE" in line and "ERROR" in line.upper()
        ]
        assert not console_errors, console_errors
        image = Image.open(shot).convert("L")
        low, high = image.getextrema()
        assert high - low > 100 and len(set(image.getdata())) > 50, "the screenshot is blank"
        return shot

    return screenshot
