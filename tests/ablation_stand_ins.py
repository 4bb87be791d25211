"""benchmarks/ablation.py's round 0 and arm as stand-ins that only say where they ran (for
tests/test_ablation.py).

A module of their own: a pool's spawned process imports the module its function comes
from, and this one imports nothing heavy (no torch, no transformers, no test module), so
a process costs a fraction of a second instead of six. The metric names come from the
test, through the environment the spawned processes inherit (STAND_IN_METRICS)."""

from __future__ import annotations

import os
from pathlib import Path

METRICS_ENV = "STAND_IN_METRICS"


def no_round0(seed: int, flags: list[str], output: Path, threads: int, round0_flags: list[str]) -> None:
    """run_round0's stand-in: nothing to start from."""


def process_of_this_run(seed: int, arm: str, flags: list[str], output: Path, threads: int) -> dict:
    """run_arm's stand-in: every metric 50, and the process and thread count it ran with."""
    metrics = os.environ[METRICS_ENV].split(",")
    return {"results": {"iter_0": dict.fromkeys(metrics, 50.0)}, "steps": {},
            "texts": {"pid": os.getpid(), "threads": threads}}  # fmt: skip
