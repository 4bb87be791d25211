"""`--plan`: what a job will do, printed without training or loading any weight.

The steps are the run's own (`job_steps`, src/rounds.py): for each, what it does (triplets,
gallery images and queries to encode, pairs to caption, optimizer steps) and whether
`--auto_resume` would skip it (its artifact verifies and its meta matches, decided by the
same `Experiment.why_not_done` the run uses). For the model: parameters counted on the
`meta` device, image tokens per image from the processor's own rule over the split's real
image sizes, and a memory estimate per process. Where a throughput was measured for this
architecture and device (src/devices.py), each step gets an estimated time: sharded work
(encoding, captioning, training's global batch) divided over the processes.

Memory per process and stage (src/memory.py, docs/memory.md): training, encoding, captioning
with the foundation model and its consistency check, each with its parts (weights per
dtype, what trains, activations per layer, DDP buckets, runtime, on a CPU the allocator's
held heap); the largest is the process's peak.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass

import torch

import src.memory as memory
from src.arguments import FOUNDATION_MODEL_BACKBONES
from src.devices import device_name, measured_throughput
from src.distributed import world_size
from src.errors import IntegrityError
from src.experiment.step import Step
from src.job import Job
from src.model.architectures import (
    architecture_signature,
    build_from_path,
    count_parameters,
    vision_parameters,
)
from src.model.encoder import (
    embedder_processor,
    is_vision_module,
    load_embedder_config,
    lora_target_counts,
    resolve_dtype,
)
from src.model.prompts import candidate_text, query_text
from src.model.registry import (
    checkpoint_config,
    detect_backbone,
    get_backbone,
    image_token_count,
)
from src.rounds import job_steps

GIB = 1024**3
TEXT_SAMPLE = 2000


def step_status(job: Job, step: Step, earlier_runs: bool) -> str:
    """Whether --auto_resume would skip the step, and why."""
    if earlier_runs:
        return "will run (an earlier stage runs first)"
    if not job.run.resuming or not step.artifact.exists():
        return "will run"
    try:
        reason = job.experiment.why_not_done(step.artifact, step.kind, step.meta())
    except (IntegrityError, OSError, KeyError, ValueError) as error:
        reason = str(error)
    if reason is None:
        resume_from = job.run.resume_from_iteration
        if resume_from is not None and step.round >= resume_from:
            return "will run (--resume_from_iteration moves it aside)"
        return "done: skipped"
    return f"will run ({reason})"


def step_statuses(job: Job, steps: list[Step]) -> list[str]:
    statuses: list[str] = []
    for step in steps:
        earlier = any(status.startswith("will run") for status in statuses)
        statuses.append(step_status(job, step, earlier))
    return statuses


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
    shape: memory.ModelShape | None = None
    lora_inputs: tuple[int, ...] = ()  # input features of the adapted linears of one text layer
    vision_trains: bool = False


def lora_layer_inputs(
    model: torch.nn.Module, matches: dict[str, int]
) -> tuple[tuple[int, ...], bool]:
    """The input features of the adapted linear layers in the language model's first layer,
    and whether any adapter lands in the vision tower."""
    inputs, vision = [], False
    for name, module in model.named_modules():
        if name.rsplit(".", 1)[-1] not in matches or not isinstance(module, torch.nn.Linear):
            continue
        if is_vision_module(name):
            vision = True
        elif ".layers.0." in name:
            inputs.append(module.in_features)
    return tuple(sorted(inputs)), vision


def model_facts(job: Job) -> ModelFacts:
    options, model_path = job.model, job.model_path
    embedder = load_embedder_config(model_path)
    backbone = (
        embedder.backbone if embedder else options.model_backbone or detect_backbone(model_path)
    )
    base = embedder.base_model if embedder and embedder.lora else model_path
    config = checkpoint_config(base)
    dtype = resolve_dtype(options.torch_dtype, trains_all_weights=not options.lora)
    model = build_from_path(base, dtype)
    total, vision = count_parameters(model), vision_parameters(model)
    matches: dict[str, int] = {}
    lora_inputs, vision_trains = (), not options.freeze_vision_tower
    if options.lora:
        matches = lora_target_counts(model, options.lora_targets, options.freeze_vision_tower)
        trainable = 0
        for name, module in model.named_modules():
            if options.freeze_vision_tower and is_vision_module(name):
                continue
            if name.rsplit(".", 1)[-1] in matches and isinstance(module, torch.nn.Linear):
                trainable += options.lora_r * (module.in_features + module.out_features)
        lora_inputs, vision_trains = lora_layer_inputs(model, matches)
        vision_trains = vision_trains and not options.freeze_vision_tower
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
        shape=memory.model_shape(config, total, vision),
        lora_inputs=lora_inputs,
        vision_trains=vision_trains,
    )


def token_facts(job: Job, backbone: str, image_sizes: dict[str, tuple[int, int]]) -> dict:
    """Image tokens per image (mean / max over the splits' images) and text tokens per row."""
    _, processor = embedder_processor(job.model_path, job.model)
    counts: dict[tuple[int, int], int] = {}
    tokens = []
    for width, height in image_sizes.values():
        if (width, height) not in counts:
            counts[(width, height)] = image_token_count(processor, width, height)
        tokens.append(counts[(width, height)])
    token = get_backbone(backbone).image_token
    captions = [t.caption for t in job.train_split.triplets[:TEXT_SAMPLE]]
    texts = [query_text(token, job.dataset_name, c) for c in captions]
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


# The captioning prompt's text besides the images: chat template, instruction and the
# original caption (an allowance; the images' tokens dominate).
CAPTION_PROMPT_TEXT_TOKENS = 128


def _dtype_bytes(dtype: torch.dtype) -> int:
    return torch.finfo(dtype).bits // 8


def foundation_shape(path: str) -> tuple[memory.ModelShape, int]:
    """The foundation model's numbers from its config (meta device) and its vocabulary."""
    config = checkpoint_config(path)
    model = build_from_path(path, torch.bfloat16)
    text = getattr(config, "text_config", config)
    return memory.model_shape(
        config, count_parameters(model), vision_parameters(model)
    ), text.vocab_size


def memory_estimate(
    job: Job, model: ModelFacts, tokens: dict, device: str | None = None
) -> list[memory.StageMemory]:
    """Bytes per process of each stage of the job (src/memory.py has the rules), on this
    machine's device unless `device` ("cpu" or "cuda") says otherwise."""
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    process = memory.Process(device, world_size())
    args, shape = job.training, model.shape
    weight_bytes = _dtype_bytes(model.dtype)
    if device == "cuda" and job.model.lora and job.model.torch_dtype == "auto":
        weight_bytes = 2  # a LoRA base in bfloat16 where the GPU supports it (resolve_dtype)
    autocast = args.bf16 or args.fp16
    compute_bytes = min(2, weight_bytes) if autocast else weight_bytes
    image_tokens = tokens["image_tokens_mean"]
    patches_per_row = image_tokens * shape.patches_per_token
    text_tokens = max(tokens["query_text_tokens_mean"], tokens["candidate_text_tokens"])
    sequence = tokens["image_tokens_max"] + text_tokens  # rows are padded to the longest
    rows = args.per_device_train_batch_size * (2 + args.num_hard_negatives)
    chunk_rows = min(rows, args.gc_mini_batch_size) if args.grad_cache else rows
    training = memory.training_memory(
        shape,
        process,
        weight_bytes=weight_bytes,
        compute_bytes=compute_bytes,
        lora=job.model.lora,
        trainable=model.trainable,
        vision_trains=model.vision_trains,
        lora_inputs=model.lora_inputs,
        lora_dropout=job.model.lora_dropout,
        gradient_checkpointing=args.gradient_checkpointing,
        chunk=memory.Chunk(chunk_rows, sequence, chunk_rows * patches_per_row),
        batch_rows=rows,
        batch_patches=rows * patches_per_row,
        grad_cache=args.grad_cache,
    )
    training.describes = (
        f"{'LoRA' if job.model.lora else 'full fine-tuning'}, batch {args.per_device_train_batch_size}"
        f" x {2 + args.num_hard_negatives} rows"
        + (f", GradCache chunks of {args.gc_mini_batch_size}" if args.grad_cache else "")
        + (", gradient checkpointing" if args.gradient_checkpointing else "")
        + (", bf16 autocast" if autocast and compute_bytes < weight_bytes else "")
    )
    inference_bytes = _dtype_bytes(resolve_dtype(job.model.torch_dtype))
    if device == "cuda" and job.model.torch_dtype == "auto":
        inference_bytes = 2  # bfloat16 where the GPU supports it (resolve_dtype)
    batch = job.flags.encode.encode_batch_size
    unmerged = job.model.lora and inference_bytes < 4  # src/model/encoder.py load_encoder
    encoding = memory.forward_memory(
        shape,
        process,
        weight_bytes=inference_bytes,
        compute_bytes=inference_bytes,
        chunk=memory.Chunk(batch, sequence, batch * patches_per_row),
        adapters=model.trainable if unmerged else 0,
        heap_held=training.heap_left,
    )
    encoding.describes = f"mining and evaluation, batch {batch}" + (
        ", LoRA unmerged on the bfloat16 base" if unmerged else ", LoRA merged" if job.model.lora else ""
    )
    stages = [training, encoding]
    options = job.augment
    if job.captioner in FOUNDATION_MODEL_BACKBONES and options.foundation_model_path:
        foundation, vocab = foundation_shape(options.foundation_model_path)
        foundation_bytes = 2 if device == "cuda" else _dtype_bytes(resolve_dtype("auto"))
        pixel_scale = min(
            1.0,
            options.foundation_max_pixels / (tokens["max_pixels"] or options.foundation_max_pixels),
        )
        image = image_tokens * pixel_scale
        prompt = 2 * image + CAPTION_PROMPT_TEXT_TOKENS
        patches = 2 * image * foundation.patches_per_token
        pairs = options.foundation_batch_size
        common = {"weight_bytes": foundation_bytes, "patches_per_prompt": patches, "vocab": vocab,
                  "heap_held": training.heap_left}  # fmt: skip
        captioning = memory.generation_memory(
            foundation, process, pairs=pairs, prompt_tokens=prompt,
            new_tokens=options.max_new_tokens, **common,
        )  # fmt: skip
        captioning.describes = (
            f"{job.captioner} {foundation.parameters / 1e9:.1f} B, {pairs} pairs, "
            f"{options.max_new_tokens} new tokens"
        )
        stages.append(captioning)
        if options.consistency_filter:
            consistency = memory.generation_memory(
                foundation, process, pairs=2 * pairs, prompt_tokens=prompt + options.max_new_tokens,
                new_tokens=0, cache=False, name="consistency check", **common,
            )  # fmt: skip
            consistency.describes = f"{2 * pairs} prompts, one forward"
            stages.append(consistency)
    return stages


def step_seconds(step: Step, rates: dict[str, float], job: Job) -> float | None:
    """The step's time from measured per-device rates, its sharded work split over the
    processes (None: a rate it needs was not measured). Training work is optimizer steps,
    each of per-device batch x processes x gradient accumulation steps samples."""
    processes = world_size()
    training = job.training  # an optimizer step takes gradient_accumulation_steps batches
    global_batch = training.per_device_train_batch_size * processes * training.gradient_accumulation_steps
    seconds = 0.0
    for kind, amount in step.work.items():
        if not amount:
            continue
        rate = rates.get({"train": "train_samples_per_s", "encode": "encode_items_per_s",
                          "caption": "caption_pairs_per_s"}[kind])  # fmt: skip
        if not rate:
            return None
        done = amount * global_batch if kind == "train" else amount  # steps -> samples
        seconds += done / (rate * processes)
    return seconds


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    return f"{seconds / 60:.1f} min" if seconds >= 60 else f"{seconds:.0f} s"


def memory_lines(stages: list[memory.StageMemory], dtype: torch.dtype) -> list[str]:
    peak = memory.job_peak(stages)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    what = "allocated + CUDA context" if device == "cuda" else "resident set"
    return [
        f"memory per process ({device}, {what}; embedder weights "
        f"{str(dtype).removeprefix('torch.')}; formulas in docs/memory.md): peak "
        f"{peak.total / GIB:.2f} GiB ({peak.name})",
        *(f"  {stage.line()}" for stage in stages),
    ]


def format_plan(job: Job, image_sizes: dict[str, tuple[int, int]]) -> str:
    model = model_facts(job)
    tokens = token_facts(job, model.backbone, image_sizes)
    memory_stages = memory_estimate(job, model, tokens)
    steps = job_steps(job)
    statuses = step_statuses(job, steps)
    device = device_name()
    rates = measured_throughput(model.signature, device)
    lines = [
        f"Plan of {job.experiment.dir} (nothing is trained or loaded)",
        f"model: {job.model_path} ({model.backbone}, {model.signature})",
        f"  parameters: {model.parameters:,} (vision tower {model.vision:,}); trainable: "
        f"{model.trainable:,}"
        + (f" (LoRA r={job.model.lora_r} on {model.lora_matches})" if job.model.lora else ""),
        f"data: {job.dataset_name} at {job.dataset_path}: train {len(job.train_split.triplets)} "
        f"triplets over {len(job.train_split.images)} images, val {len(job.val_split.triplets)} "
        f"over {len(job.val_split.images)}",
        f"image tokens per image: mean {tokens['image_tokens_mean']:.1f}, max "
        f"{tokens['image_tokens_max']} (pixel budget {tokens['min_pixels']} - {tokens['max_pixels']}); "
        f"text tokens: query {tokens['query_text_tokens_mean']:.1f} on average, candidate "
        f"{tokens['candidate_text_tokens']}",
        *memory_lines(memory_stages, model.dtype),
        "time: "
        + (
            f"from the throughput measured on {device} (src/throughput.json), over "
            f"{world_size()} process(es)"
            if rates
            else f"no throughput measured for {model.signature} on {device} (src/throughput.json)"
        ),
        "",
        f"{'round':>5}  {'stage':<8} {'status':<44} {'time':>8}  what -> output",
    ]
    for step, status in zip(steps, statuses, strict=True):
        lines.append(
            f"{step.round:>5}  {step.stage:<8} {status[:44]:<44} "
            f"{_duration(step_seconds(step, rates, job)):>8}  {step.describes} -> {step.artifact.name}"
        )
    return "\n".join(lines)
