"""Steps declare what they read and the flag groups they depend on; their metas and the
embedding-cache key are derived from those declarations (src/experiment/step.py)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from src.arguments import EncodeArguments, MiningArguments, flag, parse_arguments, resolve_bf16
from src.job import resolve_job
from src.offline import OFFLINE_DEFAULTS
from src.retrieval.checkpoint_encoding import CheckpointEncoder, EncodeSettings
from src.retrieval.encode import EmbeddingCache, gallery_rows
from src.rounds import job_steps
from src.stages.evaluate import evaluate_step
from src.stages.mine import mine_step


@dataclass
class ProbedMining(MiningArguments):
    """MiningArguments with one more flag, as a change adding a mining flag would declare it."""

    probe_depth: int = flag(3, "A mining flag a later change adds (this test's).", since=9)


@dataclass
class ProbedEncoding(EncodeArguments):
    probe_layer: int = flag(-1, "An encoding flag a later change adds (this test's).", since=9)


def job_of(copied, job_argv, two_round_flags):
    """The job of the copied experiment, as train_iterative.py resolves it (--bf16 settled)."""
    flags = parse_arguments(job_argv(copied.dir, *two_round_flags, "--auto_resume"))
    resolve_bf16(flags.training)
    return resolve_job(flags, OFFLINE_DEFAULTS)


def test_a_flag_added_to_a_group_in_a_subclass_changes_the_meta_of_the_step_that_depends_on_it(
    copied, job_argv, two_round_flags
):
    job = job_of(copied, job_argv, two_round_flags)
    before = mine_step(job, 1).meta()
    assert job.experiment.why_not_done(copied.hard_negatives(0), mine_step(job, 1).kind, before) is None

    # at its default, a flag added since the experiment was written leaves the meta as it was
    job.flags.mining = ProbedMining(**dataclasses.asdict(job.mining))
    assert mine_step(job, 1).meta() == before
    # off its default, it is in the meta, and the mined file is no longer done
    job.flags.mining = ProbedMining(**dataclasses.asdict(job.mining) | {"probe_depth": 5})
    step = mine_step(job, 1)
    assert step.meta()["options"] == before["options"] | {"probe_depth": 5}
    assert "options" in job.experiment.why_not_done(step.artifact, step.kind, step.meta())
    # the other declarations are unchanged: the checkpoint read, the seed
    assert {k: v for k, v in step.meta().items() if k != "options"} == {
        k: v for k, v in before.items() if k != "options"
    }


def test_an_encoding_flag_enters_the_evaluation_meta_and_the_cache_key_by_its_declaration(
    copied, job_argv, two_round_flags
):
    job = job_of(copied, job_argv, two_round_flags)
    evaluation = copied.evaluation("val", 1)

    def step(options: EncodeArguments):
        settings = dataclasses.replace(job.encoding, options=options)
        return evaluate_step(copied, 1, job.val_split, job.dataset_name, settings)

    before = step(job.flags.encode).meta()
    assert "encoding" not in before and copied.why_not_done(evaluation, step(job.flags.encode).kind, before) is None
    probed = ProbedEncoding(**dataclasses.asdict(job.flags.encode) | {"probe_layer": -2})
    after = step(probed).meta()
    assert after == before | {"encoding": {"probe_layer": -2}}
    assert "encoding" in copied.why_not_done(evaluation, step(probed).kind, after)
    # the same flag is in the embedding-cache key, with no edit of the cache
    checkpoint = copied.verified_checkpoint(1)
    cache = EmbeddingCache(copied.embeddings_dir)
    keys = []
    for options in (job.flags.encode, probed):
        encoder = CheckpointEncoder(checkpoint.path, checkpoint.fingerprint, cache, EncodeSettings(options))
        rows = gallery_rows(job.val_split, encoder.image_token)
        keys.append(cache.key(rows, "val", checkpoint.fingerprint, encoder.backbone_name,
                              encoder.processor, encoder.options()))  # fmt: skip
    assert "options" not in keys[0] and keys[1] == keys[0] | {"options": {"probe_layer": -2}}
    assert cache.verified(keys[0]) and not cache.verified(keys[1])
    # mining ranks the same embeddings: its meta takes the flag too
    mined = mine_step(job, 1).meta()
    job.flags.encode = probed
    assert mine_step(job, 1).meta() == mined | {"encoding": {"probe_layer": -2}}


def test_every_step_names_its_stage_path_and_kind_once_and_the_job_runs_them_all(
    copied, job_argv, two_round_flags
):
    """The round's steps, their artifacts and the inputs they declare; every step of a
    finished experiment is done for the metas they derive."""
    job = job_of(copied, job_argv, two_round_flags)
    steps = job_steps(job)
    assert [(s.stage, s.round) for s in steps] == [
        ("train", 0), ("evaluate", 0),
        ("mine", 1), ("augment", 1), ("train", 1), ("evaluate", 1),
        ("mine", 2), ("augment", 2), ("train", 2), ("evaluate", 2),
    ]  # fmt: skip
    for step in steps:
        assert copied.why_not_done(step.artifact, step.kind, step.meta()) is None, step.stage
    train_1 = steps[4]
    assert [read.key for read in train_1.reads] == ["inputs.start", "inputs.hard_negatives", "inputs.augmented"]
    assert [read.path for read in train_1.reads] == [
        copied.checkpoint(0), copied.hard_negatives(0), copied.augmented(1)
    ]
    assert set(train_1.meta()) == {"inputs", "config"}
