"""Augmentation stage of round i: new modification texts for mined hard negatives.

The pairs are the model's failures, hardest first (`--augment_selection`, src/augment/pairs.py:
mined negatives ranked above the target, at most `--augment_pairs_per_query` per query,
capped by `--max_augmented_per_iteration`). For each, a captioner writes a text that turns
the query's reference image into that negative; the triplet (reference, new text,
negative) becomes a positive of round i, with the query's original target as its own hard
negative (the old target no longer matches the new text).

    select pairs -> generate (batched, resumable: src/augment/generation.py)
    -> clean and reject (cleaning.py) -> [--consistency_filter: yes/no check by the same
    model] -> release the model -> [--verify_augmented: the current embedder must prefer
    the negative] -> write

`augmented_samples_iter_{i}.json` (`AugmentedSamples`, src/artifacts.py) holds what made it
(meta), every rejection counted and, for a simulated captioner, each filter's precision
and recall (stats), the kept samples, the rejected ones and the flagged false negatives.
"""

from __future__ import annotations

import contextlib
import gc
import logging
import time
from collections.abc import Iterator
from pathlib import Path

import torch

from src.artifacts import AugmentedSamples, HardNegatives, PartialGenerations, digest
from src.augment.captioners import Captioner, load_captioner
from src.augment.cleaning import REJECTION_REASONS, filter_generations
from src.augment.consistency import CONSISTENCY_REASONS, apply_answers, false_negatives
from src.augment.filters import Decisions
from src.augment.generation import ask_consistency, generate_texts, read_partials
from src.augment.pairs import CaptionPair, PairSelection, pair_rows, select_pairs
from src.augment.prompts import PROMPT_VERSION
from src.augment.verify import VERIFY_REASON, embedder_scores, filter_by_embedder
from src.distributed import barrier, decided_by_main, is_main, merge_dicts, rank, world_size
from src.experiment import Experiment, StageOutput
from src.experiment.step import DependsOn, Reads, Step
from src.job import Job
from src.records import (
    AugmentSeconds,
    AugmentSkipped,
    AugmentSkippedSummary,
    AugmentStats,
    Generation,
)
from src.retrieval.checkpoint_encoding import CheckpointEncoder
from src.retrieval.encode import EmbeddingCache

logger = logging.getLogger("augment")

ALL_REASONS = (*REJECTION_REASONS, *CONSISTENCY_REASONS, VERIFY_REASON)


@contextlib.contextmanager
def _timed(seconds: dict[str, float], name: str) -> Iterator[None]:
    start = time.perf_counter()
    yield
    seconds[name] = round(time.perf_counter() - start, 2)


def _release() -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


SKIPPED = "--foundation_model_backbone none: no augmentation"


def pair_selection(job: Job, iteration: int) -> tuple[HardNegatives, PairSelection]:
    """The mined file round `iteration` captions from, and the pairs chosen from it, with
    what they were chosen from (src/augment/pairs.py)."""
    options = job.augment
    mined = HardNegatives.read(job.experiment.hard_negatives(iteration - 1))
    selection = select_pairs(
        job.train_split.triplets,
        job.train_split.images,
        mined.queries,
        iteration,
        options.augment_pairs_per_query,
        options.pair_cap,
        options.augment_selection,
        random_seed=job.seed if options.augment_negatives == "random" else None,
    )
    return mined, selection


def _remove_partials(experiment: Experiment, iteration: int) -> None:
    if is_main():
        for partial in experiment.partial_augmented_files(iteration):
            partial.unlink()
    barrier()


def augment_step(job: Job, iteration: int, pairs: int = 0) -> Step:
    """Round `iteration`'s new texts (`pairs`: how many will be captioned, at most) ->
    augmented_samples_iter_{iteration}.json. It reads the mined file (through the pairs it
    selects) and the captioner's checkpoint, and depends on the augmentation flags (the
    captioner and its checkpoint are recorded resolved, beside them) and the seed."""
    experiment = job.experiment
    common = dict(
        stage="augment",
        round=iteration,
        iteration=iteration,
        artifact=experiment.augmented(iteration),
        kind=AugmentedSamples,
        experiment=experiment,
        after=lambda artifact: _remove_partials(experiment, iteration),
    )
    if job.captioner == "none":

        def skip() -> StageOutput:
            logger.info("augmentation skipped (--foundation_model_backbone none)")
            skipped = AugmentSkipped(skipped=SKIPPED, kept=0)
            summary = AugmentSkippedSummary(generator=job.captioner, **vars(skipped))
            return StageOutput(AugmentedSamples({}, skipped), summary)

        return Step(
            **common,
            produce=skip,
            facts=lambda: {"generator": "none", "skipped": SKIPPED},
            describes=f"{job.captioner}: caption up to 0 pairs",
            work={"caption": 0},
        )
    mined_file, path = experiment.hard_negatives(iteration - 1), job.augment.foundation_model_path
    dataset_captioner = job.dataset_captioners.get(job.captioner)

    def facts() -> dict:
        return {
            "generator": job.captioner,
            "stands_in_for_a_foundation_model": dataset_captioner is not None,
            "simulation": dataset_captioner.settings if dataset_captioner is not None else None,
            "prompt_version": PROMPT_VERSION,
        }

    def produce() -> StageOutput:
        _, selection = pair_selection(job, iteration)
        artifact = _augment(job, iteration, selection, step.meta())
        return StageOutput(artifact, artifact.stats.summary(job.captioner))

    step = Step(
        **common,
        produce=produce,
        reads=(
            Reads("hard_negatives", lambda: mined_file.name, mined_file),
            Reads(
                "hard_negatives_fingerprint",
                lambda: pair_selection(job, iteration)[0].checkpoint_fingerprint,
                mined_file,
            ),
            Reads("pairs_digest", lambda: digest(pair_rows(pair_selection(job, iteration)[1].pairs))),
            Reads(
                "checkpoint",
                lambda: None if path is None else str(Path(path).resolve()),
                None if path is None else Path(path),
            ),
        ),
        depends_on=(
            DependsOn("options", (job.augment,), leave_out=("foundation_model_path", "foundation_model_backbone")),
            DependsOn("seed", (job.training,), only="seed"),
            DependsOn("encoding", (job.flags.encode,), omit_empty=True),  # --verify_augmented encodes
        ),
        facts=facts,
        describes=f"{job.captioner}: caption up to {pairs} pairs",
        work={"caption": pairs},
    )
    return step


def _load(job: Job) -> Captioner:
    dataset_captioner = job.dataset_captioners.get(job.captioner)
    if dataset_captioner is not None:
        return dataset_captioner.load(Path(job.dataset_path))
    return load_captioner(job.captioner, job.augment.foundation_model_path, job.augment)


def captioned_before(experiment: Experiment, iteration: int, pairs: list[CaptionPair]) -> int | None:
    """How many of these pairs' queries round `iteration - 1` captioned too (kept or
    rejected); None in round 1, or where that round wrote no texts."""
    previous = experiment.augmented(iteration - 1)
    if iteration < 2 or not previous.is_file():
        return None
    earlier = AugmentedSamples.read(previous)
    sources = {s.source_pairid for s in earlier.samples} | {r.source_pairid for r in earlier.rejected}
    return len({p.source_pairid for p in pairs} & sources)


def _augment(job: Job, iteration: int, selection: PairSelection, meta: dict) -> AugmentedSamples:
    """Generate, clean and filter the new samples of one round."""
    options, experiment = job.augment, job.experiment
    pairs = selection.pairs
    own_path = experiment.partial_augmented(iteration, rank())
    # What is already generated is decided once (the pending pairs are sharded by it); each
    # process keeps what its own file holds, since it rewrites that file as it goes.
    every = decided_by_main(lambda: read_partials(experiment.partial_augmented_files(iteration), meta))
    own = read_partials([own_path], meta) if own_path.is_file() else {}
    barrier()  # every process has read the partial files before any rewrites its own
    pending = [p for p in pairs if p.pairid not in every]
    if every:
        logger.info(
            "resuming: %d of %d pairs already generated", len(pairs) - len(pending), len(pairs)
        )

    def flush(generated: dict[str, Generation]) -> None:
        PartialGenerations(meta, own | generated).write(own_path)

    seconds, captioner, run_info = {}, None, {}
    try:
        if pending or (options.consistency_filter and pairs):
            with _timed(seconds, "load"):
                captioner = _load(job)
            run_info = captioner.describe()
            logger.info("captioner %s ready in %.1f s: %s", job.captioner, seconds["load"], run_info)
        if options.do_sample:
            torch.manual_seed(job.seed + iteration)
        with _timed(seconds, "generation"):
            share = pending[rank() :: world_size()]
            generated = merge_dicts(
                generate_texts(
                    captioner, share, options.foundation_batch_size, options.augment_flush_every, flush
                )
            )
        decisions = Decisions(every | generated)
        decisions.apply(
            filter_generations(pairs, decisions.generations, options.prompt_mode), "clean-up rules"
        )
        if options.consistency_filter:
            with _timed(seconds, "consistency"):
                decisions.consistency = ask_consistency(
                    captioner, decisions.kept, options.foundation_batch_size
                )
                decisions.apply(
                    apply_answers(decisions.kept, decisions.consistency), "consistency filter"
                )
    finally:
        captioner = None  # the foundation model leaves memory before the embedder or training
        _release()
    if options.verify_augmented:
        with _timed(seconds, "verify"):
            checkpoint = experiment.verified_checkpoint(iteration - 1)
            cache = EmbeddingCache(experiment.embeddings_dir)
            with CheckpointEncoder(
                checkpoint.path, checkpoint.fingerprint, cache, job.encoding
            ) as encoder:
                decisions.verify = embedder_scores(
                    encoder, job.train_split, decisions.kept, iteration, job.dataset_name
                )
            decisions.apply(filter_by_embedder(decisions.kept, decisions.verify), "verify_augmented")
    samples = decisions.samples(job.captioner)
    flagged = false_negatives(decisions.rejected)
    stats = AugmentStats(
        selection=options.augment_selection,
        failures=selection.failures,
        failure_queries=selection.failure_queries,
        pairs_available=selection.available,
        pairs=len(pairs),
        queries_captioned_before=captioned_before(experiment, iteration, pairs),
        pairs_resumed=len(pairs) - len(pending),
        pairs_generated=len(generated),
        rejected=decisions.reasons(ALL_REASONS),
        kept=len(samples),
        false_negatives=sum(len(images) for images in flagged.values()),
        filters=decisions.filter_diagnostics(),
        run=run_info,
        seconds=AugmentSeconds(**seconds),
    )
    _log_summary(job.captioner, stats)
    return AugmentedSamples({}, stats, samples, decisions.rejected_records(), flagged)


def _log_summary(captioner_name: str, stats: AugmentStats) -> None:
    seconds = stats.seconds.generation
    rate = stats.pairs_generated / seconds if seconds > 0 else 0.0
    before = stats.queries_captioned_before
    logger.info(
        "pairs (%s): %d failures over %d queries; captioning %d of %d available%s",
        stats.selection,
        stats.failures,
        stats.failure_queries,
        stats.pairs,
        stats.pairs_available,
        "" if before is None else f"; {before} of their queries were captioned the round before",
    )
    logger.info(
        "augmentation (%s): generated %d texts in %.1f s (%.2f samples/s; %d resumed from a "
        "partial file); kept %d of %d pairs, %d false negatives flagged",
        captioner_name,
        stats.pairs_generated,
        seconds,
        rate,
        stats.pairs_resumed,
        stats.kept,
        stats.pairs,
        stats.false_negatives,
    )
    counted = {reason: n for reason, n in stats.rejected.items() if n}
    logger.info(
        "rejected: %s", ", ".join(f"{r} {n}" for r, n in counted.items()) if counted else "none"
    )
    for name, filtered in (stats.filters or {}).items():
        logger.info(
            "%s: removed %d of %d wrong texts and %d of %d right ones",
            name,
            filtered.wrong_removed,
            filtered.wrong_in,
            filtered.right_removed,
            filtered.right_in,
        )
