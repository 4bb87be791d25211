"""Every command-line flag, as dataclasses parsed by HfArgumentParser.

A `--config preset.json` may set any field; flags given on the command line win over it.
"""

from __future__ import annotations

import dataclasses
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import torch
from transformers import HfArgumentParser, TrainingArguments


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
        default="q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj",
        metadata={"help": "Comma-separated module names that get LoRA adapters."},
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
        default=3000, metadata={"help": "Offline benchmark: train gallery size."}
    )
    synthetic_val_images: int = field(
        default=1200, metadata={"help": "Offline benchmark: validation gallery size."}
    )
    synthetic_test_images: int = field(
        default=600, metadata={"help": "Offline benchmark: test1 gallery size."}
    )
    image_size: int = field(
        default=112, metadata={"help": "Offline benchmark and tiny model: image side in pixels."}
    )
    max_train_samples: int | None = field(
        default=None, metadata={"help": "Use only the first N training triplets (a quick check)."}
    )
    max_eval_samples: int | None = field(
        default=None, metadata={"help": "Use only the first N validation triplets (a quick check)."}
    )


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
    encode_batch_size: int = field(
        default=64, metadata={"help": "Batch size for encoding galleries and queries."}
    )
    hard_negative_k: int = field(default=5, metadata={"help": "Hard negatives mined per query."})
    mine_scope: Literal["failures", "all"] = field(
        default="failures",
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
    max_augmented_per_iteration: int | None = field(
        default=None, metadata={"help": "Cap on (query, hard negative) pairs captioned per round."}
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


def default_training_arguments() -> dict:
    """Trainer defaults that suit this project (any of them can be overridden by flag)."""
    return {
        "output_dir": "experiments/_trainer",
        "per_device_train_batch_size": 32,
        "learning_rate": 3e-4,
        "num_train_epochs": 4.0,
        "lr_scheduler_type": "constant_with_warmup",
        "warmup_steps": 10,
        "logging_steps": 10,
        "save_strategy": "steps",
        "save_steps": 50,
        "save_total_limit": 2,
        "remove_unused_columns": False,
        "report_to": "none",
        # Workers overlap image preprocessing with a GPU's forward; on a CPU-only machine they
        # compete with the forward for the same cores (benchmarks/bench_retrieval.py: slower).
        "dataloader_num_workers": 2 if torch.cuda.is_available() else 0,
        "seed": 0,
        "disable_tqdm": False,
        "dataloader_pin_memory": torch.cuda.is_available(),
    }


def parse_arguments(
    argv: list[str] | None = None,
) -> tuple[ModelArguments, DataArguments, IterativeArguments, TrainingArguments]:
    """Parse flags; `--config FILE` supplies defaults that explicit flags override."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = HfArgumentParser(
        (ModelArguments, DataArguments, IterativeArguments, TrainingArguments)
    )
    parser.set_defaults(**default_training_arguments())
    if "--config" in argv:
        config_path = Path(argv[argv.index("--config") + 1])
        if not config_path.is_file():
            raise FileNotFoundError(f"--config {config_path}: no such file")
        preset = json.loads(config_path.read_text())
        known = {
            f.name
            for group in (ModelArguments, DataArguments, IterativeArguments, TrainingArguments)
            for f in dataclasses.fields(group)
        }
        unknown = sorted(set(preset) - known)
        if unknown:
            raise ValueError(f"--config {config_path}: unknown keys {unknown}")
        parser.set_defaults(**preset)
    model_args, data_args, iter_args, training_args = parser.parse_args_into_dataclasses(args=argv)
    if iter_args.batch_size is not None:
        training_args.per_device_train_batch_size = iter_args.batch_size
    return model_args, data_args, iter_args, training_args
