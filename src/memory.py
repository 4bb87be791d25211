"""Memory per process and stage: what a job holds, from the model's config numbers and the
run's settings alone (pure arithmetic, no weights; docs/memory.md gives every formula with
its source and the plan-versus-measured comparison).

A stage's peak is the sum of its parts:

- weights: parameters x the dtype they are loaded in (float32 for full fine-tuning; the
  base's dtype for a LoRA base, its adapters float32 beside it). On a CPU the safetensors
  are memory-mapped and only touched pages are resident: a model that runs no LM head (the
  embedder's trunk) never reads its input-embedding table beyond a few rows.
- what trains: float32 gradients (4 bytes / trainable parameter) and AdamW's two float32
  moments (8); under --bf16 autocast full fine-tuning also holds a bfloat16 copy of every
  float32 weight during a forward (torch.autocast's weight cache, 2 bytes / parameter).
- activations, in the compute dtype (bfloat16 under autocast or with bfloat16 weights, the
  weights' dtype otherwise), per transformer layer and token: the tensors a Qwen2 layer
  saves for backward (`text_layer_tensors`: SwiGLU's four intermediate-size tensors, the
  RMSNorm float32 upcasts, k/v repeated to every head for SDPA when there is padding, the
  float32 dropout outputs feeding each LoRA adapter), the vision block's likewise
  (`vision_block_tensors`). With gradient checkpointing: every layer's input plus one
  layer recomputed and its gradients in flight. The vision tower's activations count only
  when it trains: a frozen tower runs without a graph, checkpointing included
  (`VLM2VecEncoder.activation_checkpointing_enable` makes only the token embeddings'
  output require grad under LoRA). With GradCache only one chunk's activations
  exist at a time, plus the batch's inputs and the cached embeddings. Inference stages
  hold one layer's working set (`FORWARD_WORKING`), not the saved tensors.
- DDP gradient buckets: with more than one process, torch's DistributedDataParallel keeps
  its buckets (25 MiB each by default, `bucket_cap_mb`) beside the gradients, which in
  total is the size of the trainable gradients ("gradient_as_bucket_view ... the saved
  memory size will be equal to the total gradients size", torch's DDP docstring; the
  Trainer leaves that option off).
- runtime: on a GPU the CUDA context and NCCL's buffers (`CUDA_CONTEXT_BYTES`,
  `NCCL_BYTES`; outside torch.cuda.max_memory_allocated); on a CPU the resident set of an
  idle process with torch, transformers, peft and this project imported
  (`CPU_RUNTIME_BYTES`, measured here).
- on a CPU, the allocator: glibc malloc keeps freed memory that it cannot return. A layer
  run with gradients under checkpointing leaves, beside the small input it keeps for the
  backward, holes that the next layer's tensors do not fit, so the heap grows by about
  `HEAP_GROWTH_PER_LAYER` of the bytes that layer allocates in blocks under glibc's
  largest dynamic mmap threshold (`MMAP_THRESHOLD_MAX`, 32 MiB: larger blocks are
  mmapped and unmapped on free). After the stage `HEAP_KEPT_AFTER_STAGE` of that growth
  stays held by the process, and a later stage reuses it before growing again. Measured
  on depth-reduced 2B shapes (docs/memory.md): the growth is 1.4 GiB of free heap against
  0.44 GiB in use at an 8-layer step's peak (mallinfo2), and it vanishes when
  MALLOC_MMAP_THRESHOLD_ is fixed.

The captioner stage has its own weights (the foundation model, with its LM head), a KV
cache of batch x (prompt + new tokens) x layers x 2 x kv heads x head size, and the
prefill's working set; the consistency check is one forward of both questions of each pair
without a cache. A process's peak is the largest of its stages.
"""

from __future__ import annotations

from dataclasses import dataclass, field

GIB = 1024**3
MIB = 1024**2

# An idle CPU process's resident set with torch, transformers, peft and this project
# imported (`import benchmarks.real_shape_check`): 874 MiB VmRSS (499 MiB anonymous, 374
# file-backed) on this machine, torch 2.14 / transformers 5.24 / peft 0.21.
CPU_RUNTIME_BYTES = 874 * MIB
# CUDA context (driver and kernel images with lazy loading) and cuBLAS/cuDNN handles: a few
# hundred MB per process; NCCL's communicator buffers under DDP. Estimates, not measured
# here (no GPU figures exist yet); neither counts in torch.cuda.max_memory_allocated.
CUDA_CONTEXT_BYTES = 512 * MIB
NCCL_BYTES = 256 * MIB
# torch DistributedDataParallel's default bucket size (bucket_cap_mb=None -> 25 MiB).
DDP_BUCKET_BYTES = 25 * MIB
# glibc malloc: the dynamic mmap threshold rises to at most 32 MiB on 64-bit
# (DEFAULT_MMAP_THRESHOLD_MAX, mallopt(3)); blocks above it are always mmapped.
MMAP_THRESHOLD_MAX = 32 * MIB
# Measured on this CPU (docs/memory.md, depth-reduced 2B shapes, float32): the heap grew by
# 121 MiB per checkpointed text layer (0.82 of its sub-threshold tensors) and 60 MiB per
# vision block (0.66); 0.74 is their mean.
HEAP_GROWTH_PER_LAYER = 0.74
# Measured likewise: after the LoRA step 45-68 % of the heap growth stayed resident (mean 0.55).
HEAP_KEPT_AFTER_STAGE = 0.55
# Patches of the processor's pixel_values per patch row: 3 channels x 2 frames x 14 x 14,
# float32 as the processor returns them (and as the model takes them).
PIXEL_VALUES_PER_PATCH = 3 * 2 * 14 * 14
# What the embedder's `pack` sends instead (Qwen2-VL / Qwen2.5-VL, src/model/registry.py):
# uint8, one frame, 3 x 14 x 14 bytes a patch; the float32 values are made on the device for
# the rows that run at once.
PACKED_BYTES_PER_PATCH = 3 * 14 * 14


@dataclass(frozen=True)
class Tower:
    """A stack of transformer layers: width, depth, MLP size and kind, heads."""

    width: int
    layers: int
    intermediate: int
    heads: int
    kv_heads: int
    swiglu: bool  # SwiGLU (gate, up, down) or a two-matrix GELU MLP
    rms_norm: bool  # RMSNorm with its float32 upcast, or LayerNorm

    @property
    def head_dim(self) -> int:
        return self.width // self.heads


@dataclass(frozen=True)
class ModelShape:
    """A vision-language model's numbers: parameters, towers, embedding table."""

    parameters: int
    vision_parameters: int
    embedding_parameters: int  # the input-embedding table (vocab x width)
    text: Tower
    vision: Tower
    patches_per_token: int  # vision patches merged into one image token (merge_size^2)
    packed_pixels: bool = False  # the embedder packs uint8 pixels (Qwen2-VL, Qwen2.5-VL)


def towers_from_config(config) -> tuple[Tower, Tower, int]:
    """(text tower, vision tower, patches per image token) of a Qwen2-VL / Qwen2.5-VL or
    LLaVA-style transformers config."""
    text = getattr(config, "text_config", config)
    vision = config.vision_config
    text_tower = Tower(
        width=text.hidden_size,
        layers=text.num_hidden_layers,
        intermediate=text.intermediate_size,
        heads=text.num_attention_heads,
        kv_heads=getattr(text, "num_key_value_heads", None) or text.num_attention_heads,
        swiglu=True,
        rms_norm=True,
    )
    vision_width = getattr(vision, "embed_dim", None) or vision.hidden_size
    if getattr(vision, "mlp_ratio", None) and getattr(vision, "embed_dim", None):
        intermediate, swiglu, rms = int(vision_width * vision.mlp_ratio), False, False  # Qwen2-VL
    elif getattr(vision, "fullatt_block_indexes", None) is not None:
        intermediate, swiglu, rms = vision.intermediate_size, True, True  # Qwen2.5-VL
    else:
        intermediate, swiglu, rms = vision.intermediate_size, False, False  # CLIP-like
    heads = getattr(vision, "num_heads", None) or vision.num_attention_heads
    vision_tower = Tower(
        width=vision_width,
        layers=getattr(vision, "depth", None) or vision.num_hidden_layers,
        intermediate=intermediate,
        heads=heads,
        kv_heads=heads,
        swiglu=swiglu,
        rms_norm=rms,
    )
    merge = getattr(vision, "spatial_merge_size", 1) or 1
    return text_tower, vision_tower, merge * merge


def model_shape(config, parameters: int, vision_parameters: int) -> ModelShape:
    text, vision, patches = towers_from_config(config)
    text_config = getattr(config, "text_config", config)
    return ModelShape(
        parameters=parameters,
        vision_parameters=vision_parameters,
        embedding_parameters=text_config.vocab_size * text_config.hidden_size,
        text=text,
        vision=vision,
        patches_per_token=patches,
        packed_pixels=config.model_type in ("qwen2_vl", "qwen2_5_vl"),
    )


# ---------------------------------------------------------------- per-layer tensors

# {what: (how many tensors, bytes per token of each)}
Tensors = dict[str, tuple[int, float]]


def text_layer_tensors(
    tower: Tower, compute: int, lora_inputs: tuple[int, ...] = (), lora_dropout: float = 0.0
) -> Tensors:
    """Bytes per token of each tensor a Qwen2 decoder layer saves for its backward.

    `compute`: bytes of the compute dtype. RMSNorm computes in float32 (`hidden.to(float32)`, then the
    normalised float32 tensor); an upcast is a copy only when the compute dtype is smaller.
    `lora_inputs`: the input features of each linear layer of the layer that carries a LoRA
    adapter (the seven default targets of Qwen2: width six times, intermediate once).
    peft casts each adapter's input to the adapter's float32 and, with dropout, keeps the
    dropped-out copy and its mask.
    """
    h, inter = tower.width, tower.intermediate
    kv = tower.kv_heads * tower.head_dim
    upcast = 4 * h if compute < 4 else 0
    tensors = {
        "layer input": (1, compute * h),
        "attention norm upcast (float32)": (1 if upcast else 0, upcast),
        "attention norm (float32)": (1, 4 * h),
        "attention norm output": (1, compute * h),
        "q": (1, compute * h),
        "k, v": (2, compute * kv),
        "q, k after rotary": (1, compute * (h + kv)),
        "k, v repeated to every head (SDPA)": (
            2 if tower.kv_heads < tower.heads else 0,
            compute * h,
        ),
        "attention output, o_proj input": (2, compute * h),
        "MLP norm upcast (float32)": (1 if upcast else 0, upcast),
        "MLP norm (float32)": (1, 4 * h),
        "MLP norm output": (1, compute * h),
        "MLP gate, act, up, product": (4 if tower.swiglu else 3, compute * inter),
    }
    for features in sorted(set(lora_inputs)):
        count = lora_inputs.count(features)
        if lora_dropout > 0:  # the float32 dropout output and its bool mask
            tensors[f"LoRA inputs ({features}) after dropout (float32)"] = (count, 4 * features)
            tensors[f"LoRA dropout masks ({features})"] = (count, features)
        elif compute < 4:
            tensors[f"LoRA inputs ({features}) cast to float32"] = (count, 4 * features)
    return tensors


def vision_block_tensors(tower: Tower, compute: int) -> Tensors:
    """Bytes per patch of each tensor a vision block saves for its backward (Qwen2-VL:
    LayerNorm, fused qkv, rotary in float32, QuickGELU MLP; Qwen2.5-VL: RMSNorm, SwiGLU)."""
    h, inter = tower.width, tower.intermediate
    upcast = 4 * h if tower.rms_norm and compute < 4 else 0
    return {
        "block input": (1, compute * h),
        "norm upcasts (float32)": (2 if upcast else 0, upcast),
        "norm outputs": (2, 4 * h if tower.rms_norm else compute * h),
        "qkv": (1, 3 * compute * h),
        "q, k after rotary (float32)": (2, 4 * h),
        "attention output, proj input": (2, compute * h),
        "MLP intermediates": (4 if tower.swiglu else 3, compute * inter),
    }


def forward_working(tower: Tower, compute: int) -> float:
    """Bytes per token live at once in a layer's forward without a graph: the residual, the
    normalised input and three intermediate-size tensors of the MLP (act(gate), up and
    their product; the attention's q, k, v and output are smaller)."""
    return compute * (2 * tower.width + 3 * tower.intermediate)


def saved_bytes(tensors: Tensors) -> float:
    """Bytes per token of a layer's saved tensors."""
    return sum(count * each for count, each in tensors.values())


def heap_growth(tensors: Tensors, tokens: float) -> float:
    """What one layer run with gradients under checkpointing adds to a CPU process's heap:
    HEAP_GROWTH_PER_LAYER of the tensors it allocates below glibc's largest mmap threshold."""
    small = sum(
        count * each * tokens
        for count, each in tensors.values()
        if each * tokens < MMAP_THRESHOLD_MAX
    )
    return HEAP_GROWTH_PER_LAYER * small


# ---------------------------------------------------------------- stages


@dataclass(frozen=True)
class Process:
    """Where and how a process runs."""

    device: str = "cpu"  # "cpu" or "cuda"
    processes: int = 1

    @property
    def cpu(self) -> bool:
        return self.device == "cpu"


@dataclass(frozen=True)
class Chunk:
    """Rows run through the model at once: the padded sequence length and the image patches."""

    rows: int
    sequence: float  # tokens per row, padding included
    patches: float  # vision patches in the whole chunk

    @property
    def tokens(self) -> float:
        return self.rows * self.sequence


@dataclass
class StageMemory:
    """One stage's peak: named parts in bytes, and what it leaves held (CPU heap)."""

    name: str
    parts: dict[str, float]
    describes: str = ""
    heap_left: float = 0.0  # CPU: free heap this stage leaves held for the next one
    notes: list[str] = field(default_factory=list)

    @property
    def total(self) -> float:
        return sum(self.parts.values())

    def line(self) -> str:
        parts = ", ".join(
            f"{name} {value / GIB:.2f}" for name, value in self.parts.items() if value
        )
        what = f" ({self.describes})" if self.describes else ""
        return f"{self.name}{what}: {self.total / GIB:.2f} GiB = {parts}"


def _runtime(process: Process, parts: dict[str, float]) -> None:
    if process.cpu:
        parts["runtime (python, torch)"] = CPU_RUNTIME_BYTES
    else:
        parts["CUDA context"] = CUDA_CONTEXT_BYTES
        if process.processes > 1:
            parts["NCCL"] = NCCL_BYTES


RUNTIME_PARTS = ("weights", "runtime (python, torch)", "CUDA context", "NCCL")


def _held(process: Process, parts: dict[str, float], heap_held: float) -> None:
    """CPU: a stage's own allocations reuse the free heap an earlier stage of the process
    left; only what the held heap exceeds them by is added."""
    own = sum(value for name, value in parts.items() if name not in RUNTIME_PARTS)
    if process.cpu and heap_held > own:
        parts["heap held from an earlier stage"] = heap_held - own


def _inputs(
    shape: ModelShape, chunk: Chunk, compute: int, packed: bool = False, running_patches: float | None = None
) -> float:
    """The batch's tensors outside the layers: pixel values, the vision output and the input
    embeddings. Pixel values: float32 as the processor returns them; `packed` (the
    embedder's uint8 pixels), uint8 for the whole batch plus the float32 values made on the
    device for the patches that run at once (`running_patches`, default: all of them)."""
    image_tokens = chunk.patches / shape.patches_per_token
    if packed:
        running = chunk.patches if running_patches is None else running_patches
        pixels = PACKED_BYTES_PER_PATCH * chunk.patches + 4 * PIXEL_VALUES_PER_PATCH * running
    else:
        pixels = 4 * PIXEL_VALUES_PER_PATCH * chunk.patches
    return pixels + compute * shape.text.width * (image_tokens + chunk.tokens)


def weights_resident(
    shape: ModelShape, process: Process, weight_bytes: int, lm_head: bool
) -> float:
    """Weights in memory: all on a GPU; on a CPU (memory-mapped safetensors) the pages
    touched, which leaves out the input-embedding table where no LM head reads it."""
    count = shape.parameters
    if process.cpu and not lm_head:
        count -= shape.embedding_parameters
    return count * weight_bytes


def training_memory(
    shape: ModelShape,
    process: Process,
    *,
    weight_bytes: int,
    compute_bytes: int,
    lora: bool,
    trainable: int,
    vision_trains: bool,
    lora_inputs: tuple[int, ...],
    lora_dropout: float,
    gradient_checkpointing: bool,
    chunk: Chunk,
    batch_rows: int,
    batch_patches: float,
    grad_cache: bool,
    heap_held: float = 0.0,
) -> StageMemory:
    """A training step's peak per process. `chunk`: the largest set of rows that runs
    through the model at once (a GradCache chunk, else the whole contrastive batch)."""
    parts: dict[str, float] = {}
    weights = weights_resident(shape, process, weight_bytes, lm_head=False)
    if lora:
        parts["weights"] = weights
        parts["LoRA adapters (float32)"] = 4 * trainable
    else:
        parts["weights"] = weights
    parts["gradients (float32)"] = 4 * trainable
    parts["AdamW states (float32)"] = 8 * trainable
    if not lora and compute_bytes < weight_bytes:
        parts["autocast weight copies"] = compute_bytes * trainable
    text, vision = shape.text, shape.vision
    text_tensors = text_layer_tensors(text, compute_bytes, lora_inputs, lora_dropout)
    vision_tensors = vision_block_tensors(vision, compute_bytes)
    text_saved, vision_saved = saved_bytes(text_tensors), saved_bytes(vision_tensors)
    tokens, patches = chunk.tokens, chunk.patches if vision_trains else 0.0
    if gradient_checkpointing:
        kept = compute_bytes * (
            text.layers * text.width * tokens + vision.layers * vision.width * patches
        )
        backward = compute_bytes * 2 * (text.width + text.intermediate)
        recompute = max((text_saved + backward) * tokens, (vision_saved + backward) * patches)
        activations = kept + recompute
    else:
        activations = text.layers * text_saved * tokens + vision.layers * vision_saved * patches
    if not vision_trains:  # the frozen tower still runs: its working set, no graph
        activations = max(activations, forward_working(vision, compute_bytes) * chunk.patches)
    parts["activations"] = activations
    inputs = _inputs(
        shape, Chunk(batch_rows, chunk.sequence, batch_patches), compute_bytes,
        packed=shape.packed_pixels, running_patches=chunk.patches,
    )  # fmt: skip
    if grad_cache:
        inputs += 2 * 4 * batch_rows * text.width  # cached embeddings and their gradients
    parts["inputs"] = inputs
    if process.processes > 1:
        parts["DDP gradient buckets"] = 4 * trainable
    _runtime(process, parts)
    growth = 0.0
    if process.cpu and gradient_checkpointing:
        growth = text.layers * heap_growth(text_tensors, tokens) + vision.layers * heap_growth(
            vision_tensors, patches
        )
        parts["allocator: heap growth"] = growth
    _held(process, parts, heap_held)
    return StageMemory("training", parts, heap_left=max(heap_held, HEAP_KEPT_AFTER_STAGE * growth))


def forward_memory(
    shape: ModelShape,
    process: Process,
    *,
    weight_bytes: int,
    compute_bytes: int,
    chunk: Chunk,
    adapters: int = 0,
    heap_held: float = 0.0,
    name: str = "encoding",
) -> StageMemory:
    """An embedder forward without a graph (encoding for mining and evaluation): the
    weights (`adapters`: unmerged LoRA parameters, float32) and one layer's working set."""
    parts: dict[str, float] = {
        "weights": weights_resident(shape, process, weight_bytes, lm_head=False)
    }
    if adapters:
        parts["LoRA adapters (float32)"] = 4 * adapters
    parts["activations"] = max(
        forward_working(shape.text, compute_bytes) * chunk.tokens,
        forward_working(shape.vision, compute_bytes) * chunk.patches,
    )
    parts["inputs"] = _inputs(shape, chunk, compute_bytes, packed=shape.packed_pixels)
    _runtime(process, parts)
    _held(process, parts, heap_held)
    return StageMemory(name, parts, heap_left=heap_held)


def generation_memory(
    shape: ModelShape,
    process: Process,
    *,
    weight_bytes: int,
    pairs: int,
    prompt_tokens: float,
    patches_per_prompt: float,
    new_tokens: int,
    vocab: int,
    heap_held: float = 0.0,
    name: str = "captioning",
    cache: bool = True,
) -> StageMemory:
    """The foundation model's generation (or, `cache=False`, its one-forward yes/no
    answers): weights with the LM head, KV cache, the prefill's working set and the last
    position's float32 logits."""
    compute = weight_bytes
    text = shape.text
    parts: dict[str, float] = {
        "weights": weights_resident(shape, process, weight_bytes, lm_head=True)
    }
    if cache:
        kv = text.kv_heads * text.head_dim
        # DynamicCache grows by torch.cat: one layer's old and new tensors coexist.
        parts["KV cache"] = (
            pairs * (prompt_tokens + new_tokens) * 2 * kv * compute * (text.layers + 1)
        )
    prefill = Chunk(pairs, prompt_tokens, pairs * patches_per_prompt)
    parts["activations"] = max(
        forward_working(text, compute) * prefill.tokens,
        forward_working(shape.vision, compute) * prefill.patches,
    )
    parts["inputs"] = _inputs(shape, prefill, compute) + 4 * pairs * vocab
    _runtime(process, parts)
    _held(process, parts, heap_held)
    return StageMemory(name, parts, heap_left=heap_held)


def job_peak(stages: list[StageMemory]) -> StageMemory:
    return max(stages, key=lambda stage: stage.total)
