"""Every command-line flag, as dataclasses parsed by HfArgumentParser, each checking itself.

A `--config preset.json` may set any field; flags given on the command line win over it.
Each dataclass refuses a bad value of its own fields in `__post_init__` (which runs for
command-line flags and preset values alike), and `check_together` refuses flags that do
not go together; the stages then assume valid options. Every refusal is an
`ArgumentError` that names the flag.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import os
import sys
import typing
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Literal

import torch
from transformers import HfArgumentParser, TrainingArguments

from src.errors import ArgumentError

MODEL_BACKBONES = ("qwen2_vl", "qwen2_5_vl", "llava_next")
FOUNDATION_MODEL_BACKBONES = ("qwen2_vl", "qwen2_5_vl", "llava", "generic")
CAPTIONERS = (*FOUNDATION_MODEL_BACKBONES, "scene_oracle", "none")
DEFAULT_LORA_TARGETS = "q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj"
MIN_FOUNDATION_PIXELS = 56 * 56
PIXELS_PER_TOKEN = 28 * 28  # Qwen2-VL: 14 x 14 patches merged 2 x 2


def _require(condition: bool, flag: str, value: object, rule: str) -> None:
    if not condition:
        raise ArgumentError(f"--{flag} {value!r}: {rule}")


def _check_literals(instance: object) -> None:
    """Literal-typed fields hold one of their values (argparse checks only the command line)."""
    hints = typing.get_type_hints(type(instance))
    for item in dataclasses.fields(instance):
        allowed = typing.get_args(hints[item.name])
        if typing.get_origin(hints[item.name]) is Literal:
            value = getattr(instance, item.name)
            _require(value in allowed, item.name, value, f"choose one of {', '.join(allowed)}")


def _at_least(instance: object, minimum: float, *names: str, optional: bool = False) -> None:
    for name in names:
        value = getattr(instance, name)
        if optional and value is None:
            continue
        _require(value is not None and value >= minimum, name, value, f"must be >= {minimum}")


def _split_names(text: str) -> list[str]:
    return [name.strip() for name in text.split(",") if name.strip()]


@dataclass
class ModelArguments:
    model_name: str | None = field(
        default=None,
        metadata={
            "help": "Local path of the embedding model (a Hugging Face checkpoint or a saved "
            "checkpoint_iter_i). Default: the offline tiny Qwen2-VL, built once into --cache_dir."
        },
    )
    base_model_name: str | None = field(
        default=None,
        metadata={
            "help": "Local base model of a LoRA adapter given as --model_name (released VLM2Vec "
            "checkpoints are adapters on Qwen2-VL); default: the adapter's base_model_name_or_path."
        },
    )
    model_backbone: str | None = field(
        default=None,
        metadata={
            "help": "qwen2_vl, qwen2_5_vl or llava_next. Default: read from the checkpoint's config."
        },
    )
    lora: bool = field(
        default=False, metadata={"help": "Train a LoRA adapter instead of all weights."}
    )
    lora_r: int = field(default=16, metadata={"help": "LoRA rank."})
    lora_alpha: int = field(default=32, metadata={"help": "LoRA alpha."})
    lora_dropout: float = field(default=0.05, metadata={"help": "LoRA dropout."})
    lora_target_modules: str = field(
        default=DEFAULT_LORA_TARGETS,
        metadata={
            "help": "Comma-separated module names (their last part) that get LoRA adapters; "
            "each must match linear layers of the model."
        },
    )
    freeze_vision_tower: bool = field(
        default=False,
        metadata={
            "help": "Keep the vision tower as it is: no gradient for it in full fine-tuning, no "
            "LoRA adapters in it (Qwen2.5-VL's vision MLP and LLaVA's CLIP attention share "
            "the language model's module names)."
        },
    )
    temperature: float = field(
        default=0.02, metadata={"help": "InfoNCE temperature (VLM2Vec's released training: 0.02)."}
    )
    torch_dtype: Literal["auto", "float32", "bfloat16", "float16"] = field(
        default="auto",
        metadata={
            "help": "auto (bfloat16 on a GPU that supports it, else float32), float32, bfloat16, float16."
        },
    )
    max_pixels: int | None = field(
        default=None,
        metadata={
            "help": "Embedder pixel budget per image (Qwen2-VL / Qwen2.5-VL; one image token per "
            "28 x 28 pixels). Default: 448 x 448 = 200,704 (256 tokens) for a new embedder; a "
            "saved checkpoint keeps the budget it was trained with."
        },
    )
    min_pixels: int | None = field(
        default=None,
        metadata={"help": "Smallest pixel count an image is scaled up to. Default: 3,136 (VLM2Vec's)."},
    )

    def __post_init__(self) -> None:
        _check_literals(self)
        _at_least(self, PIXELS_PER_TOKEN, "max_pixels", "min_pixels", optional=True)
        if self.min_pixels and self.max_pixels:
            _require(
                self.min_pixels <= self.max_pixels,
                "min_pixels",
                self.min_pixels,
                f"must be <= --max_pixels ({self.max_pixels})",
            )
        if self.model_backbone is not None:
            _require(
                self.model_backbone in MODEL_BACKBONES,
                "model_backbone",
                self.model_backbone,
                f"choose one of {', '.join(MODEL_BACKBONES)}",
            )
        _at_least(self, 1, "lora_r")
        _require(self.lora_alpha > 0, "lora_alpha", self.lora_alpha, "must be > 0")
        _require(0 <= self.lora_dropout < 1, "lora_dropout", self.lora_dropout, "must be in [0, 1)")
        _require(
            bool(_split_names(self.lora_target_modules)),
            "lora_target_modules",
            self.lora_target_modules,
            "name at least one module",
        )
        _require(self.temperature > 0, "temperature", self.temperature, "must be > 0")

    @property
    def lora_target_list(self) -> list[str]:
        return _split_names(self.lora_target_modules)


@dataclass
class DataArguments:
    dataset_name: Literal["cirr", "fashioniq"] = field(
        default="cirr", metadata={"help": "cirr or fashioniq (annotation layout and instruction)."}
    )
    dataset_path: str | None = field(
        default=None,
        metadata={
            "help": "Root of the dataset on disk. Default: the synthetic CIRR-format benchmark, "
            "rendered once into --cache_dir."
        },
    )
    cache_dir: str = field(
        default=".cache/offline",
        metadata={
            "help": "Where the offline default model and benchmark are built once and reused."
        },
    )
    synthetic_train_images: int = field(
        default=7500,
        metadata={"help": "Offline benchmark: train gallery size (4 triplets per 6 images)."},
    )
    synthetic_val_images: int = field(
        default=3000,
        metadata={"help": "Offline benchmark: validation gallery size (2,000 queries by default)."},
    )
    synthetic_test_images: int = field(
        default=600, metadata={"help": "Offline benchmark: test1 gallery size."}
    )
    synthetic_triplets_per_set: int = field(
        default=4,
        metadata={"help": "Offline benchmark: triplets per image set of six (2 to 5)."},
    )
    image_size: int = field(
        default=56, metadata={"help": "Offline benchmark and tiny model: image side in pixels."}
    )
    max_train_samples: int | None = field(
        default=None, metadata={"help": "Use only the first N training triplets (a quick check)."}
    )
    max_eval_samples: int | None = field(
        default=None,
        metadata={
            "help": "Use only N validation triplets (a quick check); FashionIQ takes them from "
            "every category in turn."
        },
    )
    allow_external_images: bool = field(
        default=False,
        metadata={
            "help": "Accept image paths that leave the dataset root (after resolving .. and "
            "symlinks); refused by default."
        },
    )
    max_image_pixels: int = field(
        default=50_000_000,
        metadata={"help": "Refuse (before any work) an image with more pixels than this."},
    )
    max_caption_tokens: int = field(
        default=128,
        metadata={"help": "Truncate longer modification texts to this many tokens (counted in the log)."},
    )

    def __post_init__(self) -> None:
        _check_literals(self)
        _at_least(self, 1, "max_image_pixels", "max_caption_tokens")
        _at_least(self, 6, "synthetic_train_images", "synthetic_val_images", "synthetic_test_images")
        _require(
            2 <= self.synthetic_triplets_per_set <= 5,
            "synthetic_triplets_per_set",
            self.synthetic_triplets_per_set,
            "must be 2 to 5",
        )
        _require(
            self.image_size > 0 and self.image_size % 28 == 0,
            "image_size",
            self.image_size,
            "must be a positive multiple of 28 (the Qwen2-VL patch grid)",
        )
        _at_least(self, 1, "max_train_samples", "max_eval_samples", optional=True)


@dataclass
class IterativeArguments:
    config: str | None = field(
        default=None, metadata={"help": "A JSON preset of any of these flags."}
    )
    experiment_dir: str | None = field(
        default=None,
        metadata={
            "help": "Experiment directory. Default: experiments/{model}_{dataset}_iterative."
        },
    )
    num_iterations: int = field(
        default=3, metadata={"help": "Rounds after round 0 (0 trains round 0 only)."}
    )
    skip_round0: bool = field(
        default=False,
        metadata={"help": "Use the given model as checkpoint_iter_0 without training it."},
    )
    batch_size: int | None = field(
        default=None,
        metadata={"help": "Queries per device and step (sets --per_device_train_batch_size)."},
    )
    num_hard_negatives: int = field(
        default=1, metadata={"help": "Mined hard negatives per query in each training batch."}
    )
    grad_cache: bool = field(
        default=False,
        metadata={
            "help": "GradCache: run the model in chunks so the contrastive batch can exceed memory."
        },
    )
    gc_mini_batch_size: int = field(
        default=32, metadata={"help": "Rows per chunk in --grad_cache mode."}
    )
    group_by_reference: bool = field(
        default=False,
        metadata={
            "help": "Keep queries that share a reference image in the same batch (ReCALL grouping)."
        },
    )
    group_loss_weight: float = field(
        default=0.0,
        metadata={
            "help": "Weight of the intra-group contrastive term (with --group_by_reference)."
        },
    )
    fast_mode: bool = field(
        default=False, metadata={"help": "A quick check: a small subset of the data and few steps."}
    )
    auto_resume: bool = field(
        default=False,
        metadata={"help": "Continue an existing experiment from its first unfinished stage."},
    )
    resume_from_iteration: int | None = field(
        default=None,
        metadata={
            "help": "Move the artifacts of rounds N and later aside (kept) and rerun from round N."
        },
    )
    allow_config_change: bool = field(
        default=False,
        metadata={"help": "Resume even if result-changing arguments differ from the experiment's."},
    )
    no_report: bool = field(
        default=False,
        metadata={"help": "Do not write the HTML report (report/index.html) at the end of the run."},
    )
    report_queries: int = field(
        default=24, metadata={"help": "Validation queries the report shows per round (a fixed sample)."}
    )
    plan: bool = field(
        default=False,
        metadata={
            "help": "Print what the job will do (stages, sizes, memory, time where measured) "
            "and exit, without training or loading weights."
        },
    )
    encode_batch_size: int = field(
        default=64, metadata={"help": "Batch size for encoding galleries and queries."}
    )
    hard_negative_k: int = field(default=5, metadata={"help": "Hard negatives mined per query."})
    mine_scope: Literal["failures", "all"] = field(
        default="all",
        metadata={
            "help": "failures: mine only queries whose target is not ranked first; all: every query."
        },
    )
    hard_negative_margin: float | None = field(
        default=None,
        metadata={
            "help": "Drop candidates scoring above margin x the target's score (false-negative guard)."
        },
    )
    hard_negative_skip_top: int = field(
        default=0, metadata={"help": "Skip the first N ranked candidates."}
    )
    negative_source: Literal["mined", "random"] = field(
        default="mined",
        metadata={
            "help": "mined: real retrieval; random: uniform gallery draws (a baseline, named as such)."
        },
    )
    mining_checkpoint: Literal["previous", "first"] = field(
        default="previous",
        metadata={
            "help": "previous: mine again each round with checkpoint_iter_{i-1}; first: mine once "
            "with checkpoint_iter_0 and reuse those negatives every round (an ablation)."
        },
    )
    foundation_model_path: str | None = field(
        default=None,
        metadata={"help": "Local path of the foundation VLM that writes new modification texts."},
    )
    foundation_model_backbone: str | None = field(
        default=None,
        metadata={
            "help": "qwen2_vl, qwen2_5_vl, llava, generic, scene_oracle (synthetic data only) or none "
            "(skip augmentation). Default: scene_oracle on the synthetic benchmark."
        },
    )
    foundation_batch_size: int = field(default=8, metadata={"help": "Pairs per generation batch."})
    foundation_max_pixels: int = field(
        default=448 * 448,
        metadata={"help": "Pixel budget per image given to the foundation model."},
    )
    prompt_mode: Literal["direct", "cot"] = field(
        default="direct",
        metadata={
            "help": "direct: answer with the new text; cot: reason first, then the text after a marker."
        },
    )
    max_new_tokens: int = field(
        default=48, metadata={"help": "Generation length limit (cot needs more)."}
    )
    do_sample: bool = field(default=False, metadata={"help": "Sample instead of greedy decoding."})
    generation_temperature: float = field(
        default=0.7, metadata={"help": "Sampling temperature (with --do_sample)."}
    )
    top_p: float = field(default=0.9, metadata={"help": "Nucleus sampling (with --do_sample)."})
    augment_pairs_per_query: int = field(
        default=1, metadata={"help": "Hard negatives per mined query that get a new text."}
    )
    augment_negatives: Literal["mined", "random"] = field(
        default="mined",
        metadata={
            "help": "mined: new texts turn the reference into its mined hard negatives; random: "
            "into random gallery images instead, as many (an ablation)."
        },
    )
    max_augmented_per_iteration: int = field(
        default=1000,
        metadata={
            "help": "Cap on (query, hard negative) pairs captioned per round, hardest first; 0: "
            "no cap (README, Results: more new triplets than this displaced the original ones)."
        },
    )
    verify_augmented: bool = field(
        default=False,
        metadata={
            "help": "Keep a new triplet only if the current embedder ranks its target above the original target."
        },
    )
    consistency_filter: bool = field(
        default=False,
        metadata={
            "help": "Ask the foundation model yes/no questions about each new triplet; flags false negatives."
        },
    )
    augmented_pool: Literal["current", "cumulative"] = field(
        default="current",
        metadata={
            "help": "current: train round i on round i's new triplets; cumulative: on those of rounds 1..i."
        },
    )
    augment_flush_every: int = field(
        default=32,
        metadata={"help": "Write the partial augmentation file every N generated pairs."},
    )

    def __post_init__(self) -> None:
        _check_literals(self)
        _at_least(self, 0, "num_iterations", "num_hard_negatives", "hard_negative_skip_top")
        _at_least(self, 0, "group_loss_weight", "resume_from_iteration", optional=True)
        _at_least(self, 1, "batch_size", optional=True)
        _at_least(
            self,
            1,
            "gc_mini_batch_size",
            "encode_batch_size",
            "hard_negative_k",
            "foundation_batch_size",
            "max_new_tokens",
            "augment_pairs_per_query",
            "augment_flush_every",
            "report_queries",
        )
        _at_least(self, 0, "max_augmented_per_iteration")
        _at_least(self, MIN_FOUNDATION_PIXELS, "foundation_max_pixels")
        if self.hard_negative_margin is not None:
            _require(
                self.hard_negative_margin > 0,
                "hard_negative_margin",
                self.hard_negative_margin,
                "must be > 0 (0.95 to 0.99 is a common choice)",
            )
        _require(
            self.generation_temperature > 0,
            "generation_temperature",
            self.generation_temperature,
            "must be > 0",
        )
        _require(0 < self.top_p <= 1, "top_p", self.top_p, "must be in (0, 1]")
        _require(
            self.group_loss_weight == 0 or self.group_by_reference,
            "group_loss_weight",
            self.group_loss_weight,
            "needs --group_by_reference (the term contrasts queries of one reference group)",
        )
        if self.resume_from_iteration is not None:
            _require(
                self.resume_from_iteration <= self.num_iterations,
                "resume_from_iteration",
                self.resume_from_iteration,
                f"must be <= --num_iterations ({self.num_iterations})",
            )
        self._check_captioner()

    def _check_captioner(self) -> None:
        backbone, path = self.foundation_model_backbone, self.foundation_model_path
        if backbone is None:
            return
        _require(
            backbone in CAPTIONERS,
            "foundation_model_backbone",
            backbone,
            f"choose one of {', '.join(CAPTIONERS)}",
        )
        if backbone in FOUNDATION_MODEL_BACKBONES:
            _require(path is not None, "foundation_model_backbone", backbone, "needs --foundation_model_path")
        elif path is not None:
            raise ArgumentError(
                f"--foundation_model_backbone {backbone} uses no model, but --foundation_model_path "
                f"{path} is given; drop one of the two"
            )

    @property
    def resuming(self) -> bool:
        return self.auto_resume or self.resume_from_iteration is not None


@dataclass
class IterativeTrainingArguments(TrainingArguments):
    """The Trainer's own flags, with the ranges a contrastive run needs checked up front."""

    def __post_init__(self) -> None:
        super().__post_init__()
        _require(self.learning_rate > 0, "learning_rate", self.learning_rate, "must be > 0")
        _at_least(self, 1, "per_device_train_batch_size", "gradient_accumulation_steps")
        _require(
            self.max_steps > 0 or self.num_train_epochs > 0,
            "num_train_epochs",
            self.num_train_epochs,
            "must be > 0 (or set --max_steps)",
        )
        _at_least(self, 0, "warmup_steps", "weight_decay")


ARGUMENT_GROUPS = (ModelArguments, DataArguments, IterativeArguments, IterativeTrainingArguments)


def default_training_arguments() -> dict:
    """Trainer defaults that suit this project (any of them can be overridden by flag)."""
    several_cpu_processes = (
        not torch.cuda.is_available() and int(os.environ.get("WORLD_SIZE", "1")) > 1
    )
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
        # worker prepares ~24 CIRR-size images/s (README, "Encoding"), far below what a GPU
        # encodes, so up to 8. On a CPU-only machine they compete with the forward for the same
        # cores (benchmarks/bench_retrieval.py: slower), so none.
        "dataloader_num_workers": min(8, os.cpu_count() or 1) if torch.cuda.is_available() else 0,
        "seed": 0,
        "disable_tqdm": False,
        "dataloader_pin_memory": torch.cuda.is_available(),
        # Without a GPU, accelerate sets up several torchrun processes as one unless told to
        # use the CPU (then gloo): each would train on its own, without DDP (docs/notes.md).
        "use_cpu": not torch.cuda.is_available(),
        "ddp_backend": "gloo" if several_cpu_processes else None,
    }


def read_preset(path: str) -> dict:
    """A `--config` preset: a JSON object of known flag names."""
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
    known = {item.name for group in ARGUMENT_GROUPS for item in dataclasses.fields(group)}
    unknown = sorted(set(preset) - known)
    if unknown:
        raise ArgumentError(f"--config {config_path}: unknown keys {unknown}")
    return preset


def _deepspeed_stage(deepspeed: dict | str | None) -> int | None:
    if deepspeed is None:
        return None
    if isinstance(deepspeed, str):
        path = Path(deepspeed)
        if not path.is_file():
            raise ArgumentError(f"--deepspeed {deepspeed}: no such file")
        try:
            deepspeed = json.loads(path.read_text())
        except json.JSONDecodeError as error:
            raise ArgumentError(f"--deepspeed {deepspeed}: invalid JSON ({error})") from None
    return deepspeed.get("zero_optimization", {}).get("stage")


def check_together(iter_args: IterativeArguments, training_args: TrainingArguments) -> None:
    """Refuse flags that each pass their own checks but do not go together."""
    if iter_args.grad_cache and _deepspeed_stage(training_args.deepspeed) == 3:
        raise ArgumentError(
            "--grad_cache with DeepSpeed ZeRO-3: GradCache's second forward pass re-gathers "
            "partitioned weights chunk by chunk outside the engine's backward; use ZeRO-2 "
            "(configs/deepspeed_zero2.json) or drop --grad_cache"
        )


def parse_arguments(
    argv: list[str] | None = None,
) -> tuple[ModelArguments, DataArguments, IterativeArguments, IterativeTrainingArguments]:
    """Parse flags; `--config FILE` supplies defaults that explicit flags override."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = HfArgumentParser(ARGUMENT_GROUPS)
    parser.set_defaults(**default_training_arguments())
    if "--config" in argv:
        position = argv.index("--config") + 1
        if position >= len(argv):
            raise ArgumentError("--config needs a file name")
        parser.set_defaults(**read_preset(argv[position]))
    try:
        model_args, data_args, iter_args, training_args = parser.parse_args_into_dataclasses(
            args=argv
        )
    except metadata.PackageNotFoundError as error:  # e.g. --deepspeed without the package
        raise ArgumentError(f"a flag needs a package that is not installed: {error}") from None
    if iter_args.batch_size is not None:
        training_args.per_device_train_batch_size = iter_args.batch_size
    check_together(iter_args, training_args)
    return model_args, data_args, iter_args, training_args
