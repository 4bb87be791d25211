"""The augmentation stage of round i: new modification texts for mined hard negatives.

For each mined query and each of its first `--augment_pairs_per_query` hard negatives, a
captioner (src/augment/captioners.py) writes a text that turns the query's reference
image into that negative; the triplet (reference, new text, negative) becomes a positive
of round i, with the query's original target as its own hard negative (the old target no
longer matches the new text).

    select pairs -> generate (batched, resumable) -> clean and reject (cleaning.py)
    -> [--consistency_filter: yes/no check by the same model] -> release the model
    -> [--verify_augmented: the current embedder must prefer the negative] -> write

`augmented_samples_iter_{i}.json` holds `meta` (what made it: a finished file with the
same meta is not redone), `stats` (every rejection counted), `samples`, `rejected` and
`false_negatives` ({source pairid: [mined negatives the consistency check flagged]}).
While generating, each process flushes its texts to `partial_rank{r}_augmented_samples_
iter_{i}.json` every `--augment_flush_every` pairs; a rerun with the same meta reads
them and generates only the rest. On real data no captioner is chosen silently: the run
stops and says which flag to pass.
"""

from __future__ import annotations

import contextlib
import gc
import logging
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import torch
import torch.distributed as dist
from tqdm.auto import tqdm

from src.augment.captioners import (
    FOUNDATION_BACKBONES,
    Captioner,
    GenerationOptions,
    detect_foundation_backbone,
    load_captioner,
)
from src.augment.cleaning import REJECTION_REASONS, filter_generations
from src.augment.consistency import CONSISTENCY_REASONS, apply_answers
from src.augment.pairs import CaptionPair, pairs_digest, select_pairs
from src.augment.prompts import PROMPT_MODES, PROMPT_VERSION
from src.augment.verify import VERIFY_REASON, embedder_scores
from src.data.records import Triplet
from src.distributed import barrier, rank, world_size
from src.experiment_io import read_json, write_json_atomic

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator

    from src.arguments import IterativeArguments
    from src.experiment import Experiment
    from src.rounds import Job

logger = logging.getLogger("augment")

CAPTIONERS = (*FOUNDATION_BACKBONES, "scene_oracle", "none")
POOLS = ("current", "cumulative")
ALL_REASONS = (*REJECTION_REASONS, *CONSISTENCY_REASONS, VERIFY_REASON)


def choose_captioner(
    foundation_model_backbone: str | None, foundation_model_path: str | None, synthetic: bool
) -> str:
    """The captioner of this run, or a clear error where none may be chosen silently."""
    backbone, path = foundation_model_backbone, foundation_model_path
    if backbone is None:
        if path is not None:
            return detect_foundation_backbone(path)
        if synthetic:
            return "scene_oracle"
        raise ValueError(
            "no foundation model for augmentation on real data: pass --foundation_model_path "
            "(a local chat vision-language checkpoint), or --foundation_model_backbone none to "
            "skip augmentation"
        )
    if backbone not in CAPTIONERS:
        raise ValueError(
            f"--foundation_model_backbone {backbone!r}: choose one of {', '.join(CAPTIONERS)}"
        )
    if backbone in FOUNDATION_BACKBONES and path is None:
        raise ValueError(f"--foundation_model_backbone {backbone} needs --foundation_model_path")
    if backbone in ("scene_oracle", "none") and path is not None:
        raise ValueError(
            f"--foundation_model_backbone {backbone} uses no model, but --foundation_model_path "
            f"{path} is given; drop one of the two"
        )
    if backbone == "scene_oracle" and not synthetic:
        raise ValueError(
            "--foundation_model_backbone scene_oracle reads scenes.json and works only on the "
            "synthetic benchmark; pass --foundation_model_path for real data"
        )
    return backbone


def check_options(args: IterativeArguments) -> None:
    """Refuse bad augmentation flags before any work is done."""
    if args.prompt_mode not in PROMPT_MODES:
        raise ValueError(f"--prompt_mode {args.prompt_mode!r}: choose one of {PROMPT_MODES}")
    if args.augmented_pool not in POOLS:
        raise ValueError(f"--augmented_pool {args.augmented_pool!r}: choose one of {POOLS}")
    for flag in ("foundation_batch_size", "augment_flush_every", "max_new_tokens"):
        if getattr(args, flag) < 1:
            raise ValueError(f"--{flag} must be at least 1, got {getattr(args, flag)}")
    if args.foundation_max_pixels < 56 * 56:
        raise ValueError(
            f"--foundation_max_pixels {args.foundation_max_pixels}: at least {56 * 56} (56 x 56)"
        )


def generation_options(args: IterativeArguments) -> GenerationOptions:
    return GenerationOptions(
        prompt_mode=args.prompt_mode,
        max_new_tokens=args.max_new_tokens,
        do_sample=args.do_sample,
        temperature=args.generation_temperature,
        top_p=args.top_p,
        max_pixels=args.foundation_max_pixels,
    )


def _result_options(job: Job) -> dict:
    """The flags that change which samples come out (batch size and flush interval do not)."""
    args = job.iter_args
    names = (
        "prompt_mode",
        "max_new_tokens",
        "do_sample",
        "generation_temperature",
        "top_p",
        "foundation_max_pixels",
        "augment_pairs_per_query",
        "max_augmented_per_iteration",
        "consistency_filter",
        "verify_augmented",
    )
    return {name: getattr(args, name) for name in names} | {"seed": job.training_args.seed}


# ---------------------------------------------------------------- partial files


# The name ends in _iter_{i}.json so that the experiment moves it aside with round i.
PARTIAL_NAME = "partial_rank{process}_augmented_samples_iter_{iteration}.json"


def partial_path(experiment: Experiment, iteration: int, process: int) -> Path:
    return experiment.dir / PARTIAL_NAME.format(process=process, iteration=iteration)


def partial_files(experiment: Experiment, iteration: int) -> list[Path]:
    """Every process's partial file of this round (from runs with any number of processes)."""
    return sorted(experiment.dir.glob(PARTIAL_NAME.format(process="*", iteration=iteration)))


def read_partials(
    experiment: Experiment, iteration: int, meta: dict
) -> tuple[dict[str, dict], dict[str, dict]]:
    """Texts already generated with this meta: from every process's file, and from this one's."""
    every, own = {}, {}
    for path in partial_files(experiment, iteration):
        partial = read_json(path)
        if partial["meta"] != meta:
            logger.info("%s was written with other settings; not reused", path.name)
            continue
        every.update(partial["generations"])
        if path == partial_path(experiment, iteration, rank()):
            own.update(partial["generations"])
    return every, own


def _gather(local: dict) -> dict:
    """The union of every process's dict (the same on every process)."""
    if world_size() == 1:
        return local
    parts = [None] * world_size()
    dist.all_gather_object(parts, local)
    return {key: value for part in parts for key, value in part.items()}


def generate_texts(
    captioner: Captioner,
    pairs: list[CaptionPair],
    batch_size: int,
    flush_every: int,
    flush: Callable[[dict[str, dict]], None],
) -> dict[str, dict]:
    """Generate a text for each pair in batches, calling `flush(generated so far)` every
    `flush_every` pairs and at the end; returns {pairid: {"text", "finished"}}."""
    generated, unflushed = {}, 0
    bar = tqdm(total=len(pairs), desc="captioning", unit="sample", disable=rank() != 0)
    for start in range(0, len(pairs), batch_size):
        batch = pairs[start : start + batch_size]
        for pair, generation in zip(batch, captioner.generate(batch), strict=True):
            generated[pair.pairid] = generation
        bar.update(len(batch))
        unflushed += len(batch)
        if unflushed >= flush_every:
            flush(generated)
            unflushed = 0
    bar.close()
    if unflushed:
        flush(generated)
    return generated


def ask_consistency(
    captioner: Captioner, kept: list[tuple[CaptionPair, str]], batch_size: int
) -> dict[str, tuple[float, float]]:
    """{pairid: (P(yes) for the new text, P(yes) for the original text)}; both questions of
    a batch go through one forward pass."""
    share = kept[rank() :: world_size()]
    answers = {}
    bar = tqdm(total=len(share), desc="consistency check", unit="sample", disable=rank() != 0)
    for start in range(0, len(share), batch_size):
        batch = share[start : start + batch_size]
        pairs = [pair for pair, _ in batch]
        texts = [text for _, text in batch] + [pair.original_caption for pair in pairs]
        probabilities = captioner.yes_probabilities(pairs + pairs, texts)
        for i, pair in enumerate(pairs):
            answers[pair.pairid] = (probabilities[i], probabilities[len(pairs) + i])
        bar.update(len(batch))
    bar.close()
    return _gather(answers)


# ---------------------------------------------------------------- the stage


@dataclass
class Decisions:
    """What became of each pair: the (pair, text) still kept, the rejected ones as records
    with their reason, the count of each reason, and the check scores of kept samples."""

    generations: dict[str, dict]
    kept: list[tuple[CaptionPair, str]] = field(default_factory=list)
    rejected: list[dict] = field(default_factory=list)
    reasons: Counter = field(default_factory=Counter)
    answers: dict[str, tuple[float, float]] = field(default_factory=dict)
    scores: dict[str, tuple[float, float]] = field(default_factory=dict)
    false_negatives: dict[str, list[str]] = field(default_factory=dict)

    def reject(self, pair: CaptionPair, text: str | None, reason: str) -> None:
        self.reasons[reason] += 1
        self.rejected.append(
            {
                "pairid": pair.pairid,
                "source_pairid": pair.source_pairid,
                "reference": pair.reference,
                "target": pair.negative,
                "reason": reason,
                "text": text,
                "raw_output": self.generations[pair.pairid]["text"],
            }
        )

    def clean(self, pairs: list[CaptionPair], prompt_mode: str) -> None:
        self.kept, rejected, _ = filter_generations(pairs, self.generations, prompt_mode)
        for pair, judged in rejected:
            self.reject(pair, judged.text, judged.reason)

    def check_consistency(self, answers: dict[str, tuple[float, float]]) -> None:
        self.answers = answers
        self.kept, dropped, _, self.false_negatives = apply_answers(self.kept, answers)
        for pair, text, reason in dropped:
            self.reject(pair, text, reason)

    def verify(self, scores: dict[str, tuple[float, float]]) -> None:
        """Keep what the embedder scores higher against the hard negative than against the
        original target."""
        self.scores = scores
        kept, self.kept = self.kept, []
        for pair, text in kept:
            negative_score, target_score = scores[pair.pairid]
            if negative_score > target_score:
                self.kept.append((pair, text))
            else:
                self.reject(pair, text, VERIFY_REASON)

    def samples(self, generator: str) -> list[dict]:
        """The kept triplets with their provenance (and their check scores)."""
        samples = []
        for pair, text in self.kept:
            sample = {
                "pairid": pair.pairid,
                "reference": pair.reference,
                "caption": text,
                "target": pair.negative,
                "source_pairid": pair.source_pairid,
                "original_caption": pair.original_caption,
                "original_target": pair.original_target,
                "generator": generator,
                "raw_output": self.generations[pair.pairid]["text"],
            }
            if pair.pairid in self.answers:
                new_yes, original_yes = self.answers[pair.pairid]
                sample["consistency"] = {"new_text_yes": new_yes, "original_text_yes": original_yes}
            if pair.pairid in self.scores:
                negative_score, target_score = self.scores[pair.pairid]
                sample["verify"] = {
                    "target_score": negative_score,
                    "original_target_score": target_score,
                }
            samples.append(sample)
        return samples


@contextlib.contextmanager
def _timed(seconds: dict[str, float], name: str) -> Iterator[None]:
    start = time.perf_counter()
    yield
    seconds[name] = round(time.perf_counter() - start, 2)


def _release() -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def run_augmentation(job: Job, iteration: int) -> None:
    """Write augmented_samples_iter_{iteration}.json unless a matching one exists."""
    args, experiment = job.iter_args, job.experiment
    output = experiment.augmented(iteration)
    captioner_name = choose_captioner(
        args.foundation_model_backbone, args.foundation_model_path, job.synthetic
    )
    check_options(args)
    mined_file = experiment.hard_negatives(iteration - 1)
    mined = read_json(mined_file)
    meta = {
        "generator": captioner_name,
        "hard_negatives": mined_file.name,
        "hard_negatives_fingerprint": mined["meta"]["checkpoint_fingerprint"],
    }
    pairs, available = [], 0
    if captioner_name == "none":
        meta["skipped"] = "--foundation_model_backbone none: no augmentation"
    else:
        pairs, available = select_pairs(
            job.train_split.triplets,
            job.train_split.images,
            mined["queries"],
            iteration,
            args.augment_pairs_per_query,
            args.max_augmented_per_iteration,
        )
        path = args.foundation_model_path
        meta |= {
            "checkpoint": None if path is None else str(Path(path).resolve()),
            "stands_in_for_a_foundation_model": captioner_name == "scene_oracle",
            "prompt_version": PROMPT_VERSION,
            "pairs_digest": pairs_digest(pairs),
            "options": _result_options(job),
        }
    if output.is_file() and read_json(output)["meta"] == meta:
        logger.info("%s is done, skipping augmentation", output.name)
        return
    if captioner_name == "none":
        logger.info(
            "augmentation skipped (--foundation_model_backbone none), recorded in %s", output.name
        )
        stats = {"skipped": meta["skipped"], "kept": 0}
        payload = {"meta": meta, "stats": stats, "samples": [], "false_negatives": {}}
    else:
        payload = _augment(job, iteration, captioner_name, pairs, available, meta)
    if rank() == 0:
        write_json_atomic(output, payload)
        for partial in partial_files(experiment, iteration):
            partial.unlink()
        summary = {k: v for k, v in payload["stats"].items() if k != "seconds"}
        experiment.record_stage("augment", iteration, {"generator": captioner_name} | summary)
    barrier()


def _augment(
    job: Job,
    iteration: int,
    captioner_name: str,
    pairs: list[CaptionPair],
    available: int,
    meta: dict,
) -> dict:
    """Generate, clean and filter the new samples of one round; the output file's content."""
    args, experiment = job.iter_args, job.experiment
    every, own = read_partials(experiment, iteration, meta)
    barrier()  # every process has read the partial files before any rewrites its own
    pending = [p for p in pairs if p.pairid not in every]
    if every:
        logger.info(
            "resuming: %d of %d pairs already generated", len(pairs) - len(pending), len(pairs)
        )
    own_path = partial_path(experiment, iteration, rank())

    def flush(generated: dict[str, dict]) -> None:
        write_json_atomic(own_path, {"meta": meta, "generations": own | generated})

    seconds, captioner, run_info = {}, None, {}
    try:
        if pending or (args.consistency_filter and pairs):
            with _timed(seconds, "load"):
                captioner = load_captioner(
                    captioner_name,
                    args.foundation_model_path,
                    generation_options(args),
                    job.dataset_path,
                )
            run_info = captioner.describe()
            logger.info(
                "captioner %s ready in %.1f s: %s", captioner_name, seconds["load"], run_info
            )
        if args.do_sample:
            torch.manual_seed(job.training_args.seed + iteration)
        with _timed(seconds, "generation"):
            share = pending[rank() :: world_size()]
            batch_size, flush_every = args.foundation_batch_size, args.augment_flush_every
            generated = _gather(generate_texts(captioner, share, batch_size, flush_every, flush))
        decisions = Decisions(every | generated)
        decisions.clean(pairs, args.prompt_mode)
        if args.consistency_filter:
            with _timed(seconds, "consistency"):
                answers = ask_consistency(captioner, decisions.kept, args.foundation_batch_size)
                decisions.check_consistency(answers)
    finally:
        captioner = None  # the foundation model leaves memory before the embedder or training
        _release()
    if args.verify_augmented:
        with _timed(seconds, "verify"):
            decisions.verify(embedder_scores(job, iteration, decisions.kept))
    samples = decisions.samples(captioner_name)
    stats = {
        "pairs_available": available,
        "pairs": len(pairs),
        "pairs_resumed": len(pairs) - len(pending),
        "pairs_generated": len(generated),
        "rejected": {reason: decisions.reasons[reason] for reason in ALL_REASONS},
        "kept": len(samples),
        "false_negatives": sum(len(images) for images in decisions.false_negatives.values()),
        "run": run_info,
        "seconds": seconds,
    }
    _log_summary(captioner_name, stats)
    return {
        "meta": meta,
        "stats": stats,
        "samples": samples,
        "rejected": decisions.rejected,
        "false_negatives": decisions.false_negatives,
    }


def _log_summary(captioner_name: str, stats: dict) -> None:
    seconds = stats["seconds"].get("generation", 0.0)
    rate = stats["pairs_generated"] / seconds if seconds > 0 else 0.0
    logger.info(
        "augmentation (%s): generated %d texts in %.1f s (%.2f samples/s; %d resumed from a "
        "partial file); kept %d of %d pairs, %d false negatives flagged",
        captioner_name,
        stats["pairs_generated"],
        seconds,
        rate,
        stats["pairs_resumed"],
        stats["kept"],
        stats["pairs"],
        stats["false_negatives"],
    )
    counted = {reason: n for reason, n in stats["rejected"].items() if n}
    logger.info(
        "rejected: %s", ", ".join(f"{r} {n}" for r, n in counted.items()) if counted else "none"
    )


@dataclass
class AugmentedSamples:
    """What the augmentation stage adds to a round's training data."""

    triplets: list[Triplet] = field(default_factory=list)
    negatives: dict[str, list[str]] = field(default_factory=dict)
    false_negatives: dict[str, list[str]] = field(default_factory=dict)


def augmented_training_samples(
    experiment: Experiment, iteration: int, pool: str
) -> AugmentedSamples:
    """The augmented triplets that round `iteration` trains on.

    `pool="current"` takes round `iteration`'s file only; `"cumulative"` those of rounds
    1..iteration. Each new triplet's hard negative is its source query's original target,
    which the new text no longer describes. Mined negatives flagged as likely false
    negatives (by the consistency check of this round) are reported so the round drops them.
    """
    if pool not in POOLS:
        raise ValueError(f"--augmented_pool must be one of {POOLS}, not {pool!r}")
    rounds = [iteration] if pool == "current" else range(1, iteration + 1)
    result = AugmentedSamples()
    for i in rounds:
        payload = read_json(experiment.augmented(i))
        for sample in payload["samples"]:
            result.triplets.append(
                Triplet(
                    pairid=sample["pairid"],
                    reference=sample["reference"],
                    caption=sample["caption"],
                    target=sample["target"],
                    source=f"augmented:{i}",
                )
            )
            result.negatives[sample["pairid"]] = [sample["original_target"]]
        if i == iteration:
            result.false_negatives = payload.get("false_negatives", {})
    return result
