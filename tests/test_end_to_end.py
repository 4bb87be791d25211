"""A run of the whole job (2 rounds: conftest.py's two_round_experiment), eval_iterative.py on
its checkpoints, resuming it, and its plan; the evaluation's image-only and text-only
rankings against a numpy recomputation, and an evaluation file written before them."""

import json
import re

import numpy as np
import pytest
import torch

from src.artifacts import (
    FORMAT_VERSION,
    AugmentedSamples,
    CheckpointRecord,
    Evaluation,
    HardNegatives,
)
from src.cli import eval_main, modality_table, train_main
from src.data.loading import load_split
from src.experiment import Experiment
from src.model.encoder import load_encoder
from src.report.html import build_report
from src.retrieval.metrics import CIRR_RECALL_KS, modality_metrics

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
        assert augmented.stats.kept == len(augmented.samples)
        assert (experiment.train_dir(i)).is_dir()
    results = json.loads(experiment.evaluation_results.read_text())
    assert sorted(results) == ["iter_0", "iter_1", "iter_2"]
    assert (experiment.dir / "evaluation_results.png").is_file()
    assert any(experiment.embeddings_dir.glob("*.npy"))
    stages = [(s.stage, s.iteration) for s in experiment.log.entries()]
    assert stages.count(("train", 2)) == 1 and ("augment", 1) in stages
    train_log = [
        s for s in experiment.log.entries() if s.stage == "train" and s.iteration == 1
    ][0]
    expected = len(small_train_split.triplets) + AugmentedSamples.read(experiment.augmented(1)).stats.kept
    assert train_log.summary.num_samples == expected


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


def cached_embeddings(experiment: Experiment, iteration: int) -> dict[str, tuple[list, np.ndarray]]:
    """{kind: (row names, matrix)} of the validation embeddings of checkpoint_iter_{iteration}."""
    fingerprint = CheckpointRecord.read(experiment.checkpoint_record(iteration)).fingerprint
    entries = {}
    for meta_file in experiment.embeddings_dir.glob("val_*.json"):
        meta = json.loads(meta_file.read_text())
        if meta["key"]["weights"] == fingerprint:
            entries[meta["key"]["kind"]] = (meta["rows"], np.load(meta_file.with_suffix(".npy")))
    return entries


def numpy_rank(scores: np.ndarray, target: int, excluded: int) -> int:
    """1-based rank of `target` with `excluded` out: higher scores, then equal ones earlier."""
    scores = scores.astype(np.float64)
    eligible = np.ones(len(scores), dtype=bool)
    eligible[excluded] = False
    ahead = (scores > scores[target]) | ((scores == scores[target]) & (np.arange(len(scores)) < target))
    return int((ahead & eligible).sum()) + 1


def test_the_evaluation_file_ranks_each_query_by_its_image_alone_and_by_its_text_alone(
    two_round_experiment, small_benchmark
):
    experiment = two_round_experiment
    path = experiment.evaluation("val", 2)
    raw = json.loads(path.read_text())
    assert raw["meta"]["rankings"] == ["composed", "image_only", "text_only"]
    keys = ["image_only_recall", "text_only_recall", "composed_recall", "solved_by_one_modality",
            "need_both_queries", "need_both_recall"]  # fmt: skip
    assert list(raw["modalities"]) == ["queries", *(f"{n}@{k}" for n in keys for k in CIRR_RECALL_KS)]
    assert all(set(q) == {"target_rank", "top", "image_rank", "text_rank"} for q in raw["queries"].values())
    evaluation = Evaluation.read(path)
    entries = cached_embeddings(experiment, 2)
    assert sorted(entries) == ["gallery", "queries", "text_queries"]
    names, gallery = entries["gallery"]
    text_pairids, texts = entries["text_queries"]
    assert text_pairids == entries["queries"][0]
    by_pairid = {t.pairid: t for t in load_split("cirr", small_benchmark, "val").triplets}
    image_ranks, text_ranks, composed_ranks = [], [], []
    for row, pairid in enumerate(text_pairids):
        triplet, ranking = by_pairid[pairid], evaluation.queries[pairid]
        reference, target = names.index(triplet.reference), names.index(triplet.target)
        image_ranks.append(numpy_rank(gallery @ gallery[reference], target, reference))
        text_ranks.append(numpy_rank(gallery @ texts[row], target, reference))
        composed_ranks.append(ranking.target_rank)
        assert (ranking.image_rank, ranking.text_rank) == (image_ranks[-1], text_ranks[-1])
    assert evaluation.modalities == pytest.approx(
        modality_metrics(composed_ranks, image_ranks, text_ranks, CIRR_RECALL_KS)
    )
    for k in CIRR_RECALL_KS:  # the composed recall of all queries is the official one
        assert evaluation.modalities[f"composed_recall@{k}"] == pytest.approx(evaluation.metrics[f"recall@{k}"])


def test_an_evaluation_file_without_the_modality_rankings_is_read_and_evaluated_again(
    finished_run, job_argv, two_round_flags, capsys
):
    """Round 2's evaluation file as it was written before these rankings (recorded as
    finished): the report and the table read it ("-"), and a resume evaluates it again,
    alone, to the same metrics and rankings."""
    experiment = finished_run
    path = experiment.evaluation("val", 2)
    new = Evaluation.read(path)
    raw = json.loads(path.read_text())
    del raw["modalities"], raw["meta"]["rankings"]
    for query in raw["queries"].values():
        del query["image_rank"], query["text_rank"]
    path.write_text(json.dumps(raw))
    experiment.log.record("evaluate", 2, raw["metrics"], path)

    text = build_report(experiment.dir, queries=6).read_text()
    round2 = text[text.index('id="round2"'):]
    assert "image alone: " not in round2 and "image alone: " in text[: text.index('id="round2"')]
    assert "<tr><th>round 2</th>" + "<td>-</td>" * 10 + "</tr>" in text
    results = json.loads(experiment.evaluation_results.read_text())
    lines = modality_table(experiment, "val", results).splitlines()
    assert lines[-3].split() == ["2"] + ["-"] * 10

    before = len(experiment.log.entries())
    assert train_main([*job_argv(experiment.dir, *two_round_flags), "--auto_resume"]) == 0
    ran = [(s.stage, s.iteration) for s in experiment.log.entries()[before:]]
    assert ran == [("evaluate", 2)]
    again = Evaluation.read(path)
    assert again.metrics == new.metrics and again.modalities == new.modalities
    assert again.queries == new.queries
    out = capsys.readouterr().out
    assert "evaluation_val_iter_2.json was made with other settings (rankings)" in out
    assert "whether val queries need both the image and the text" in out
    assert "one@1" in out


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
    recorded = [(s.stage, s.artifact.name) for s in finished_run.log.entries()]
    assert planned == recorded and len(planned) == 2 + 4 * 2
    assert all("done: skipped" in " ".join(row) for row in rows)


def test_resume_from_iteration_in_the_plan(finished_run, job_argv, two_round_flags, capsys):
    argv = [*job_argv(finished_run.dir, *two_round_flags), "--auto_resume", "--resume_from_iteration", "2"]
    statuses = ["done" if "done: skipped" in " ".join(row) else "run" for row in plan_rows(argv, capsys)]
    assert statuses == ["done"] * 6 + ["run"] * 4  # round 2 mines with checkpoint_iter_1 again
