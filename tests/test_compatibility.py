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
round 0's evaluation (same metrics) and round 1's new texts; then round 1 trains and is
evaluated. The new texts are written for other pairs than the old file's: the default
selection is now the model's failures, hardest first (`--augment_selection failures`),
where the old release captioned every mined query's first negative in file order; with
`--augment_selection file_order` the resumed run writes the old file's texts again.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from src.artifacts import AugmentedSamples, HardNegatives
from src.cli import train_main
from src.experiment import Experiment
from src.records import TrainSummary
from src.report.html import ExperimentPages, Thumbnails, build_report

FIXTURE = Path(__file__).resolve().parent / "data" / "experiment_v1"
ROOT = Path("/tmp/cir_experiment_v1")
FLAGS = [
    "--model_name", str(ROOT / "model"), "--dataset_path", str(ROOT / "data"),
    "--num_iterations", "1", "--max_steps", "2", "--batch_size", "8",
    "--max_train_samples", "48", "--max_eval_samples", "16", "--dataloader_num_workers", "0",
    "--encode_batch_size", "32", "--save_steps", "1000", "--no_report",
]  # fmt: skip


@pytest.fixture
def old_experiment(tiny_qwen, small_benchmark, tmp_path) -> Iterator[list[str]]:
    """A copy of the fixture, resumable with the returned flags (removed afterwards)."""
    for source, name in ((tiny_qwen, "model"), (small_benchmark, "data")):
        if not (ROOT / name).is_dir():
            shutil.copytree(source, ROOT / name)
    experiment = ROOT / f"experiment_{tmp_path.name}"
    shutil.rmtree(experiment, ignore_errors=True)
    shutil.copytree(FIXTURE, experiment, ignore=shutil.ignore_patterns("make_fixture.sh"))
    try:
        yield [*FLAGS, "--experiment_dir", str(experiment), "--cache_dir", str(tmp_path / "cache")]
    finally:
        shutil.rmtree(experiment, ignore_errors=True)


def test_an_experiment_of_the_previous_release_resumes_where_it_stopped(old_experiment):
    experiment = Path(old_experiment[old_experiment.index("--experiment_dir") + 1])
    assert train_main([*old_experiment, "--auto_resume"]) == 0
    stages = [json.loads(line) for line in (experiment / "stages.jsonl").read_text().splitlines()]
    ran = [(s["stage"], s["iteration"]) for s in stages[4:]]
    assert ran == [("evaluate", 0), ("augment", 1), ("train", 1), ("evaluate", 1)]
    new_texts = AugmentedSamples.read(experiment / "augmented_samples_iter_1.json")
    mined = HardNegatives.read(experiment / "hard_negatives_iter_0.json").queries
    requested = [*new_texts.samples, *new_texts.rejected]
    assert requested and new_texts.stats.selection == "failures"
    for sample in requested:
        query = mined[sample.source_pairid]
        place = int(sample.pairid.rsplit("_", 1)[1])
        assert query.negatives[place].rank < query.target_rank
    results = json.loads((experiment / "evaluation_results.json").read_text())
    assert sorted(results) == ["iter_0", "iter_1"]
    # the same checkpoint on the same queries (float order may differ on another machine)
    old_results = json.loads((FIXTURE / "evaluation_results.json").read_text())["iter_0"]
    assert results["iter_0"] == pytest.approx(old_results, abs=100 / 16 + 1e-9)


def test_the_earlier_selection_writes_the_previous_releases_texts_again(old_experiment):
    experiment = Path(old_experiment[old_experiment.index("--experiment_dir") + 1])
    flags = ["--auto_resume", "--augment_selection", "file_order", "--allow_config_change"]
    assert train_main([*old_experiment, *flags]) == 0
    old_texts = AugmentedSamples.read(FIXTURE / "augmented_samples_iter_1.json")
    new_texts = AugmentedSamples.read(experiment / "augmented_samples_iter_1.json")
    assert [s.caption for s in new_texts.samples] == [s.caption for s in old_texts.samples]


def test_an_experiment_of_the_previous_release_reports_from_its_typed_records(old_experiment):
    """Before any resume: its stats, stage summaries and saved arguments read as today's
    records (keys added since at their defaults), and the report is written from them."""
    experiment = Experiment(old_experiment[old_experiment.index("--experiment_dir") + 1])
    flags = experiment.config.record().flags
    assert flags.data.dataset_path == str(ROOT / "data") and flags.data.image_store  # added since
    summaries = experiment.log.latest()
    assert isinstance(summaries["train", 0], TrainSummary) and summaries["mine", 0].stats.num_mined == 40
    texts = AugmentedSamples.read(experiment.augmented(1)).stats
    assert texts.kept == summaries["augment", 1].kept == 11 and texts.selection is None
    page = build_report(experiment.dir, queries=4).read_text()
    assert "round 0" in page and "recall@1" in page
    # round 1 is not evaluated yet, so the page has no section for it: its view data
    pages = ExperimentPages(experiment, Thumbnails(experiment.dir / "thumbs"), 4, 0)
    texts, mined = pages.texts(1), pages.mined(1)
    assert (texts.kept, texts.pairs, texts.generator, texts.selection) == (11, 40, "scene_oracle", None)
    assert (mined.num_mined, mined.num_negatives) == (40, 200) and mined.removed_by_filter["target"] == 17
