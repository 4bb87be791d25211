"""Shared fixtures: tiny checkpoints and a small synthetic benchmark, built once per session."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from src.data.loading import load_split
from src.offline.synthetic.benchmark import build_synthetic_benchmark
from src.offline.tiny import build_tiny_checkpoint

torch.set_num_threads(2)


@pytest.fixture(scope="session")
def tiny_model_dirs(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("tiny_models")
    return {
        backbone: build_tiny_checkpoint(backbone, root / backbone, image_size=56, seed=0)
        for backbone in ("qwen2_vl", "qwen2_5_vl", "llava_next")
    }


@pytest.fixture(scope="session")
def tiny_qwen(tiny_model_dirs) -> Path:
    return tiny_model_dirs["qwen2_vl"]


@pytest.fixture(scope="session")
def small_benchmark(tmp_path_factory) -> Path:
    return build_synthetic_benchmark(
        tmp_path_factory.mktemp("bench"),
        num_train_images=120,
        num_val_images=60,
        num_test_images=30,
        image_size=56,
        seed=0,
    )


@pytest.fixture(scope="session")
def small_train_split(small_benchmark):
    return load_split("cirr", small_benchmark, "train")
