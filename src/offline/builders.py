"""The offline default: the tiny Qwen2-VL and the synthetic benchmark, built once and reused.

Each asset is built into a temporary folder and renamed into place when complete, so an
interrupted build is redone rather than half-used. The folder name holds every build
argument, so a different size never reuses an older build.
"""

from __future__ import annotations

import logging
import shutil
from collections.abc import Callable
from pathlib import Path

from src.offline.synthetic.benchmark import build_synthetic_benchmark
from src.offline.tiny import build_tiny_checkpoint

logger = logging.getLogger(__name__)


def _build_once(target: Path, build: Callable[[Path], object]) -> Path:
    if target.is_dir():
        return target
    partial = target.with_name(target.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    logger.info("building %s (once; later runs reuse it)", target)
    build(partial)
    partial.rename(target)
    return target


def offline_model(cache_dir: str | Path, image_size: int, seed: int = 0) -> Path:
    """The tiny Qwen2-VL checkpoint of the offline default run."""
    target = Path(cache_dir) / f"tiny_qwen2_vl_{image_size}px_seed{seed}"
    return _build_once(
        target, lambda out: build_tiny_checkpoint("qwen2_vl", out, image_size=image_size, seed=seed)
    )


def offline_benchmark(
    cache_dir: str | Path,
    num_train: int,
    num_val: int,
    num_test: int,
    image_size: int,
    seed: int = 0,
    triplets_per_set: int = 2,
) -> Path:
    """The synthetic CIRR-format benchmark of the offline default run."""
    target = (
        Path(cache_dir)
        / f"synthetic_cirr_{num_train}_{num_val}_{num_test}_{image_size}px_t{triplets_per_set}_seed{seed}"
    )
    return _build_once(
        target,
        lambda out: build_synthetic_benchmark(
            out,
            num_train_images=num_train,
            num_val_images=num_val,
            num_test_images=num_test,
            image_size=image_size,
            seed=seed,
            triplets_per_set=triplets_per_set,
        ),
    )
