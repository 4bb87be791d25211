"""A run of the whole job (2 rounds: conftest.py's two_round_experiment), eval_iterative.py on
its checkpoints, resuming it, and its plan."""

import json
import re

import numpy as np
import pytest
import torch

from src.artifacts import FORMAT_VERSION, AugmentedSamples, CheckpointRecord, HardNegatives
from src.cli import eval_main, train_main
from src.data.loading import load_split
from src.experiment import Experiment
from src.model.encoder import load_encoder

pytestmark = pytest.mark.slow


@pytest.fixture()
def finished_run(copied) -> Experiment:
    """The two-round experiment of conftest.py, copied (these tests add to it)."""
    return copied


def test_two_rounds_write_every_artifact(two_round_experiment, small_train_split):
    experiment = two_round_experiment
    for i in range(3):
        assert (experiment.checkpoint(i) / "embedder_config.json").is_file()
        assert CheckpointRecord.read(experiment.checkpoint_record(i)).iteration == i
    for i in range(2):
        raw = json.loads(experiment.hard_negatives(i).read_text())
        assert set(raw) == {"version", "meta", "stats", "queries"} and raw["version"] == FORMAT_VERSION
        mined = HardNegatives.read(experiment.hard_negatives(i))
        assert mined.meta["options"]["hard_negative_k"] == 5
        assert all(len(query.negatives) == 5 for query in mined.queries.values())
    for i in (1, 2):
        augmented = AugmentedSamples.read(experiment.augmented(i))
        assert augmented.meta["generator"] == "scene_oracle"
        assert augmented.meta["stands_in_for_a_foundation_model"] is True
        assert augmented.stats["kept"] == len(augmented.samples)
        assert (experiment.train_dir(i)).is_dir()
    results = json.loads(experiment.evaluation_results.read_text())
    assert sorted(results) == ["iter_0", "iter_1", "iter_2"]
    assert (experiment.dir / "evaluation_results.png").is_file()
    assert any(experiment.embeddings_dir.glob("*.npy"))
    stages = [(s["stage"], s["iteration"]) for s in experiment.log.entries()]
    assert stages.count(("train", 2)) == 1 and ("augment", 1) in stages
    train_log = [
        s for s in experiment.log.entries() if s["stage"] == "train" and s["iteration"] == 1
    ][0]
    expected = len(small_train_split.triplets) + AugmentedSamples.read(experiment.augmented(1)).stats["kept"]
    assert train_log["meta"]["num_samples"] == expected


def test_eval_iterative_matches_a_numpy_recomputation(finished_run, small_benchmark, tmp_path):
    output = tmp_path / "results.json"
    assert (
        eval_main(
            [
                "--experiment_dir",
                str(finished_run.dir),
                "--iterations",
                "2",
                "--output_file",
                str(output),
            ]
        )
        == 0
    )
    metrics = json.loads(output.read_text())["iter_2"]
    fingerprint = json.loads((finished_run.checkpoint(2) / "stage.json").read_text())["fingerprint"]
    entries = {}
    for meta_file in finished_run.embeddings_dir.glob("val_*.json"):
        meta = json.loads(meta_file.read_text())
        if meta["key"]["weights"] == fingerprint:
            entries[meta["key"]["kind"]] = (meta["rows"], np.load(meta_file.with_suffix(".npy")))
    gallery_names, gallery = entries["gallery"]
    pairids, queries = entries["queries"]
    split = load_split("cirr", small_benchmark, "val")
    by_pairid = {t.pairid: t for t in split.triplets}
    scores = queries @ gallery.T
    hits_at_1, hits_subset_1 = [], []
    for row, pairid in enumerate(pairids):
        triplet = by_pairid[pairid]
        s = scores[row].copy()
        s[gallery_names.index(triplet.reference)] = -np.inf
        hits_at_1.append(gallery_names[int(np.argmax(s))] == triplet.target)
        members = [m for m in triplet.group if m != triplet.reference]
        best = max(members, key=lambda m: (s[gallery_names.index(m)], -gallery_names.index(m)))
        hits_subset_1.append(best == triplet.target)
    assert metrics["recall@1"] == pytest.approx(100 * np.mean(hits_at_1), abs=1e-4)
    assert metrics["recall_subset@1"] == pytest.approx(100 * np.mean(hits_subset_1), abs=1e-4)


def test_rerun_without_auto_resume_is_refused_and_with_it_redoes_nothing(
    finished_run, job_argv, two_round_flags, capsys
):
    argv = job_argv(finished_run.dir, *two_round_flags)
    assert train_main(argv) == 2
    assert "--auto_resume" in capsys.readouterr().err
    before = len(finished_run.log.entries())
    assert train_main([*argv, "--auto_resume"]) == 0
    assert len(finished_run.log.entries()) == before
    assert train_main([*argv, "--auto_resume", "--hard_negative_k", "3"]) == 2
    assert "hard_negative_k: experiment 5 -> now 3" in capsys.readouterr().err


def test_eval_iterative_writes_the_cirr_test_submission_files(finished_run, small_benchmark):
    assert (
        eval_main(
            [
                "--experiment_dir",
                str(finished_run.dir),
                "--eval_dataset",
                "cirr_test",
                "--iterations",
                "2",
            ]
        )
        == 0
    )
    test_split = load_split("cirr", small_benchmark, "test1")
    recall = json.loads((finished_run.dir / "cirr_test_submission_iter_2_recall.json").read_text())
    subset = json.loads(
        (finished_run.dir / "cirr_test_submission_iter_2_recall_subset.json").read_text()
    )
    assert recall["version"] == subset["version"] == "rc2"
    assert (recall["metric"], subset["metric"]) == ("recall", "recall_subset")
    pairids = {t.pairid for t in test_split.triplets}
    assert set(recall) - {"version", "metric"} == pairids == set(subset) - {"version", "metric"}
    for triplet in test_split.triplets:
        assert triplet.reference not in recall[triplet.pairid]
        assert len(subset[triplet.pairid]) == 3 and set(subset[triplet.pairid]) <= set(
            triplet.group
        )


def test_round_zero_only_and_skip_round0(tiny_qwen, job_argv, tmp_path, capsys):
    """--num_iterations 0 trains round 0 only; --skip_round0 keeps the base model as iteration 0.
    The memory the process holds is logged between stages."""
    trained = Experiment(tmp_path / "round0")
    assert train_main(job_argv(trained.dir, "--num_iterations", "0")) == 0
    log = capsys.readouterr().out
    assert re.search(r"memory after train 0: cpu resident [\d.]+ GiB", log)
    assert re.search(r"memory after evaluate 0: cpu resident [\d.]+ GiB", log)
    assert trained.checkpoint(0).is_dir() and not trained.checkpoint(1).exists()
    assert not trained.hard_negatives(0).exists()
    assert sorted(json.loads(trained.evaluation_results.read_text())) == ["iter_0"]

    skipped = Experiment(tmp_path / "skipped")
    assert train_main(job_argv(skipped.dir, "--num_iterations", "0", "--skip_round0")) == 0
    base = load_encoder(tiny_qwen, dtype="float32")
    kept = load_encoder(skipped.checkpoint(0), dtype="float32")
    assert all(
        torch.equal(a, b)
        for a, b in zip(
            base.model.state_dict().values(), kept.model.state_dict().values(), strict=True
        )
    )
    tuned = load_encoder(trained.checkpoint(0), dtype="float32")
    assert not all(
        torch.equal(a, b)
        for a, b in zip(
            base.model.state_dict().values(), tuned.model.state_dict().values(), strict=True
        )
    )


def plan_rows(argv: list[str], capsys) -> list[list[str]]:
    """The plan's step rows: [round, stage, status text..., artifact]."""
    assert train_main([*argv, "--plan"]) == 0
    return [line.split() for line in capsys.readouterr().out.splitlines() if " -> " in line][1:]


def test_the_plan_lists_the_steps_a_run_records(finished_run, job_argv, two_round_flags, capsys):
    """--plan and the run take their steps from the same list (src/rounds.py)."""
    rows = plan_rows([*job_argv(finished_run.dir, *two_round_flags), "--auto_resume"], capsys)
    planned = [(row[1], row[-1]) for row in rows]
    recorded = [(s["stage"], s["artifact"]["name"]) for s in finished_run.log.entries()]
    assert planned == recorded and len(planned) == 2 + 4 * 2
    assert all("done: skipped" in " ".join(row) for row in rows)


def test_resume_from_iteration_in_the_plan(finished_run, job_argv, two_round_flags, capsys):
    argv = [*job_argv(finished_run.dir, *two_round_flags), "--auto_resume", "--resume_from_iteration", "2"]
    statuses = ["done" if "done: skipped" in " ".join(row) else "run" for row in plan_rows(argv, capsys)]
    assert statuses == ["done"] * 6 + ["run"] * 4  # round 2 mines with checkpoint_iter_1 again
