"""An experiment written by an earlier release still resumes.

`tests/data/experiment_v1/` is an experiment written by the code of commit 2a8cc15 (the
last release before the artifact formats got their own module; `make_fixture.sh` beside it
is the command), cut where a kill during round 1's training would leave it: round 0
trained and evaluated, its negatives mined, round 1's new texts written. Its recorded
paths point at /tmp/cir_experiment_v1/{model,data}, so the test puts the same tiny model
and benchmark there.

Resuming keeps round 0's checkpoint and the mined negatives (their records verify and their
metas read the same under the current format), and runs again, once, what format version 2
digests differently (a split's rows and the captioning requests: one digest function now):
round 0's evaluation (same metrics) and round 1's new texts (the same texts); then round 1
trains and is evaluated.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from src.artifacts import AugmentedSamples
from src.cli import train_main

FIXTURE = Path(__file__).resolve().parent / "data" / "experiment_v1"
ROOT = Path("/tmp/cir_experiment_v1")
FLAGS = [
    "--model_name", str(ROOT / "model"), "--dataset_path", str(ROOT / "data"),
    "--num_iterations", "1", "--max_steps", "2", "--batch_size", "8",
    "--max_train_samples", "48", "--max_eval_samples", "16", "--dataloader_num_workers", "0",
    "--encode_batch_size", "32", "--save_steps", "1000", "--no_report",
]  # fmt: skip


def test_an_experiment_of_the_previous_release_resumes_where_it_stopped(
    tiny_qwen, small_benchmark, tmp_path
):
    for source, name in ((tiny_qwen, "model"), (small_benchmark, "data")):
        if not (ROOT / name).is_dir():
            shutil.copytree(source, ROOT / name)
    experiment = ROOT / f"experiment_{tmp_path.name}"
    shutil.rmtree(experiment, ignore_errors=True)
    shutil.copytree(FIXTURE, experiment, ignore=shutil.ignore_patterns("make_fixture.sh"))
    try:
        argv = [*FLAGS, "--experiment_dir", str(experiment), "--cache_dir", str(tmp_path / "cache")]
        assert train_main([*argv, "--auto_resume"]) == 0
        stages = [json.loads(line) for line in (experiment / "stages.jsonl").read_text().splitlines()]
        ran = [(s["stage"], s["iteration"]) for s in stages[4:]]
        assert ran == [("evaluate", 0), ("augment", 1), ("train", 1), ("evaluate", 1)]
        old_texts = AugmentedSamples.read(FIXTURE / "augmented_samples_iter_1.json")
        new_texts = AugmentedSamples.read(experiment / "augmented_samples_iter_1.json")
        assert [s.caption for s in new_texts.samples] == [s.caption for s in old_texts.samples]
        results = json.loads((experiment / "evaluation_results.json").read_text())
        assert sorted(results) == ["iter_0", "iter_1"]
        # the same checkpoint on the same queries (float order may differ on another machine)
        old_results = json.loads((FIXTURE / "evaluation_results.json").read_text())["iter_0"]
        assert results["iter_0"] == pytest.approx(old_results, abs=100 / 16 + 1e-9)
    finally:
        shutil.rmtree(experiment, ignore_errors=True)
