"""The offline default: the tiny Qwen2-VL and a synthetic benchmark, built once and reused.

Each asset is built into a temporary folder and renamed into place when complete, so an
interrupted build is redone rather than half-used; a file lock beside it lets several
processes (an ablation's seeds, torchrun's ranks on several nodes) ask for the same asset
at once: one builds, the others wait and reuse it. The folder name holds every build
argument, so a different size or domain never reuses an older build.
"""

from __future__ import annotations

import logging
import shutil
from collections.abc import Callable
from pathlib import Path

from filelock import FileLock

from src.offline.garments.benchmark import build_garment_benchmark
from src.offline.garments.captions import corpus_sentences as garment_sentences
from src.offline.synthetic.benchmark import build_synthetic_benchmark
from src.offline.tiny import build_tiny_checkpoint

logger = logging.getLogger(__name__)

DOMAINS = ("shapes", "garments")


def build_once(target: Path, build: Callable[[Path], object]) -> Path:
    """`target`, built by `build(folder)` unless it is already there."""
    target.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(target.with_name(target.name + ".lock")):
        if target.is_dir():
            return target
        partial = target.with_name(target.name + ".partial")
        shutil.rmtree(partial, ignore_errors=True)
        logger.info("building %s (once; later runs reuse it)", target)
        build(partial)
        partial.rename(target)
    return target


def offline_model(cache_dir: str | Path, image_size: int, seed: int = 0, domain: str = "shapes") -> Path:
    """The tiny Qwen2-VL checkpoint of the offline default run; for the garments, one whose
    tokenizer also reads the garment captions' words whole."""
    suffix, extra = ("", ()) if domain == "shapes" else (f"_{domain}", garment_sentences())
    target = Path(cache_dir) / f"tiny_qwen2_vl_{image_size}px_seed{seed}{suffix}"
    return build_once(
        target,
        lambda out: build_tiny_checkpoint(
            "qwen2_vl", out, image_size=image_size, seed=seed, extra_texts=extra
        ),
    )


def offline_benchmark(
    cache_dir: str | Path,
    num_train: int,
    num_val: int,
    num_test: int,
    image_size: int,
    seed: int = 0,
    triplets_per_set: int = 2,
    domain: str = "shapes",
) -> Path:
    """The synthetic CIRR-format benchmark of the offline default run (or of the garments)."""
    name = "synthetic_cirr" if domain == "shapes" else f"synthetic_{domain}"
    build = build_synthetic_benchmark if domain == "shapes" else build_garment_benchmark
    target = (
        Path(cache_dir)
        / f"{name}_{num_train}_{num_val}_{num_test}_{image_size}px_t{triplets_per_set}_seed{seed}"
    )
    return build_once(
        target,
        lambda out: build(
            out,
            num_train_images=num_train,
            num_val_images=num_val,
            num_test_images=num_test,
            image_size=image_size,
            seed=seed,
            triplets_per_set=triplets_per_set,
        ),
    )
