"""`--plan`: what a job will do, printed without training or loading any weight.

For each round's stages: inputs and outputs (triplets, gallery images and queries to
encode, pairs to caption, optimizer steps), and whether `--auto_resume` would skip it
(its artifact verifies and its meta matches, decided by the same `Experiment.why_not_done`
and stage metas the run uses). For the model: parameters counted on the `meta` device,
image tokens per image from the processor's own rule over the split's real image sizes,
and a rough memory estimate per process. Where `benchmarks/results/` holds a throughput
measured for this architecture and device, each stage gets an estimated time.

Memory estimate (bytes per process; an estimate, not a measurement): weights = parameters
x dtype size; gradients = trainable x dtype size; AdamW states = 2 x trainable x dtype
size; activations of one forward chunk (the contrastive batch, or one GradCache
mini-batch) per layer ~ 34 x width x tokens x dtype size / 2 (Korthikanti et al. 2022,
without the attention-score term, which SDPA does not store), or ~ 2 x width x tokens
per layer plus one full layer with gradient checkpointing; the vision tower likewise over
its patches (4 per image token).
"""

from __future__ import annotations

import contextlib
import json
import math
import statistics
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

from src.distributed import world_size
from src.errors import IntegrityError
from src.job import Job
from src.model.architectures import (
    architecture_signature,
    build_from_path,
    count_parameters,
    model_config,
    vision_parameters,
)
from src.model.encoder import (
    load_embedder_config,
    lora_target_counts,
    new_embedder_processor,
    resolve_dtype,
)
from src.model.prompts import candidate_text, query_text
from src.model.registry import detect_backbone, get_backbone, image_token_count, load_processor
from src.stages.augment import augment_request
from src.stages.evaluate import evaluate_meta
from src.stages.mine import mine_meta
from src.stages.train import train_meta

RESULTS_DIR = Path(__file__).resolve().parents[1] / "benchmarks" / "results"
GIB = 1024**3
TEXT_SAMPLE = 2000


@dataclass
class StagePlan:
    round: int
    stage: str
    does: str
    output: str
    status: str
    work: dict[str, float] = field(default_factory=dict)


def _status(job: Job, artifact: Path, meta: Callable[[], dict], earlier_runs: bool) -> str:
    """Whether --auto_resume would skip the stage, and why."""
    if earlier_runs:
        return "will run (an earlier stage runs first)"
    resume_from = job.iter_args.resume_from_iteration
    if not job.iter_args.resuming or not artifact.exists():
        return "will run"
    try:
        reason = job.experiment.why_not_done(artifact, meta())
    except (IntegrityError, OSError, KeyError, ValueError) as error:
        reason = str(error)
    if reason is None:
        round_index = int(artifact.name.rsplit("_", 1)[-1].removesuffix(".json"))
        if (
            resume_from is not None
            and round_index + (1 if artifact.name.startswith("hard_negatives") else 0)
            >= resume_from
        ):
            return "will run (--resume_from_iteration moves it aside)"
        return "done: skipped"
    return f"will run ({reason})"


def _steps(job: Job, samples: int) -> int:
    args = job.training_args
    if args.max_steps > 0:
        return args.max_steps
    per_step = args.per_device_train_batch_size * world_size() * args.gradient_accumulation_steps
    return math.ceil(math.ceil(samples / per_step) * args.num_train_epochs)


def stage_plans(job: Job) -> list[StagePlan]:
    experiment, iters = job.experiment, job.iter_args
    train_n, val_n = len(job.train_split.triplets), len(job.val_split.triplets)
    train_gallery, val_gallery = len(job.train_split.images), len(job.val_split.images)
    per_query = job.augment.pairs_per_query
    plans: list[StagePlan] = []

    def add(round_: int, stage: str, does: str, artifact: Path, meta, work: dict) -> None:
        earlier = any(p.status.startswith("will run") for p in plans)
        status = _status(job, artifact, meta, earlier)
        plans.append(StagePlan(round_, stage, does, artifact.name, status, work))

    def evaluation(i: int) -> None:
        add(
            i,
            "evaluate",
            f"encode {val_gallery} gallery images + {val_n} queries, metrics",
            experiment.evaluation("val", i),
            lambda: evaluate_meta(experiment, i, job.val_split, job.dataset_name),
            {"encode": val_gallery + val_n},
        )

    round0 = (
        "keep the base model (--skip_round0)"
        if iters.skip_round0
        else (f"train {train_n} triplets, {_steps(job, train_n)} optimizer steps")
    )
    add(0, "train", round0, experiment.checkpoint(0), lambda: train_meta(job, 0),
        {"train": 0 if iters.skip_round0 else _steps(job, train_n)})  # fmt: skip
    evaluation(0)
    for i in range(1, iters.num_iterations + 1):
        if job.uses_mining:
            source = job.mining_checkpoint(i)
            add(i, "mine",
                f"encode {train_gallery} gallery images + {train_n} queries with "
                f"checkpoint_iter_{source}, top {job.mining.k} ({job.mining.source}, scope {job.mining.scope})",
                experiment.hard_negatives(i - 1), lambda source=source: mine_meta(job, source),
                {"encode": train_gallery + train_n})  # fmt: skip
        pairs = train_n * per_query
        if job.augment.max_pairs is not None:
            pairs = min(pairs, job.augment.max_pairs)
        with contextlib.suppress(OSError, KeyError, ValueError):
            pairs = len(augment_request(job, i)[1])  # exact once the negatives are mined
        captioned = 0 if job.augment.captioner == "none" else pairs
        add(i, "augment", f"{job.augment.captioner}: caption up to {captioned} pairs",
            experiment.augmented(i), lambda i=i: augment_request(job, i)[0],
            {"caption": captioned})  # fmt: skip
        steps = _steps(job, train_n + captioned)
        add(i, "train",
            f"train {train_n} original + up to {captioned} augmented triplets, "
            f"{job.iter_args.num_hard_negatives} hard negative(s) each, up to {steps} steps",
            experiment.checkpoint(i), lambda i=i: train_meta(job, i), {"train": steps})  # fmt: skip
        evaluation(i)
    return plans


@dataclass
class ModelFacts:
    backbone: str
    signature: str
    parameters: int
    vision: int
    trainable: int
    lora_matches: dict[str, int]
    dtype: torch.dtype
    text_width: int
    text_layers: int
    vision_width: int
    vision_layers: int


def model_facts(job: Job) -> ModelFacts:
    options, model_path = job.encoder, job.model_path
    embedder = load_embedder_config(model_path)
    backbone = embedder.backbone if embedder else options.backbone or detect_backbone(model_path)
    base = embedder.base_model if embedder and embedder.lora else model_path
    config = model_config(base)
    dtype = resolve_dtype(options.dtype)
    model = build_from_path(base, dtype)
    total, vision = count_parameters(model), vision_parameters(model)
    matches: dict[str, int] = {}
    if options.lora:
        matches = lora_target_counts(
            model, list(options.lora_target_modules), options.freeze_vision_tower
        )
        trainable = 0
        for name, module in model.named_modules():
            if name.rsplit(".", 1)[-1] in matches and isinstance(module, torch.nn.Linear):
                trainable += options.lora_r * (module.in_features + module.out_features)
    else:
        head = model.get_output_embeddings()
        tied = head is not None and head.weight is model.get_input_embeddings().weight
        trainable = total - (0 if head is None or tied else head.weight.numel())
        trainable -= vision if options.freeze_vision_tower else 0
    text = getattr(config, "text_config", config)
    vision_config = config.vision_config
    return ModelFacts(
        backbone=backbone,
        signature=architecture_signature(config),
        parameters=total,
        vision=vision,
        trainable=trainable,
        lora_matches=matches,
        dtype=dtype,
        text_width=text.hidden_size,
        text_layers=text.num_hidden_layers,
        vision_width=getattr(vision_config, "embed_dim", None) or vision_config.hidden_size,
        vision_layers=getattr(vision_config, "depth", None) or vision_config.num_hidden_layers,
    )


def token_facts(job: Job, backbone: str, image_sizes: dict[str, tuple[int, int]]) -> dict:
    """Image tokens per image (mean / max over the splits' images) and text tokens per row."""
    embedder = load_embedder_config(job.model_path)
    if embedder is not None:
        processor = load_processor(job.model_path)
        get_backbone(backbone).apply_pixel_budget(
            processor, job.encoder.min_pixels, job.encoder.max_pixels
        )
    else:
        processor, _, _ = new_embedder_processor(
            job.model_path, backbone, job.encoder.min_pixels, job.encoder.max_pixels
        )
    counts: dict[tuple[int, int], int] = {}
    tokens = []
    for width, height in image_sizes.values():
        if (width, height) not in counts:
            counts[(width, height)] = image_token_count(processor, width, height)
        tokens.append(counts[(width, height)])
    token = get_backbone(backbone).image_token
    captions = [t.caption for t in job.train_split.triplets[:TEXT_SAMPLE]]
    texts = [query_text(token, job.instruction_set, c) for c in captions]
    tokenizer = processor.tokenizer
    query_lengths = [
        len(ids) - 1 for ids in tokenizer(texts)["input_ids"]
    ]  # without the image token
    candidate_length = len(tokenizer(candidate_text(token))["input_ids"]) - 1
    min_pixels, max_pixels = (
        get_backbone(backbone).pixel_bounds(processor)
        if get_backbone(backbone).pixel_budget
        else (None, None)
    )
    return {
        "image_tokens_mean": statistics.fmean(tokens) if tokens else 0.0,
        "image_tokens_max": max(tokens, default=0),
        "query_text_tokens_mean": statistics.fmean(query_lengths) if query_lengths else 0.0,
        "candidate_text_tokens": candidate_length,
        "min_pixels": min_pixels,
        "max_pixels": max_pixels,
    }


def memory_estimate(job: Job, model: ModelFacts, tokens: dict) -> dict[str, float]:
    """Bytes per process (see the module docstring for the rules)."""
    size = torch.finfo(model.dtype).bits // 8
    iters, args = job.iter_args, job.training_args
    rows = args.per_device_train_batch_size * (2 + iters.num_hard_negatives)
    if iters.grad_cache:
        rows = min(rows, iters.gc_mini_batch_size)
    image_tokens = tokens["image_tokens_mean"]
    row_tokens = image_tokens + max(
        tokens["query_text_tokens_mean"], tokens["candidate_text_tokens"]
    )
    text_tokens, patches = rows * row_tokens, rows * 4 * image_tokens
    factor = size / 2

    def layers(width: int, depth: int, count: float) -> float:
        if args.gradient_checkpointing:
            return (2 * depth + 34) * width * count * factor
        return 34 * depth * width * count * factor

    return {
        "weights": model.parameters * size,
        "gradients": model.trainable * size,
        "optimizer (AdamW)": 2 * model.trainable * size,
        "activations": layers(model.text_width, model.text_layers, text_tokens)
        + layers(model.vision_width, model.vision_layers, patches),
    }


def _device_name() -> str:
    return torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"


def measured_throughput(signature: str, device: str) -> dict[str, float]:
    """Rates measured for this architecture and device under benchmarks/results/ (may be empty)."""
    rates: dict[str, float] = {}
    for path in sorted(RESULTS_DIR.rglob("*.json")):
        with contextlib.suppress(OSError, ValueError, AttributeError):
            found = json.loads(path.read_text()).get("throughput")
            if found and found.get("signature") == signature and found.get("device") == device:
                rates |= {k: v for k, v in found.items() if k.endswith("_per_s")}
    return rates


def _time(plan: StagePlan, rates: dict[str, float], job: Job) -> str:
    batch = job.training_args.per_device_train_batch_size * world_size()
    seconds = 0.0
    for kind, amount in plan.work.items():
        rate = {
            "train": rates.get("train_samples_per_s", 0) / max(batch, 1),
            "encode": rates.get("encode_items_per_s"),
            "caption": rates.get("caption_pairs_per_s"),
        }[kind]
        if amount and not rate:
            return "-"
        seconds += amount / rate if amount else 0.0
    return f"{seconds / 60:.1f} min" if seconds >= 60 else f"{seconds:.0f} s"


def format_plan(job: Job, image_sizes: dict[str, tuple[int, int]]) -> str:
    model = model_facts(job)
    tokens = token_facts(job, model.backbone, image_sizes)
    memory = memory_estimate(job, model, tokens)
    plans = stage_plans(job)
    device = _device_name()
    rates = measured_throughput(model.signature, device)
    lines = [
        f"Plan of {job.experiment.dir} (nothing is trained or loaded)",
        f"model: {job.model_path} ({model.backbone}, {model.signature})",
        f"  parameters: {model.parameters:,} (vision tower {model.vision:,}); trainable: "
        f"{model.trainable:,}"
        + (f" (LoRA r={job.encoder.lora_r} on {model.lora_matches})" if job.encoder.lora else ""),
        f"data: {job.dataset_name} at {job.dataset_path}: train {len(job.train_split.triplets)} "
        f"triplets over {len(job.train_split.images)} images, val {len(job.val_split.triplets)} "
        f"over {len(job.val_split.images)}",
        f"image tokens per image: mean {tokens['image_tokens_mean']:.1f}, max "
        f"{tokens['image_tokens_max']} (pixel budget {tokens['min_pixels']} - {tokens['max_pixels']}); "
        f"text tokens: query {tokens['query_text_tokens_mean']:.1f} on average, candidate "
        f"{tokens['candidate_text_tokens']}",
        f"memory per process, rough ({str(model.dtype).removeprefix('torch.')}, batch "
        f"{job.training_args.per_device_train_batch_size}"
        + (
            f", GradCache chunks of {job.iter_args.gc_mini_batch_size}"
            if job.iter_args.grad_cache
            else ""
        )
        + (", gradient checkpointing" if job.training_args.gradient_checkpointing else "")
        + "): "
        + ", ".join(f"{name} {value / GIB:.2f} GiB" for name, value in memory.items())
        + f"; total {sum(memory.values()) / GIB:.2f} GiB",
        "time: "
        + (
            f"from the throughput measured on {device} (benchmarks/results/)"
            if rates
            else f"no throughput measured for {model.signature} on {device} in benchmarks/results/"
        ),
        "",
        f"{'round':>5}  {'stage':<8} {'status':<44} {'time':>8}  what -> output",
    ]
    for plan in plans:
        lines.append(
            f"{plan.round:>5}  {plan.stage:<8} {plan.status[:44]:<44} {_time(plan, rates, job):>8}"
            f"  {plan.does} -> {plan.output}"
        )
    return "\n".join(lines)
