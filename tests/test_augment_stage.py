"""The augmentation stage of a round: real generation on the tiny checkpoints, resume after
a kill, the consistency and embedder filters, the defaults, and a fast-mode run."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import weakref
from collections.abc import Callable
from pathlib import Path

import pytest

import src.retrieval.checkpoint_encoding as checkpoint_encoding
import src.retrieval.encode as encode
import src.stages.augment as stage
from src.arguments import EncodeArguments, parse_arguments
from src.artifacts import (
    AugmentedSamples,
    CheckpointRecord,
    HardNegatives,
    MinedNegative,
    MinedQuery,
    PartialGenerations,
    digest,
)
from src.cli import train_main
from src.data.dataset.composed_retrieval_dataset import ComposedRetrievalDataset
from src.data.records import Triplet
from src.experiment import Experiment
from src.job import Job, resolve_job
from src.model.encoder import build_encoder
from src.offline import OFFLINE_DEFAULTS
from src.offline.scene_oracle import SceneOracle
from src.records import MiningStats, ScoreDistribution, TrainSkipped
from src.retrieval.checkpoint_encoding import CheckpointEncoder, EncodeSettings
from src.retrieval.encode import EmbeddingCache
from src.stages.augment import ALL_REASONS, augment_step
from src.stages.train import round_inputs, save_checkpoint

NUM_MINED = 4
ENCODE_ROWS = encode.encode_rows
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def ending_models(tiny_model_dirs, tmp_path_factory):
    """The tiny checkpoints with `forced_eos_token_id` in their generation config: their
    (gibberish) answers end at the token limit, so clean-up keeps some of them."""
    root = tmp_path_factory.mktemp("ending")
    models = {}
    for backbone in ("qwen2_vl", "llava_next"):
        directory = shutil.copytree(tiny_model_dirs[backbone], root / backbone)
        config_file = directory / "generation_config.json"
        config = json.loads(config_file.read_text())
        config["forced_eos_token_id"] = config["eos_token_id"]
        config_file.write_text(json.dumps(config))
        models[backbone] = directory
    return models


@pytest.fixture()
def make_job(job_argv) -> Callable[..., Job]:
    """`make_job(tmp_path, model_dir, benchmark, *flags)`: a job whose round 0 has mined the
    near misses of the first NUM_MINED triplets."""

    def make(tmp_path, model_dir, benchmark, *flags: str) -> Job:
        argv = job_argv(tmp_path / "exp", *flags, dataset=benchmark, model=model_dir)
        return with_mined_near_misses(resolve_job(parse_arguments(argv), OFFLINE_DEFAULTS))

    return make


def with_mined_near_misses(job: Job) -> Job:
    queries = {}
    for t in job.train_split.triplets[:NUM_MINED]:
        near_misses = [m for m in t.group if m not in (t.reference, t.target)]
        negatives = [MinedNegative(m, 0.5 - 0.01 * r, r) for r, m in enumerate(near_misses)]
        queries[t.pairid] = MinedQuery(negatives, len(near_misses), 0.4)
    stats = MiningStats(
        num_queries=len(job.train_split.triplets),
        num_mined=len(queries),
        num_negatives=sum(len(q.negatives) for q in queries.values()),
        queries_without_negatives=sum(not q.negatives for q in queries.values()),
        train_recall_at_1=None,
        train_recall_at_5=None,
        target_rank_histogram={},
        removed_by_filter={},
        target_scores=ScoreDistribution(count=0),
        negative_scores=ScoreDistribution(count=0),
    )
    mined = HardNegatives({"checkpoint_fingerprint": "mined-by-test"}, stats, queries)
    mined.write(job.experiment.hard_negatives(0))
    return job


def round_data(job: Job, iteration: int) -> ComposedRetrievalDataset:
    return ComposedRetrievalDataset.for_round(job.train_split, *round_inputs(job, iteration))


def partial_files(experiment: Experiment, iteration: int) -> list[Path]:
    return experiment.partial_augmented_files(iteration)


def check_accounting(payload: AugmentedSamples) -> None:
    """Every pair is either a sample or a rejection, and the stats say so."""
    stats = payload.stats
    assert set(stats.rejected) == set(ALL_REASONS)
    assert stats.kept == len(payload.samples)
    assert stats.kept + sum(stats.rejected.values()) == stats.pairs
    assert len(payload.rejected) == sum(stats.rejected.values())
    for reason, count in stats.rejected.items():
        assert sum(r.reason == reason for r in payload.rejected) == count
    ids = [s.pairid for s in payload.samples] + [r.pairid for r in payload.rejected]
    assert len(set(ids)) == len(ids) == stats.pairs


@pytest.mark.parametrize(
    ("model", "flags"),
    [
        ("qwen2_vl", ["--foundation_model_backbone", "qwen2_vl"]),
        ("llava_next", ["--consistency_filter"]),  # backbone detected: llava
    ],
)
def test_round_generates_cleans_filters_and_writes_with_provenance(make_job,
    model, flags, ending_models, small_benchmark, tmp_path, monkeypatch, capsys
):
    job = make_job(
        tmp_path,
        ending_models["qwen2_vl"],
        small_benchmark,
        "--foundation_model_path", str(ending_models[model]),
        "--augment_pairs_per_query", "2",
        "--foundation_batch_size", "3",
        "--max_new_tokens", "8",
        *flags,
    )  # fmt: skip
    loaded, real_load = [], stage.load_captioner

    def load_and_watch(*args, **kwargs):
        captioner = real_load(*args, **kwargs)
        loaded.append(weakref.ref(captioner.model))
        return captioner

    monkeypatch.setattr(stage, "load_captioner", load_and_watch)
    augment_step(job, 1).run()

    assert len(loaded) == 1 and loaded[0]() is None  # released before training
    payload = AugmentedSamples.read(job.experiment.augmented(1))
    meta, stats = payload.meta, payload.stats
    generator = "qwen2_vl" if model == "qwen2_vl" else "llava"
    assert meta["generator"] == generator
    assert meta["checkpoint"] == str(ending_models[model].resolve())
    assert meta["stands_in_for_a_foundation_model"] is False
    assert meta["prompt_version"] == stage.PROMPT_VERSION
    assert meta["options"]["consistency_filter"] == ("--consistency_filter" in flags)
    assert stats.pairs_available == stats.pairs == stats.pairs_generated == 2 * NUM_MINED
    assert stats.run["layout"] == ("two_images" if model == "qwen2_vl" else "side_by_side")
    check_accounting(payload)
    if model == "qwen2_vl":
        assert stats.kept > 0
    else:  # the consistency check ran on every sample that passed clean-up
        asked = stats.kept + sum(stats.rejected[r] for r in stage.CONSISTENCY_REASONS)
        assert asked > 0
        assert all(0 < s.consistency["new_text_yes"] < 1 for s in payload.samples)
        flagged = sum(len(v) for v in payload.false_negatives.values())
        assert flagged == stats.false_negatives
    triplets = {t.pairid: t for t in job.train_split.triplets}
    mined = HardNegatives.read(job.experiment.hard_negatives(0)).negative_images()
    for sample in payload.samples:
        source = triplets[sample.source_pairid]
        assert re.fullmatch(rf"aug1_{source.pairid}_[01]", sample.pairid)
        assert sample.reference == source.reference
        assert sample.original_caption == source.caption
        assert sample.original_target == source.target
        assert sample.target == mined[source.pairid][int(sample.pairid[-1])]
        assert sample.generator == generator
        assert sample.caption and sample.raw_output is not None
    augmented = [t for t in round_data(job, 1).triplets if t.source != "original"]
    assert [t.pairid for t in augmented] == [s.pairid for s in payload.samples]
    assert all(t.source == "augmented:1" for t in augmented)
    logged = capsys.readouterr()
    assert "captioning" in logged.err  # the progress bar
    stages = [s for s in job.experiment.log.entries() if s.stage == "augment"]
    assert len(stages) == 1 and stages[0].summary.kept == stats.kept


class Killed(RuntimeError):
    pass


def test_kill_mid_generation_and_resume(make_job, ending_models, small_benchmark, tmp_path, monkeypatch):
    job = make_job(
        tmp_path,
        ending_models["qwen2_vl"],
        small_benchmark,
        "--foundation_model_path", str(ending_models["qwen2_vl"]),
        "--augment_pairs_per_query", "2",
        "--foundation_batch_size", "2",
        "--augment_flush_every", "2",
        "--max_new_tokens", "6",
    )  # fmt: skip
    real_load = stage.load_captioner
    generated: list[str] = []

    def load_counting(*args, kill_after_batches: int | None, **kwargs):
        captioner = real_load(*args, **kwargs)
        generate = captioner.generate

        def counted(pairs):
            if kill_after_batches is not None and len(generated) >= 2 * kill_after_batches:
                raise Killed
            generated.extend(p.pairid for p in pairs)
            return generate(pairs)

        captioner.generate = counted
        return captioner

    monkeypatch.setattr(
        stage, "load_captioner", lambda *a, **k: load_counting(*a, kill_after_batches=3, **k)
    )
    with pytest.raises(Killed):
        augment_step(job, 1).run()
    assert not job.experiment.augmented(1).exists()
    (partial,) = partial_files(job.experiment, 1)
    first_run = list(generated)
    saved = PartialGenerations.read(partial).generations
    assert sorted(saved) == sorted(first_run) and len(saved) == 6

    generated.clear()
    monkeypatch.setattr(
        stage, "load_captioner", lambda *a, **k: load_counting(*a, kill_after_batches=None, **k)
    )
    augment_step(job, 1).run()
    payload = AugmentedSamples.read(job.experiment.augmented(1))
    assert len(generated) == 2 and not set(generated) & set(first_run)
    assert payload.stats.pairs_resumed == 6 and payload.stats.pairs_generated == 2
    check_accounting(payload)
    outputs = {s.pairid: s.raw_output for s in payload.samples + payload.rejected}
    assert all(outputs[k] == v.text for k, v in saved.items())
    assert partial_files(job.experiment, 1) == []


def test_consistency_answers_drop_samples_and_false_negatives(make_job,
    tiny_qwen, small_benchmark, tmp_path, monkeypatch
):
    job = make_job(tmp_path, tiny_qwen, small_benchmark, "--consistency_filter")
    first, second, third = job.train_split.triplets[:3]

    def answers(self, pairs, texts):
        """Stubbed yes/no: the first query's text is right; the second query's mined negative
        also fits its original text (a false negative); the third query's text is wrong."""
        values = []
        for pair, text in zip(pairs, texts, strict=True):
            is_original = text == pair.original_caption
            if pair.source_pairid == second.pairid:
                values.append(0.9)
            elif pair.source_pairid == third.pairid:
                values.append(0.1 if not is_original else 0.2)
            else:
                values.append(0.2 if is_original else 0.8)
        return values

    monkeypatch.setattr(SceneOracle, "yes_probabilities", answers)
    augment_step(job, 1).run()
    payload = AugmentedSamples.read(job.experiment.augmented(1))
    check_accounting(payload)
    kept_sources = {s.source_pairid for s in payload.samples}
    assert first.pairid in kept_sources and not {second.pairid, third.pairid} & kept_sources
    negative = HardNegatives.read(job.experiment.hard_negatives(0)).negative_images()[second.pairid][0]
    assert payload.false_negatives == {second.pairid: [negative]}
    assert payload.stats.rejected["consistency_false_negative"] == 1
    assert payload.stats.rejected["consistency_new_text_no"] == 1
    negatives = round_data(job, 1).hard_negatives
    assert negative not in negatives[second.pairid]
    assert len(negatives[second.pairid]) == NUM_MINED - 1


def test_verify_keeps_what_the_current_embedder_prefers(make_job,
    tiny_qwen, small_benchmark, tmp_path, monkeypatch
):
    job = make_job(
        tmp_path,
        tiny_qwen,
        small_benchmark,
        "--verify_augmented",
        "--augment_pairs_per_query", "4",
    )  # fmt: skip
    encoder = build_encoder(tiny_qwen)
    checkpoint = job.experiment.checkpoint(0)
    untrained = TrainSkipped(skipped="the base model", num_samples=0)
    save_checkpoint(job.experiment, encoder, checkpoint, CheckpointRecord({}, 0, untrained, ""))
    job.experiment.log.record("train", 0, untrained, checkpoint)
    verified = job.experiment.verified_checkpoint(0)
    cache = EmbeddingCache(job.experiment.embeddings_dir)
    settings = EncodeSettings(EncodeArguments(encode_batch_size=32))
    with CheckpointEncoder(checkpoint, verified.fingerprint, cache, settings) as reader:
        encoded = reader.encode_split(job.train_split, [], job.dataset_name)  # as mining does
    encoded_rows = []

    def counting(encoder, rows, *args, **kwargs):
        encoded_rows.append(rows.kind)
        return ENCODE_ROWS(encoder, rows, *args, **kwargs)

    monkeypatch.setattr(checkpoint_encoding, "encode_rows", counting)
    augment_step(job, 1).run()
    assert encoded_rows == ["queries"]  # the gallery came from the cache
    payload = AugmentedSamples.read(job.experiment.augmented(1))
    check_accounting(payload)
    gallery = dict(zip(encoded.gallery_names, encoded.gallery, strict=True))
    failed = [r for r in payload.rejected if r.reason == "embedder_prefers_original_target"]
    assert payload.samples and failed  # a random tiny embedder gets some right, some wrong
    for sample in payload.samples:
        scores = sample.verify
        assert scores.new_target_score > scores.original_target_score
        assert scores.original_target_score == pytest.approx(
            float(gallery[sample.original_target] @ _query(job, encoder, sample)), abs=1e-4
        )


def _query(job, encoder, sample):
    triplet = Triplet(sample.pairid, sample.reference, sample.caption, sample.target)
    rows = encode.query_rows(job.train_split, [triplet], encoder.backbone.image_token, job.dataset_name)
    return ENCODE_ROWS(encoder, rows, 1, 0)[0]


def test_none_skips_and_says_so(make_job, tiny_qwen, small_benchmark, tmp_path):
    job = make_job(tmp_path, tiny_qwen, small_benchmark, "--foundation_model_backbone", "none")
    augment_step(job, 1).run()
    payload = AugmentedSamples.read(job.experiment.augmented(1))
    assert payload.meta["generator"] == "none" and "none" in payload.meta["skipped"]
    assert payload.samples == []
    assert len(round_data(job, 1)) == len(job.train_split.triplets)


def test_a_finished_file_is_redone_only_when_its_meta_changes(make_job,
    tiny_qwen, small_benchmark, tmp_path, monkeypatch
):
    job = make_job(tmp_path, tiny_qwen, small_benchmark)
    calls = []
    generate = SceneOracle.generate
    monkeypatch.setattr(
        SceneOracle,
        "generate",
        lambda self, pairs: calls.append(len(pairs)) or generate(self, pairs),
    )
    augment_step(job, 1).run()
    assert sum(calls) == NUM_MINED
    augment_step(job, 1).run()
    assert sum(calls) == NUM_MINED
    job.augment.augment_pairs_per_query = 2
    augment_step(job, 1).run()
    assert sum(calls) == NUM_MINED + 2 * NUM_MINED
    assert AugmentedSamples.read(job.experiment.augmented(1)).stats.pairs == 2 * NUM_MINED
    assert [s.stage for s in job.experiment.log.entries()] == ["augment", "augment"]


def test_pool_current_or_cumulative(make_job, tiny_qwen, small_benchmark, tmp_path):
    job = make_job(tmp_path, tiny_qwen, small_benchmark, "--max_augmented_per_iteration", "3")
    augment_step(job, 1).run()
    mined = HardNegatives.read(job.experiment.hard_negatives(0))
    mined.meta["checkpoint_fingerprint"] = "round-1"
    mined.write(job.experiment.hard_negatives(1))
    augment_step(job, 2).run()
    current = [t for t in round_data(job, 2).triplets if t.source != "original"]
    job.augment.augmented_pool = "cumulative"
    cumulative = [t for t in round_data(job, 2).triplets if t.source != "original"]
    assert {t.source for t in current} == {"augmented:2"}
    assert len(current) == 3
    assert [t.source for t in cumulative] == ["augmented:1"] * 3 + ["augmented:2"] * 3
    assert len({t.pairid for t in cumulative}) == 6


@pytest.mark.slow
def test_fast_mode_trains_round_1_on_original_plus_augmented(tmp_path, capsys):
    directory = tmp_path / "exp"
    argv = [
        "--fast_mode",
        "--foundation_model_backbone", "scene_oracle",
        "--num_iterations", "1",
        "--image_size", "56",
        "--batch_size", "8",
        "--cache_dir", str(tmp_path / "cache"),
        "--experiment_dir", str(directory),
        "--dataloader_num_workers", "0",
        "--max_augmented_per_iteration", "20",
    ]  # fmt: skip
    assert train_main(argv) == 0
    experiment = Experiment(directory)
    payload = AugmentedSamples.read(experiment.augmented(1))
    kept = payload.stats.kept
    assert kept > 0 and payload.meta["generator"] == "scene_oracle"
    # The cap keeps the hardest failures of the whole split, not the first queries of the file.
    mined = HardNegatives.read(experiment.hard_negatives(0)).queries
    requested = sorted([*payload.samples, *payload.rejected], key=lambda s: s.pairid)
    gaps = []
    for sample in requested:
        query, place = mined[sample.source_pairid], int(sample.pairid.rsplit("_", 1)[1])
        assert query.negatives[place].rank < query.target_rank, sample.pairid  # a failure
        gaps.append(query.negatives[place].score - query.target_score)
    failures = [[n.score - q.target_score for n in q.negatives if n.rank < q.target_rank] for q in mined.values()]
    assert len(requested) == payload.stats.pairs == 20 < payload.stats.failures == sum(map(len, failures))
    worst = sorted((max(gaps_of_query) for gaps_of_query in failures if gaps_of_query), reverse=True)
    assert sorted(gaps, reverse=True) == pytest.approx(worst[:20])  # each query's worst, the 20 worst
    assert {s.source_pairid for s in requested} != set(list(mined)[:20])  # the file's first queries
    assert payload.meta["stands_in_for_a_foundation_model"] is True
    log = capsys.readouterr().out
    assert f"round 1: {200 + kept} training triplets (200 original, {kept} augmented)" in log
    assert "augmentation (scene_oracle): generated" in log
    (train_1,) = [
        s for s in experiment.log.entries() if s.stage == "train" and s.iteration == 1
    ]
    assert train_1.summary.num_samples == 200 + kept


DISTRIBUTED_SCRIPT = """
import sys
import torch.distributed as dist
from src.arguments import EncodeArguments, parse_arguments
from src.job import resolve_job
from src.offline import OFFLINE_DEFAULTS
from src.stages.augment import augment_step

dist.init_process_group("gloo")
augment_step(resolve_job(parse_arguments(sys.argv[1:]), OFFLINE_DEFAULTS), 1).run()
dist.destroy_process_group()
"""


@pytest.mark.slow
def test_two_processes_share_the_work_and_write_what_one_writes(make_job,
    ending_models, small_benchmark, tmp_path
):
    flags = [
        "--foundation_model_path", str(ending_models["qwen2_vl"]),
        "--augment_pairs_per_query", "2",
        "--foundation_batch_size", "2",
        "--max_new_tokens", "6",
        "--consistency_filter",
    ]  # fmt: skip
    one = make_job(tmp_path / "one", ending_models["qwen2_vl"], small_benchmark, *flags)
    augment_step(one, 1).run()
    two = make_job(tmp_path / "two", ending_models["qwen2_vl"], small_benchmark, *flags)
    script = tmp_path / "augment_two.py"
    script.write_text(DISTRIBUTED_SCRIPT)
    argv = [
        "--model_name", str(ending_models["qwen2_vl"]),
        "--dataset_path", str(small_benchmark),
        "--experiment_dir", str(two.experiment.dir),
        *flags,
    ]  # fmt: skip
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node",
        "2",
    ]
    environment = os.environ | {"PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    completed = subprocess.run(
        [*command, str(script), *argv], cwd=REPO, env=environment, capture_output=True, text=True
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    single = AugmentedSamples.read(one.experiment.augmented(1))
    double = AugmentedSamples.read(two.experiment.augmented(1))
    assert double.meta == single.meta

    def outcome(payload: AugmentedSamples) -> dict:
        records = payload.samples + payload.rejected
        return {r.pairid: (r.raw_output, getattr(r, "reason", None), r.target) for r in records}

    assert outcome(double) == outcome(single) and len(outcome(single)) == 2 * NUM_MINED
    assert double.stats.rejected == single.stats.rejected
    assert double.false_negatives == single.false_negatives
    assert partial_files(two.experiment, 1) == []


def test_the_simulations_right_or_wrong_labels_never_reach_training(make_job, ending_models, small_benchmark, tmp_path):
    """Training must read a simulated captioner's text as it would a real model's: flipping
    every label (right <-> wrong) changes neither the round's triplets, nor its negatives,
    nor what its meta digests (so no retraining either)."""
    job = make_job(
        tmp_path, ending_models["qwen2_vl"], small_benchmark,
        "--foundation_model_backbone", "simulated_captioner", "--augment_pairs_per_query", "2",
        "--simulated_wrong_value", "0.5",
    )  # fmt: skip
    augment_step(job, 1).run()
    path = job.experiment.augmented(1)
    payload = AugmentedSamples.read(path)
    labels = [s.simulation.correct for s in payload.samples]
    assert True in labels and False in labels  # both kinds reach the file

    def what_training_sees() -> tuple:
        dataset = round_data(job, 1)
        rows = [
            (t.pairid, t.reference, t.caption, t.target, t.source, tuple(dataset.negatives_of(i)))
            for i, t in enumerate(dataset.triplets)
        ]
        return rows, digest(AugmentedSamples.read(path).training_content())

    before = what_training_sees()
    data = json.loads(path.read_text())
    for sample in data["samples"]:
        sample["simulation"]["correct"] = not sample["simulation"]["correct"]
    path.write_text(json.dumps(data))
    assert [s.simulation.correct for s in AugmentedSamples.read(path).samples] == [not c for c in labels]
    assert what_training_sees() == before
