"""Every command-line flag of train_iterative.py, declared once, in groups.

Each flag is a dataclass field made by `flag()`: its default, its help, its range or
choices, and whether it changes what a run computes (`results`; the others only change
how a run is operated, e.g. where it logs) live in the field's metadata and nowhere else.
From that metadata come the range checks (`check_flags`, run by every group's
`__post_init__`, for command-line flags and preset values alike), the keys a resume must
not change (`result_config`), and the README's flag tables of train_iterative.py and
eval_iterative.py (`python -m src.arguments README.md`). The stages take the groups
themselves as their options: a new flag is written once. eval_iterative.py's groups
(`EVAL_GROUPS`) and the benchmarks' options (benchmarks/__init__.py) are declared with the
same `flag()`, and reuse a training flag's declaration where they take that flag
(`flag_of`).

Groups: `RunArguments` (the run and its experiment directory), `ModelArguments`,
`DataArguments`, `MiningArguments`, `AugmentArguments` (new texts), and
`IterativeTrainingArguments`, the Trainer's own flags plus the contrastive loss's (a
`TrainingArguments` subclass, as Tevatron's). A `--config preset.json` may set any of
them; flags on the command line win. Every refusal is an `ArgumentError` naming the flag.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import json
import os
import sys
import typing
from dataclasses import dataclass, field
from functools import cache
from importlib import metadata
from pathlib import Path
from typing import Any

import torch
from accelerate.utils.environment import str_to_bool
from transformers import HfArgumentParser, TrainingArguments

from src.devices import bf16_capable
from src.errors import ArgumentError
from src.model.registry import BACKBONE_ALIASES, BACKBONES, DEFAULT_MAX_PIXELS, DEFAULT_MIN_PIXELS
from src.record_base import RecordError, parse_value

FOUNDATION_MODEL_BACKBONES = ("qwen2_vl", "qwen2_5_vl", "llava", "generic")
CAPTIONERS = (*FOUNDATION_MODEL_BACKBONES, "scene_oracle", "simulated_captioner", "none")
AUGMENT_SELECTIONS = ("failures", "file_order")  # src/augment/pairs.py says what each does
DEFAULT_LORA_TARGETS = "q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj"
PIXELS_PER_TOKEN = 28 * 28  # Qwen2-VL: 14 x 14 patches merged 2 x 2

# Metadata keys of `flag()` that are ours (the argparse parser must not see them).
# (Choices are checked by `check_flags`, not argparse, so that a preset's value and a
# flag's get the same one-line error.)
RESULTS, SINCE, AT_LEAST, ABOVE, AT_MOST, BELOW, ALLOWED, VALUE_ALIASES, POSITIONAL = (
    "results", "since", "at_least", "above", "at_most", "below", "allowed", "value_aliases",
    "positional",
)  # fmt: skip
_OURS = (RESULTS, SINCE, AT_LEAST, ABOVE, AT_MOST, BELOW, ALLOWED, VALUE_ALIASES, POSITIONAL)


def flag(
    default: Any,
    help: str,
    *,
    results: bool = True,
    at_least: float | None = None,
    above: float | None = None,
    at_most: float | None = None,
    below: float | None = None,
    choices: tuple | None = None,
    value_aliases: dict[str, str] | None = None,
    since: int = 1,
    positional: bool = False,
) -> Any:
    """A flag: its default, help and range, and whether it changes results.

    `choices` (and `value_aliases`) are appended to the help, from the same tuple
    `check_flags` checks against. `since`: the experiment-config version that added it; an experiment written before
    knows nothing of it, so the flag counts as a result only where it leaves its default
    (older experiments then resume unchanged). `value_aliases` map spellings users bring
    (`llava`) to the canonical value (`llava_next`). `positional`: given without its
    `--name` (a benchmark's folder argument); `dataclasses.MISSING` as its default makes it
    required. A list-typed flag (`nargs="+"`) is checked element by element.
    """
    if choices is not None:  # every accepted value in the help, from the list the check uses
        spelled = "".join(f"; {alias} is read as {value}" for alias, value in (value_aliases or {}).items())
        help = f"{help} Choices: {', '.join(map(str, choices))}{spelled}."
    meta: dict[str, Any] = {"help": help, RESULTS: results, SINCE: since}
    for key, value in ((AT_LEAST, at_least), (ABOVE, above), (AT_MOST, at_most), (BELOW, below)):
        if value is not None:
            meta[key] = value
    if choices is not None:
        meta[ALLOWED] = tuple(choices)
    if value_aliases:
        meta[VALUE_ALIASES] = value_aliases
    if positional:
        meta[POSITIONAL] = True
    return field(default=default, metadata=meta)


_THE_GROUPS = object()  # flag_of: the group's own default


def flag_of(group: type, name: str, *, default: Any = _THE_GROUPS) -> Any:
    """The flag `name` of `group` declared again, for another options class (a benchmark's
    `--lora_target_modules` is the training run's): its help, range and choices, and its
    default unless `default` is given, where the other script's default differs on purpose
    (a benchmark's larger images); one declaration says what the flag means."""
    item = next(item for item in dataclasses.fields(group) if item.name == name)
    return field(default=item.default if default is _THE_GROUPS else default, metadata=item.metadata)


def _refuse(name: str, value: object, rule: str) -> None:
    raise ArgumentError(f"--{name} {value!r}: {rule}")


def check_flags(group: object) -> None:
    """Each flag of `group` within its declared choices and range (None: not set)."""
    for item in dataclasses.fields(group):
        meta, value = item.metadata, getattr(group, item.name)
        if value is None or RESULTS not in meta:
            continue
        aliases = meta.get(VALUE_ALIASES, {})
        if not isinstance(value, list) and value in aliases:
            value = aliases[value]
            setattr(group, item.name, value)
        for each in value if isinstance(value, list) else [value]:
            _check_value(item.name, each, meta)


def _check_value(name: str, value: Any, meta: typing.Mapping) -> None:
    if ALLOWED in meta and value not in meta[ALLOWED]:
        _refuse(name, value, f"choose one of {', '.join(map(str, meta[ALLOWED]))}")
    if AT_LEAST in meta and value < meta[AT_LEAST]:
        _refuse(name, value, f"must be >= {meta[AT_LEAST]}")
    if ABOVE in meta and value <= meta[ABOVE]:
        _refuse(name, value, f"must be > {meta[ABOVE]}")
    if AT_MOST in meta and value > meta[AT_MOST]:
        _refuse(name, value, f"must be <= {meta[AT_MOST]}")
    if BELOW in meta and value >= meta[BELOW]:
        _refuse(name, value, f"must be < {meta[BELOW]}")


def check_attn_implementation(name: str) -> None:
    """flash_attention_2 only where the flash-attn package imports (a GPU install); also
    checked when an embedder saved with it is loaded elsewhere."""
    if name == "flash_attention_2" and importlib.util.find_spec("flash_attn") is None:
        _refuse(
            "attn_implementation",
            name,
            "needs the flash-attn package (pip install flash-attn, on a GPU machine); use sdpa",
        )


def _names(text: str) -> list[str]:
    return [name.strip() for name in text.split(",") if name.strip()]


# --fast_mode: what it sets, each only where that flag was not given (on the command line
# or in a preset): a flag given explicitly wins over the mode.
FAST_MODE = {"max_steps": 12, "max_train_samples": 200, "max_eval_samples": 100}
# ... and, with the offline benchmark (no --dataset_path), a small one
FAST_MODE_BENCHMARK = {"synthetic_train_images": 600, "synthetic_val_images": 300, "synthetic_test_images": 120}


@dataclass
class RunArguments:
    """The run itself: rounds, the experiment directory, resuming, reporting."""

    config: str | None = flag(None, "A JSON preset of any of these flags.", results=False)
    experiment_dir: str | None = flag(
        None, "Experiment directory. Default: experiments/{model}_{dataset}_iterative.", results=False
    )
    num_iterations: int = flag(
        3, "Rounds after round 0 (0 trains round 0 only).", results=False, at_least=0
    )
    skip_round0: bool = flag(False, "Use the given model as checkpoint_iter_0 without training it.")
    fast_mode: bool = flag(
        False,
        "A quick check: a small subset of the data and few steps ("
        + ", ".join(f"--{k} {v}" for k, v in FAST_MODE.items())
        + "; the offline benchmark at "
        + ", ".join(f"--{k} {v}" for k, v in FAST_MODE_BENCHMARK.items())
        + "; --save_steps half the steps), each only where that flag is not given.",
    )
    auto_resume: bool = flag(
        False, "Continue an existing experiment from its first unfinished stage.", results=False
    )
    resume_from_iteration: int | None = flag(
        None,
        "Move the artifacts of rounds N and later aside (kept) and rerun from round N.",
        results=False,
        at_least=0,
    )
    allow_config_change: bool = flag(
        False, "Resume even if result-changing arguments differ from the experiment's.", results=False
    )
    plan: bool = flag(
        False,
        "Print what the job will do (stages, sizes, memory, time where measured) and exit, "
        "without training or loading weights.",
        results=False,
    )
    no_report: bool = flag(
        False, "Do not write the HTML report (report/index.html) at the end of the run.", results=False
    )

    def __post_init__(self) -> None:
        check_flags(self)
        if self.resume_from_iteration is not None and self.resume_from_iteration > self.num_iterations:
            _refuse(
                "resume_from_iteration",
                self.resume_from_iteration,
                f"must be <= --num_iterations ({self.num_iterations})",
            )

    @property
    def resuming(self) -> bool:
        return self.auto_resume or self.resume_from_iteration is not None


@dataclass
class ReportArguments:
    """The HTML report (train_iterative.py writes it at the end; eval_iterative.py --report)."""

    report_queries: int = flag(
        24, "Validation queries the report shows per round (a fixed sample).", results=False, at_least=1
    )

    def __post_init__(self) -> None:
        check_flags(self)


@dataclass
class EncodeArguments:
    """How a checkpoint is encoded (mining, evaluation, the check of new texts, a query), for
    train_iterative.py and eval_iterative.py alike. Its result-changing flags are part of
    the embedding-cache key and of the evaluation's meta, from these declarations."""

    encode_batch_size: int = flag(
        64, "Batch size for encoding galleries and queries.", results=False, at_least=1
    )
    encode_max_pixels: int | None = flag(
        None,
        "Encode images at this pixel budget instead of each checkpoint's own (the one it was "
        "trained with), e.g. to evaluate at another budget.",
        at_least=PIXELS_PER_TOKEN,
        since=4,
    )
    encode_min_pixels: int | None = flag(
        None,
        "Smallest pixel count for encoding, instead of each checkpoint's own.",
        at_least=PIXELS_PER_TOKEN,
        since=4,
    )

    def __post_init__(self) -> None:
        check_flags(self)
        low, high = self.encode_min_pixels, self.encode_max_pixels
        if low and high and low > high:
            _refuse("encode_min_pixels", low, f"must be <= --encode_max_pixels ({high})")


@dataclass
class ModelArguments:
    """The embedder: which checkpoint, LoRA or full fine-tuning, precision, pixel budget."""

    model_name: str | None = flag(
        None,
        "Local path of the embedding model (a Hugging Face checkpoint or a saved "
        "checkpoint_iter_i). Default: the offline tiny Qwen2-VL, built once into --cache_dir.",
    )
    base_model_name: str | None = flag(
        None,
        "Local base model of a LoRA adapter given as --model_name (released VLM2Vec checkpoints "
        "are adapters on Qwen2-VL); default: the adapter's base_model_name_or_path.",
    )
    model_backbone: str | None = flag(
        None,
        "The embedder's architecture. Default: read from the checkpoint's config.",
        choices=tuple(BACKBONES),
        value_aliases=BACKBONE_ALIASES,
    )
    lora: bool = flag(False, "Train a LoRA adapter instead of all weights.")
    lora_r: int = flag(16, "LoRA rank.", at_least=1)
    lora_alpha: int = flag(32, "LoRA alpha.", above=0)
    lora_dropout: float = flag(0.05, "LoRA dropout, in [0, 1).", at_least=0, below=1)
    lora_target_modules: str = flag(
        DEFAULT_LORA_TARGETS,
        "Comma-separated module names (their last part) that get LoRA adapters; each must "
        "match linear layers of the model (checked before round 0).",
    )
    freeze_vision_tower: bool = flag(
        False,
        "Keep the vision tower as it is: no gradient for it in full fine-tuning, no LoRA "
        "adapters in it (Qwen2.5-VL's vision MLP and LLaVA's CLIP attention share the "
        "language model's module names).",
    )
    torch_dtype: str = flag(
        "auto",
        "The weights' dtype. auto: float32 for weights that full fine-tuning updates, with "
        "--bf16 autocast on a GPU; bfloat16 for a frozen LoRA base and inference on a GPU "
        "that has it; float32 on a CPU. bfloat16 and float16 with --lora only.",
        choices=("auto", "float32", "bfloat16", "float16"),
    )
    attn_implementation: str = flag(
        "sdpa",
        "The attention kernel: sdpa is PyTorch's fused attention; flash_attention_2 needs the "
        "flash-attn package (GPU only). Recorded in the embedder's config.",
        choices=("sdpa", "flash_attention_2", "eager"),
        since=2,
    )
    max_pixels: int | None = flag(
        None,
        f"Embedder pixel budget per image (Qwen2-VL / Qwen2.5-VL; one image token per 28 x 28 "
        f"pixels). Default: {DEFAULT_MAX_PIXELS:,} (448 x 448, 256 tokens) for a new embedder; "
        "a saved checkpoint keeps the budget it was trained with.",
        at_least=PIXELS_PER_TOKEN,
    )
    min_pixels: int | None = flag(
        None,
        f"Smallest pixel count an image is scaled up to. Default: {DEFAULT_MIN_PIXELS:,} (VLM2Vec's).",
        at_least=PIXELS_PER_TOKEN,
    )

    def __post_init__(self) -> None:
        check_flags(self)
        if self.min_pixels and self.max_pixels and self.min_pixels > self.max_pixels:
            _refuse("min_pixels", self.min_pixels, f"must be <= --max_pixels ({self.max_pixels})")
        if not self.lora_targets:
            _refuse("lora_target_modules", self.lora_target_modules, "name at least one module")
        check_attn_implementation(self.attn_implementation)
        if not self.lora and self.torch_dtype not in ("auto", "float32"):
            _refuse(
                "torch_dtype",
                self.torch_dtype,
                "full fine-tuning keeps float32 weights (AdamW on bfloat16 weights loses every "
                "update below a bfloat16 step); use --torch_dtype auto with --bf16 autocast, or --lora",
            )

    @property
    def lora_targets(self) -> list[str]:
        return _names(self.lora_target_modules)


@dataclass
class DataArguments:
    """The dataset, and the offline benchmark built when none is given."""

    dataset_name: str = flag(
        "cirr", "The dataset's annotation layout and instruction.", choices=("cirr", "fashioniq")
    )
    dataset_path: str | None = flag(
        None,
        "Root of the dataset on disk. Default: the synthetic CIRR-format benchmark, rendered "
        "once into --cache_dir.",
    )
    cache_dir: str = flag(
        ".cache/offline",
        "Where the offline default model and benchmark are built once, image checks are "
        "remembered and, by default, the image store lives.",
        results=False,
    )
    image_store: bool = flag(
        True,
        "Keep each image once, decoded and resized to the embedder's pixel budget (Qwen2-VL, "
        "Qwen2.5-VL), so later epochs, rounds and stages skip decoding and resizing; pixel "
        "values, and so results, are identical. --no_image_store decodes every image each time.",
        results=False,
    )
    image_store_dir: str | None = flag(
        None,
        "Where the image store lives (about 0.55 MB per image at 448 x 448; keyed by file and "
        "budget, so runs on the same images share it). Default: --cache_dir/image_store.",
        results=False,
    )
    synthetic_train_images: int = flag(
        7500, "Offline benchmark: train gallery size (six images per set).", at_least=6
    )
    synthetic_val_images: int = flag(
        3000, "Offline benchmark: validation gallery size (2,000 queries by default).", at_least=6
    )
    synthetic_test_images: int = flag(600, "Offline benchmark: test1 gallery size.", at_least=6)
    synthetic_triplets_per_set: int = flag(
        4, "Offline benchmark: triplets per image set of six (2 to 5).", at_least=2, at_most=5
    )
    image_size: int = flag(
        56, "Offline benchmark and tiny model: image side in pixels (a multiple of 28).", at_least=28
    )
    synthetic_domain: str = flag(
        "shapes",
        "Offline benchmark: shapes (coloured shapes on a grid) or garments (one garment per "
        "image, FashionIQ-like captions; never used for tuning).",
        choices=("shapes", "garments"),
        since=2,
    )
    max_train_samples: int | None = flag(
        None, "Use only the first N training triplets (a quick check).", at_least=1
    )
    max_eval_samples: int | None = flag(
        None,
        "Use only N validation triplets (a quick check); FashionIQ takes them from every "
        "category in turn.",
        at_least=1,
    )
    allow_external_images: bool = flag(
        False,
        "Accept image paths that leave the dataset root (after resolving .. and symlinks); "
        "refused by default.",
        results=False,
    )
    max_image_pixels: int = flag(
        50_000_000,
        "Refuse (before any work) an image with more pixels than this.",
        results=False,
        at_least=1,
    )
    max_caption_tokens: int = flag(
        128, "Truncate longer modification texts to this many tokens (counted in the log).", at_least=1
    )

    def __post_init__(self) -> None:
        check_flags(self)
        if self.image_size % 28:
            _refuse("image_size", self.image_size, "must be a multiple of 28 (the Qwen2-VL patch grid)")


@dataclass
class MiningArguments:
    """Hard negatives by real retrieval (src/retrieval/mining.py says how to choose them)."""

    hard_negative_k: int = flag(5, "Hard negatives mined per query.", at_least=1)
    mine_scope: str = flag(
        "all",
        "all: mine every query; failures: only queries whose target is not ranked first.",
        choices=("all", "failures"),
    )
    hard_negative_margin: float | None = flag(
        None,
        "Drop candidates scoring above margin x the target's score (a false-negative guard; "
        "0.95 to 0.99 is a common choice).",
        above=0,
    )
    hard_negative_skip_top: int = flag(0, "Skip the first N eligible ranks.", at_least=0)
    negative_source: str = flag(
        "mined",
        "mined: real retrieval; random: uniform gallery draws (a baseline, named as such).",
        choices=("mined", "random"),
    )
    mining_checkpoint: str = flag(
        "previous",
        "previous: mine again each round with checkpoint_iter_{i-1}; first: mine once with "
        "checkpoint_iter_0 and reuse those negatives every round (an ablation).",
        choices=("previous", "first"),
    )

    def __post_init__(self) -> None:
        check_flags(self)

    def checkpoint_for(self, iteration: int) -> int:
        """The checkpoint that mines the negatives round `iteration` trains with."""
        return iteration - 1 if self.mining_checkpoint == "previous" else 0


@dataclass
class AugmentArguments:
    """New modification texts for mined pairs: who writes them, how, and which are kept."""

    foundation_model_path: str | None = flag(
        None, "Local path of the foundation VLM that writes new modification texts."
    )
    foundation_model_backbone: str | None = flag(
        None,
        "Who writes the new texts: a foundation model's architecture (qwen2_vl, qwen2_5_vl, "
        "llava, generic: with --foundation_model_path), scene_oracle or simulated_captioner "
        "(synthetic benchmarks only), or none (no augmentation). Default: from "
        "--foundation_model_path's config; scene_oracle on the synthetic benchmark.",
        choices=CAPTIONERS,
    )
    foundation_batch_size: int = flag(8, "Pairs per generation batch.", results=False, at_least=1)
    foundation_max_pixels: int = flag(
        DEFAULT_MAX_PIXELS, "Pixel budget per image given to the foundation model.", at_least=56 * 56
    )
    prompt_mode: str = flag(
        "direct",
        "direct: answer with the new text; cot: reason first, then the text after a marker.",
        choices=("direct", "cot"),
    )
    max_new_tokens: int = flag(48, "Generation length limit (cot needs more).", at_least=1)
    do_sample: bool = flag(False, "Sample instead of greedy decoding.")
    generation_temperature: float = flag(0.7, "Sampling temperature (with --do_sample).", above=0)
    top_p: float = flag(0.9, "Nucleus sampling (with --do_sample), in (0, 1].", above=0, at_most=1)
    augment_pairs_per_query: int = flag(
        1,
        "Mined pairs per query that may get a new text (with --augment_selection failures: "
        "its highest-ranked failures; ReCALL: up to 5 of the top 10).",
        at_least=1,
    )
    augment_negatives: str = flag(
        "mined",
        "mined: new texts turn the reference into its mined hard negatives; random: into random "
        "gallery images instead, as many (an ablation).",
        choices=("mined", "random"),
    )
    augment_selection: str = flag(
        "failures",
        "Which mined pairs get a new text. failures: only pairs whose negative the model ranks "
        "above the target, at most --augment_pairs_per_query per query, ordered across all "
        "queries by the negative's score minus the target's (the most confidently wrong "
        "first); file_order: each query's first negatives in the mined file's order, failure "
        "or not (the earlier selection, an ablation).",
        choices=AUGMENT_SELECTIONS,
        since=3,
    )
    max_augmented_per_iteration: int = flag(
        1000,
        "Cap on (query, hard negative) pairs captioned per round: the first in "
        "--augment_selection's order (with failures, the hardest); 0: no cap.",
        at_least=0,
    )
    verify_augmented: bool = flag(
        False,
        "Keep a new triplet only if the current embedder ranks its target above the original "
        "target.",
    )
    consistency_filter: bool = flag(
        False,
        "Ask the foundation model yes/no questions about each new triplet; drops texts it "
        "rejects and flags mined false negatives.",
    )
    augmented_pool: str = flag(
        "current",
        "current: train round i on round i's new triplets; cumulative: on those of rounds 1..i.",
        choices=("current", "cumulative"),
    )
    augment_flush_every: int = flag(
        32,
        "Write the partial augmentation file every N generated pairs (a killed run resumes from it).",
        results=False,
        at_least=1,
    )
    # The simulated captioner (--foundation_model_backbone simulated_captioner; synthetic
    # benchmarks only). The defaults come from published measurements of vision-language
    # models; src/offline/caption_errors.py (DEFAULT_CAPTION_ERRORS) cites them and says how
    # they were mapped.
    simulated_wrong_value: float = flag(
        0.22, "Simulated captioner: P(a named change gets a wrong value).", at_least=0, at_most=1, since=2
    )
    simulated_missed_change: float = flag(
        0.03, "Simulated captioner: P(a change it should name is left out).", at_least=0, at_most=1, since=2
    )
    simulated_extra_change: float = flag(
        0.03, "Simulated captioner: P(it states a change that is not there).", at_least=0, at_most=1, since=2
    )
    simulated_reversed_direction: float = flag(
        0.01, "Simulated captioner: P(it describes target -> reference).", at_least=0, at_most=1, since=2
    )
    simulated_repeated_original: float = flag(
        0.01, "Simulated captioner: P(it repeats the original caption).", at_least=0, at_most=1, since=2
    )
    simulated_judge_false_yes: float = flag(
        0.43,
        "Simulated captioner's yes/no judge: P(yes to a text that does not describe the pair).",
        at_least=0,
        at_most=1,
        since=2,
    )
    simulated_judge_false_no: float = flag(
        0.0,
        "Simulated captioner's yes/no judge: P(no to a text that does describe the pair).",
        at_least=0,
        at_most=1,
        since=2,
    )
    simulated_max_named_changes: int = flag(
        2, "Simulated captioner: the most differences one text names (the most salient).", at_least=1, since=2
    )

    def __post_init__(self) -> None:
        check_flags(self)
        backbone, path = self.foundation_model_backbone, self.foundation_model_path
        if backbone in FOUNDATION_MODEL_BACKBONES and path is None:
            _refuse("foundation_model_backbone", backbone, "needs --foundation_model_path")
        if backbone is not None and backbone not in FOUNDATION_MODEL_BACKBONES and path is not None:
            raise ArgumentError(
                f"--foundation_model_backbone {backbone} uses no model, but --foundation_model_path "
                f"{path} is given; drop one of the two"
            )
        changed = [
            f"--{item.name}"
            for item in dataclasses.fields(self)
            if item.name.startswith("simulated_") and getattr(self, item.name) != item.default
        ]
        if changed and backbone != "simulated_captioner":
            raise ArgumentError(
                f"{', '.join(changed)} set the simulated captioner's rates, but it is not used: "
                "add --foundation_model_backbone simulated_captioner"
            )
        text_errors = sum(
            getattr(self, f"simulated_{kind}")
            for kind in ("wrong_value", "missed_change", "extra_change", "reversed_direction", "repeated_original")
        )
        if text_errors > 1:
            raise ArgumentError(f"the five --simulated_* text error rates sum to {text_errors:g}, above 1")

    def simulated_rates(self) -> dict:
        """The simulated captioner's flags, by its own names (src/offline/caption_errors.py)."""
        return {
            item.name.removeprefix("simulated_"): getattr(self, item.name)
            for item in dataclasses.fields(self)
            if item.name.startswith("simulated_")
        }

    @property
    def pair_cap(self) -> int | None:
        return self.max_augmented_per_iteration or None


# Why, in docs/notes.md ("DeepSpeed", "FSDP"): what was tried and what it did.
DDP_INSTEAD = (
    "run DDP with ./run_iterative_training.sh --nproc N (or accelerate launch --multi_gpu); "
    "--lora, --gradient_checkpointing and --grad_cache cut memory"
)
DEEPSPEED_REFUSAL = f"--deepspeed is not supported (docs/notes.md, DeepSpeed): drop it and {DDP_INSTEAD}"
# `accelerate launch` with a DeepSpeed or FSDP config exports these; transformers and
# accelerate then build the engine without any flag of ours (docs/notes.md).
ENGINE_ENVIRONMENT = {"ACCELERATE_USE_DEEPSPEED": "DeepSpeed", "ACCELERATE_USE_FSDP": "FSDP"}


def _switched_on(value: str) -> bool:
    """Whether accelerate reads an environment flag as on (a value it cannot read: on too,
    so that a typo never starts an engine silently)."""
    try:
        return bool(str_to_bool(value))
    except ValueError:
        return True


def check_engines(fsdp: object = None) -> None:
    """Refuse DeepSpeed and FSDP however they are asked for (the flag is checked by the
    caller for --deepspeed): --fsdp, or accelerate's environment flags. One line naming the
    engine, before transformers looks for its package."""
    for variable, engine in ENGINE_ENVIRONMENT.items():
        value = os.environ.get(variable)
        if value is not None and _switched_on(value):
            raise ArgumentError(
                f"{variable}={value} asks for {engine} (accelerate launch exports it from a "
                f"{engine} config), which is not supported (docs/notes.md, {engine}): unset it "
                f"or launch without that config, and {DDP_INSTEAD}"
            )
    if fsdp:
        raise ArgumentError(f"--fsdp is not supported (docs/notes.md, FSDP): drop it and {DDP_INSTEAD}")


# TrainingArguments flags that only change how a run is operated (our own flags say so in
# their metadata).
TRAINER_OPERATIONAL_FLAGS = frozenset(
    {
        "output_dir", "logging_dir", "logging_steps", "logging_first_step", "logging_strategy",
        "save_steps", "save_strategy", "save_total_limit", "disable_tqdm",
        "dataloader_num_workers", "dataloader_pin_memory", "dataloader_persistent_workers",
        "dataloader_prefetch_factor", "report_to", "run_name", "overwrite_output_dir",
        "resume_from_checkpoint", "log_level", "log_level_replica", "use_cpu", "ddp_backend",
        "ddp_find_unused_parameters",
    }
)  # fmt: skip


@dataclass
class IterativeTrainingArguments(TrainingArguments):
    """The Trainer's own flags, plus the contrastive loss's; ranges checked up front."""

    batch_size: int | None = flag(
        None, "Queries per device and step (sets --per_device_train_batch_size).", at_least=1
    )
    num_hard_negatives: int = flag(
        1,
        "Mined hard negatives per query in each training batch, rotated per epoch (0: in-batch "
        "negatives only).",
        at_least=0,
    )
    temperature: float = flag(
        0.02, "InfoNCE temperature (VLM2Vec's released training: 0.02).", above=0
    )
    grad_cache: bool = flag(
        False, "GradCache: run the model in chunks so the contrastive batch can exceed memory."
    )
    gc_mini_batch_size: int = flag(32, "Rows per chunk in --grad_cache mode.", at_least=1)
    group_by_reference: bool = flag(
        False, "Keep queries that share a reference image in the same batch (ReCALL grouping)."
    )
    group_loss_weight: float = flag(
        0.0, "Weight of the intra-group contrastive term (with --group_by_reference).", at_least=0
    )
    triplet_loss_weight: float = flag(
        0.0,
        "Weight of the triplet term beside InfoNCE: each query's positive must score "
        "--triplet_margin above each of its hard negatives and the positives of the other "
        "queries of its reference group (ReCALL's refinement: 0.25 here is its 0.2 : 0.8).",
        at_least=0,
        since=3,
    )
    triplet_margin: float = flag(
        0.05, "Margin of the triplet term, in cosine similarity (ReCALL: 0.05).", at_least=0, since=3
    )

    def __post_init__(self) -> None:
        check_flags(self)
        if self.deepspeed is not None:  # before transformers looks for the package
            raise ArgumentError(DEEPSPEED_REFUSAL)
        check_engines(self.fsdp)
        if self.batch_size is not None:
            self.per_device_train_batch_size = self.batch_size
        super().__post_init__()
        if self.learning_rate <= 0:
            _refuse("learning_rate", self.learning_rate, "must be > 0")
        for name in ("per_device_train_batch_size", "gradient_accumulation_steps"):
            if getattr(self, name) < 1:
                _refuse(name, getattr(self, name), "must be >= 1")
        if self.max_steps <= 0 and self.num_train_epochs <= 0:
            _refuse("num_train_epochs", self.num_train_epochs, "must be > 0 (or set --max_steps)")
        for name in ("warmup_steps", "weight_decay"):
            if getattr(self, name) < 0:
                _refuse(name, getattr(self, name), "must be >= 0")
        if self.group_loss_weight and not self.group_by_reference:
            _refuse(
                "group_loss_weight",
                self.group_loss_weight,
                "needs --group_by_reference (the term contrasts queries of one reference group)",
            )


GROUPS = (
    RunArguments,
    ReportArguments,
    EncodeArguments,
    ModelArguments,
    DataArguments,
    MiningArguments,
    AugmentArguments,
    IterativeTrainingArguments,
)
# Our own groups (the Trainer's is a TrainingArguments: its fields are transformers').
FLAG_GROUPS = GROUPS[:-1]


def is_flag(item: dataclasses.Field) -> bool:
    """Whether a field is one of our flags (declared by `flag()`), not a Trainer field."""
    return RESULTS in item.metadata


@cache
def _type_hints(group: type) -> dict:
    return typing.get_type_hints(group)


def declared_type(group: type, item: dataclasses.Field) -> object:
    """The type a flag of `group` is declared with (`int | None`, ...)."""
    return _type_hints(group)[item.name]

EXPORT_DTYPES = ("float32", "bfloat16", "float16")


@dataclass
class UseArguments:
    """eval_iterative.py: use a trained round (--iterations N, default the last evaluated):
    export it as a standalone model, ask it a query, hand over a gallery's embeddings. Not
    a training flag group: these only read an experiment (and write where they are told)."""

    export: str | None = flag(
        None,
        "Write the round as a standalone model into this new or empty folder: LoRA merged, "
        "processor, embedder settings and a model card (README.md).",
        results=False,
    )
    export_dtype: str = flag(
        "float32",
        "Weights' dtype of --export (merged in float32 first).",
        results=False,
        choices=EXPORT_DTYPES,
    )
    query_image: str | None = flag(
        None, "Reference image of a query (with --query_text); prints the top --top_k.", results=False
    )
    query_text: str | None = flag(None, "Modification text of the query.", results=False)
    gallery: str = flag(
        "val",
        "What --query_image and --export_index rank: a split of the experiment's dataset "
        "(train, val, test1) or a folder of images (./val for a folder named val).",
        results=False,
    )
    top_k: int = flag(10, "Results a query prints.", results=False, at_least=1)
    export_index: str | None = flag(
        None,
        "Write the gallery's embeddings (embeddings.npy), image names (names.json) and the "
        "settings they were made with (settings.json) into this new or empty folder.",
        results=False,
    )

    def __post_init__(self) -> None:
        check_flags(self)

    @property
    def requested(self) -> bool:
        """Whether any of these was asked for (otherwise eval_iterative.py evaluates)."""
        return any(
            value is not None
            for value in (self.export, self.query_image, self.query_text, self.export_index)
        )


@dataclass
class Flags:
    """Every flag of a run, by group; `given`: the flags set on the command line or in a
    `--config` preset (a mode never overrides them)."""

    run: RunArguments
    report: ReportArguments
    encode: EncodeArguments
    model: ModelArguments
    data: DataArguments
    mining: MiningArguments
    augment: AugmentArguments
    training: IterativeTrainingArguments
    given: frozenset[str] = frozenset()

    def groups(self) -> tuple:
        return tuple(getattr(self, item.name) for item in dataclasses.fields(self) if item.name != "given")

    def as_dict(self) -> dict:
        """Every flag by name (the Trainer's too), as experiment_config.json records them."""
        values = {}
        for group in self.groups()[:-1]:
            values.update(dataclasses.asdict(group))
        values.update(self.training.to_dict())
        return values


def _declared_flags() -> dict[str, dataclasses.Field]:
    return {
        item.name: item
        for group in GROUPS
        for item in dataclasses.fields(group)
        if RESULTS in item.metadata
    }


def result_options(*groups: object, leave_out: tuple[str, ...] = ()) -> dict:
    """The result-changing flags of these flag-group instances, by their own declarations
    (a flag added to a group, in a subclass too, is in; one added since version 1 only
    where it leaves its default), sorted by name."""
    kept = {}
    for group in groups:
        for item in dataclasses.fields(group):
            if not is_flag(item) or not item.metadata[RESULTS] or item.name in leave_out:
                continue
            value = getattr(group, item.name)
            if item.metadata[SINCE] == 1 or value != item.default:
                kept[item.name] = value
    return dict(sorted(kept.items()))


def _as_json(value: object) -> object:
    return json.loads(json.dumps(value, default=str))


@cache
def trainer_defaults() -> dict:
    """The Trainer's result-changing fields as a run with no flags has them (the project's
    choices, `default_training_arguments`, over transformers' defaults), as JSON."""
    values = parse_arguments([]).training.to_dict()
    ours = {item.name for item in dataclasses.fields(IterativeTrainingArguments) if is_flag(item)}
    return {
        key: _as_json(value)
        for key, value in values.items()
        if key not in ours and key not in TRAINER_OPERATIONAL_FLAGS
    }


def result_config(arguments: dict, group: type | None = None, defaults: dict | None = None) -> dict:
    """The arguments that change results (those a resume must not silently change).

    Our flags say so in their metadata; a flag added after an experiment was written
    counts only where it leaves its default. Of the Trainer's fields, all but
    TRAINER_OPERATIONAL_FLAGS, each only where it differs from its default: `defaults`,
    the Trainer defaults an experiment recorded when it started, else today's
    (`trainer_defaults`), so a field a newer transformers adds, or one whose default
    changed since, does not stop an older experiment. With `group`, only that group's flags.
    """
    declared = _declared_flags()
    own = {item.name for item in dataclasses.fields(group)} if group is not None else None
    defaults = trainer_defaults() if defaults is None else defaults
    kept = {}
    for key, value in sorted(arguments.items()):
        item = declared.get(key)
        if own is not None and key not in own:
            continue
        if item is None:
            at_default = key in defaults and _as_json(value) == defaults[key]
            if key not in TRAINER_OPERATIONAL_FLAGS and not at_default:
                kept[key] = value
        elif item.metadata[RESULTS] and (item.metadata[SINCE] == 1 or value != item.default):
            kept[key] = value
    return kept


def default_training_arguments() -> dict:
    """Trainer defaults that suit this project (any of them can be overridden by flag)."""
    several_cpu_processes = not torch.cuda.is_available() and int(os.environ.get("WORLD_SIZE", "1")) > 1
    return {
        "output_dir": "experiments/_trainer",
        "per_device_train_batch_size": 32,
        "learning_rate": 3e-4,
        "num_train_epochs": 1.0,
        "lr_scheduler_type": "constant_with_warmup",
        "warmup_steps": 10,
        "logging_steps": 10,
        "save_strategy": "steps",
        "save_steps": 50,
        "save_total_limit": 2,
        "remove_unused_columns": False,
        # Every round's curves in one place people already use, when it is installed.
        "report_to": "tensorboard" if importlib.util.find_spec("tensorboard") else "none",
        # Workers overlap image preprocessing with a GPU's forward: at the 2B shape's budget one
        # worker prepares ~24 CIRR-size images/s (docs/results.md, "Encoding"), far below what a
        # GPU encodes, so up to 8. On a CPU-only machine they compete with the forward for the
        # same cores (benchmarks/bench_retrieval.py: slower), so none.
        "dataloader_num_workers": min(8, os.cpu_count() or 1) if torch.cuda.is_available() else 0,
        "seed": 0,
        "disable_tqdm": False,
        "dataloader_pin_memory": torch.cuda.is_available(),
        # Mixed precision where the GPU has fast bfloat16: autocast over float32 weights for
        # full fine-tuning, over a bfloat16 base for LoRA (src/model/encoder.py resolve_dtype).
        # None: decided by `resolve_bf16` once this process's GPU is set (its own capability).
        "bf16": None,
        # Without a GPU, accelerate sets up several torchrun processes as one unless told to
        # use the CPU (then gloo): each would train on its own, without DDP (docs/notes.md).
        "use_cpu": not torch.cuda.is_available(),
        "ddp_backend": "gloo" if several_cpu_processes else None,
    }


def resolve_bf16(args: TrainingArguments) -> str | None:
    """Settle --bf16 on this process's own device, after the device is set up.

    Not given (None): on where the GPU runs bfloat16 natively (compute capability >= 8.0,
    src/devices.py), off elsewhere. Given on a GPU without it (V100, T4: emulated, slower
    than float32): turned off. Returns the one line said when it falls back (None if not).
    """
    device = args.device  # sets up the process group and this process's GPU (set_device)
    on_gpu = device.type == "cuda"
    capable = on_gpu and bf16_capable(device)
    asked, fallback = args.bf16, None
    if on_gpu and not capable and (asked or asked is None):
        major, minor = torch.cuda.get_device_capability(device)
        fallback = (
            f"{torch.cuda.get_device_name(device)} (compute capability {major}.{minor}) has no "
            "native bfloat16: training in float32 (--bf16 off; bfloat16 needs 8.0 or later)"
        )
    args.bf16 = bool(capable if asked is None else asked and (capable or not on_gpu))
    if args.bf16:
        args.mixed_precision = "bf16"
    elif args.mixed_precision == "bf16":  # as TrainingArguments.__post_init__ set it
        args.mixed_precision = "fp16" if args.fp16 else "no"
    return fallback


class FlagParser(HfArgumentParser):
    """HfArgumentParser over flag groups; our metadata keys are kept from argparse.

    A `positional` flag is added without its `--` (and without its `--a-b` spelling), and
    after one (it is declared first: it has no default) a switch takes no value, so that
    `--resummarise FOLDER` reads FOLDER as the positional rather than as the switch's
    `true` / `false`."""

    def __init__(self, groups: tuple[type, ...] = GROUPS, **kwargs) -> None:
        super().__init__(groups, **kwargs)

    def add_argument(self, *args, **kwargs):
        if kwargs.get(POSITIONAL):
            args = (args[0].removeprefix("--"),)
            kwargs.pop("required", None)  # argparse: a positional is required by being one
        elif kwargs.get("const") is True and any(not action.option_strings for action in self._actions):
            for key in ("type", "nargs", "const"):
                del kwargs[key]
            kwargs["action"] = "store_true"
        for key in _OURS:
            kwargs.pop(key, None)
        return super().add_argument(*args, **kwargs)


def _field_of(name: str, groups: tuple[type, ...] = GROUPS) -> tuple[type, dataclasses.Field] | None:
    for group in groups:
        for item in dataclasses.fields(group):
            if item.name == name:
                return group, item
    return None


def check_preset_types(preset: dict, source: str) -> None:
    """Each preset value of the type its flag (or Trainer field) is declared with."""
    for key, value in preset.items():
        group, item = _field_of(key)
        try:
            parse_value(declared_type(group, item), value, source, key)
        except RecordError as error:
            raise ArgumentError(str(error)) from None
        except TypeError:  # a Trainer field typed beyond JSON's types: transformers checks it
            continue


def read_preset(path: str) -> dict:
    """A `--config` preset: a JSON object of known flag names, each of its declared type."""
    config_path = Path(path)
    if not config_path.is_file():
        raise ArgumentError(f"--config {config_path}: no such file")
    try:
        preset = json.loads(config_path.read_text())
    except json.JSONDecodeError as error:
        raise ArgumentError(
            f"--config {config_path}: invalid JSON at line {error.lineno}, column {error.colno}: "
            f"{error.msg}"
        ) from None
    if not isinstance(preset, dict):
        raise ArgumentError(f"--config {config_path}: the top level must be a JSON object of flags")
    unknown = sorted(key for key in preset if _field_of(key) is None)
    if unknown:
        raise ArgumentError(f"--config {config_path}: unknown keys {unknown}")
    check_preset_types(preset, f"--config {config_path}")
    return preset


def fast_mode_defaults(flags: Flags, given: frozenset[str]) -> dict:
    """The values --fast_mode gives the flags that were not given; `save_steps`: half the
    steps (at least 1), so a quick run still saves a mid-round checkpoint."""
    values = dict(FAST_MODE)
    if flags.data.dataset_path is None:
        values |= FAST_MODE_BENCHMARK
    steps = flags.training.max_steps if "max_steps" in given else values["max_steps"]
    if steps > 0:
        values["save_steps"] = max(1, steps // 2)
    return {key: value for key, value in values.items() if key not in given}


def given_values(argv: list[str], groups: tuple[type, ...] = GROUPS) -> dict[str, object]:
    """The flags `argv` sets, with their values (whatever their spelling: --x, --x=1, --no_x,
    a prefix)."""
    quiet = FlagParser(groups, add_help=False)
    for action in quiet._actions:  # not given: absent from the namespace
        action.default = argparse.SUPPRESS
    namespace, _ = quiet.parse_known_args(argv)
    return vars(namespace)


def _parse(argv: list[str], preset: dict, mode: dict | None = None) -> Flags:
    """The flags of `argv`, over the preset's values, over a mode's, over the defaults."""
    parser = FlagParser()
    parser.set_defaults(**default_training_arguments())
    parser.set_defaults(**(mode or {}))
    parser.set_defaults(**preset)
    try:
        groups = parser.parse_args_into_dataclasses(args=argv)
    except ArgumentError:
        raise
    except ValueError as error:  # the Trainer's own flag checks (TrainingArguments.__post_init__)
        raise ArgumentError(str(error)) from None
    except metadata.PackageNotFoundError as error:
        raise ArgumentError(f"a flag needs a package that is not installed: {error}") from None
    return Flags(*groups)


def parse_arguments(argv: list[str] | None = None) -> Flags:
    """Parse flags; `--config FILE` (or `--config=FILE`) supplies values that flags on the
    command line override; `--fast_mode` fills in only the flags neither gave."""
    argv = list(sys.argv[1:] if argv is None else argv)
    preset_reader = argparse.ArgumentParser(add_help=False)
    preset_reader.add_argument("--config")
    path = preset_reader.parse_known_args(argv)[0].config
    preset = read_preset(path) if path is not None else {}
    explicit = preset | given_values(argv)
    given = frozenset(explicit)
    batch, per_device = explicit.get("batch_size"), explicit.get("per_device_train_batch_size")
    if None not in (batch, per_device) and batch != per_device:
        _refuse("per_device_train_batch_size", per_device, f"--batch_size {batch} sets it too; give one of the two")
    flags = _parse(argv, preset)
    if flags.run.fast_mode:
        flags = _parse(argv, preset, fast_mode_defaults(flags, given))
    return dataclasses.replace(flags, given=given)


def preset_repeats(preset: dict) -> list[str]:
    """The keys of a preset that change nothing: without them, the run's flags are the same
    (a key that only repeats a default). A key the others need (a checkpoint path beside
    its backbone) is not one."""
    whole = _parse([], preset).as_dict()

    def repeats(key: str) -> bool:
        try:
            return _parse([], {k: v for k, v in preset.items() if k != key}).as_dict() == whole
        except ArgumentError:
            return False

    return [key for key in preset if repeats(key)]


# ---------------------------------------------------------------- eval_iterative.py

EVAL_DATASETS = {
    "cirr_val": ("cirr", "val"),
    "cirr_test": ("cirr", "test1"),
    "fashioniq_val": ("fashioniq", "val"),
}


@dataclass
class EvalArguments:
    """eval_iterative.py: which experiment, split and rounds, and where the results go."""

    experiment_dir: str | None = flag(
        None,
        "The experiment directory (with --report: or a folder of experiments). Required.",
        results=False,
    )
    eval_dataset: str = flag(
        "cirr_val",
        "The split to evaluate (the synthetic benchmark answers to the cirr_* names); cirr_test "
        "writes the two CIRR submission files instead of metrics.",
        results=False,
        choices=tuple(EVAL_DATASETS),
    )
    iterations: str | None = flag(
        None,
        'Comma-separated rounds, e.g. "1,3,5". Default: every finished checkpoint. With '
        "--export, --query_image or --export_index: one round, default the last evaluated.",
        results=False,
    )
    dataset_path: str | None = flag(None, "Dataset root. Default: the experiment's own.", results=False)
    output_file: str | None = flag(
        None,
        "Results JSON to update. Default: evaluation_results.json in the experiment. With "
        "--query_image: the ranking as JSON, and its page beside it (.html).",
        results=False,
    )
    report: bool = flag(
        False,
        "Write the HTML report (report/index.html) of the experiment, or of a folder of "
        "experiments (an ablation: one column per experiment).",
        results=False,
    )
    debug: bool = flag(False, "Show the traceback of a user error (also CIR_DEBUG=1).", results=False)

    def __post_init__(self) -> None:
        check_flags(self)
        if self.experiment_dir is None:
            raise ArgumentError("--experiment_dir is required")


EVAL_GROUPS = (EvalArguments, ReportArguments, EncodeArguments, UseArguments)
# eval_iterative.py's earlier spellings of the encoding flags (EncodeArguments)
EVAL_SPELLINGS = {
    "--batch_size": "--encode_batch_size",
    "--max_pixels": "--encode_max_pixels",
    "--min_pixels": "--encode_min_pixels",
}
EVAL_DESCRIPTION = (
    "Evaluate the checkpoints of an iterative experiment, or use one round: export it "
    "(--export), ask it a query (--query_image, --query_text), write a gallery index "
    "(--export_index)."
)


@dataclass
class EvalFlags:
    """Every flag of eval_iterative.py, by group (the report's and the encoding's are the
    training run's own groups)."""

    eval: EvalArguments
    report: ReportArguments
    encode: EncodeArguments
    use: UseArguments


def _respell(item: str) -> str:
    name, equals, value = item.partition("=")
    return EVAL_SPELLINGS.get(name, name) + equals + value


def eval_parser() -> FlagParser:
    return FlagParser(EVAL_GROUPS, description=EVAL_DESCRIPTION)


def parse_eval_arguments(argv: list[str]) -> EvalFlags:
    """eval_iterative.py's flags, from the same declarations as the training run's."""
    try:
        groups = eval_parser().parse_args_into_dataclasses(args=[_respell(item) for item in argv])
    except ArgumentError:
        raise
    except ValueError as error:  # an unknown flag
        raise ArgumentError(str(error)) from None
    return EvalFlags(*groups)


def flag_table(groups: tuple[type, ...], spellings: dict[str, str] | None = None) -> str:
    """A README flag table of `groups`, from the flags' metadata (`python -m src.arguments`);
    `spellings`: a flag's earlier spellings (`--batch_size` for `--encode_batch_size`), named
    beside it. A flag two scripts share reads the same in both tables: one declaration."""
    earlier: dict[str, list[str]] = {}
    for old, new in (spellings or {}).items():
        earlier.setdefault(new, []).append(old)
    lines = ["| flag | default | changes results | meaning |", "|---|---|---|---|"]
    for group in groups:
        for item in dataclasses.fields(group):
            if RESULTS not in item.metadata:
                continue
            name = f"`--{item.name}`"
            if f"--{item.name}" in earlier:
                name += " (or " + ", ".join(f"`{old}`" for old in earlier[f"--{item.name}"]) + ")"
            default = "-" if item.default is None else f"`{item.default}`"
            changes = "yes" if item.metadata[RESULTS] else "no"
            text = " ".join(item.metadata["help"].split()).replace("|", "\\|")
            lines.append(f"| {name} | {default} | {changes} | {text} |")
    return "\n".join(lines)


# The README's generated tables: each script's flag groups (and earlier spellings).
FLAG_TABLES = {
    "train_iterative.py": (GROUPS, None),
    "eval_iterative.py": (EVAL_GROUPS, EVAL_SPELLINGS),
}


def flag_table_markers(script: str) -> tuple[str, str]:
    """The README's markers around the flag table of `script`."""
    return (
        f"<!-- flag table of {script}: python -m src.arguments README.md -->\n",
        f"\n<!-- end of the flag table of {script} -->",
    )


def with_flag_tables(readme: str) -> str:
    """`readme` with the text between each script's flag-table markers replaced by its
    flag_table()."""
    for script, (groups, spellings) in FLAG_TABLES.items():
        start, end = flag_table_markers(script)
        before, rest = readme.split(start)
        readme = before + start + flag_table(groups, spellings) + end + rest.split(end)[1]
    return readme


if __name__ == "__main__":
    # python -m src.arguments            print the tables
    # python -m src.arguments README.md  rewrite the tables in that file
    if len(sys.argv) > 1:
        readme_path = Path(sys.argv[1])
        readme_path.write_text(with_flag_tables(readme_path.read_text()))
    else:
        for script, (groups, spellings) in FLAG_TABLES.items():
            print(f"{script}\n\n{flag_table(groups, spellings)}\n")
