"""FLOPs of the embedder's forward and backward, counted from what actually runs.

`embedder_flops` walks the matrix-multiplying layers of the model the embedder wraps
(nn.Linear and the patch embedding's Conv3d, LoRA's `lora_A` / `lora_B` included), reads
from each weight whether it is trainable, and charges, per forward shape (one GradCache
chunk, or one batch):

- forward: 2 x (weights of the layer) x (rows it runs on): the vision tower's blocks and
  its patch embedding over the image patches, the merger over the merged tokens (patches /
  spatial_merge_size^2), the language model's attention projections and MLP over the
  sequence tokens. The embedding lookup is no matrix product and is not counted; the LM
  head is not counted because the embedder never runs it (`VLM2VecEncoder.forward` runs
  the trunk and pools the last token's state). Attention's score and value products are
  counted too: 2 x 2 x s^2 x d per layer and sequence (d = heads x head dim of the
  queries; s: a sequence's tokens in the language model, an image's patches in the vision
  tower, a window's patches in Qwen2.5-VL's windowed blocks), the full s x s square, as
  the usual MFU convention does (no halving for the causal mask).
- backward, per layer: the weight gradient (1 x its forward) if its weight is trainable,
  plus the input gradient (1 x its forward) if a gradient must flow into its input, which
  is when some trainable weight lies upstream of it (earlier in the same block, or in any
  earlier block). So a trainable layer costs 2 x forward, a frozen layer that gradients
  pass through (the language model under LoRA) 1 x, and a frozen layer with nothing
  trainable upstream 0 (Qwen2-VL's vision tower under LoRA with the default targets);
  LoRA's own small products are counted the same way. Attention backward: 2 x its
  forward where its queries, keys and values need gradients.

Two totals come out. **Model FLOPs** (what MFU is reported against, the usual
convention): the forward and the backward above over the real tokens (padding excluded),
each forward once. **Hardware FLOPs**: what the GPU is made to run: padded tokens (each
chunk runs rows x its padded length in the language model), GradCache's extra forward
without gradients, gradient checkpointing's recomputation (one more forward of every
checkpointed block the backward runs through, less the block's last projection when
that is frozen: PyTorch's non-reentrant checkpoint stops recomputing once it has what the
backward needs), and the backward autograd really runs: with gradient checkpointing the
token embeddings' output requires gradients (the embedder's
`activation_checkpointing_enable`), so under LoRA the backward computes input gradients
through the whole language model, where the model FLOPs count them only after the first
adapted layer; a frozen vision tower runs no backward. Elementwise work (norms, activations,
softmax, rotary embeddings), the pooling and the contrastive loss's small products are
not counted.

Supported: the Qwen2-VL and Qwen2.5-VL module layouts (a layer it does not know raises
ValueError rather than being miscounted). tests/test_flops.py checks the count against
a hand count on a small config, against torch's FlopCounterMode on a real step, and
against FlopCounterMode on the meta device (no weights) for both totals.

Why a walk and not FlopCounterMode on the meta device: there it reproduces both totals
exactly (the model FLOPs as the plain step of each row alone without its padding; small
config and the Qwen2-VL 2B shape, LoRA and full, checkpointing on and off, GradCache: ratio
1 to the last FLOP), but not as it stands. transformers reads values from the inputs:
`get_vision_position_ids` calls `grid_thw.tolist()` ("Cannot copy out of meta tensor";
with the grid alone on the CPU, the vision rotary embedding mixes CPU and meta tensors),
the eager vision attention splits by `cu_seqlens.tolist()`, the image placeholder check
calls `.item()`, and so does SDPA's causal-mask shortcut (`_ignore_causal_mask_sdpa`). It
runs only with the grid and cu_seqlens real on the CPU, the vision and 3D text position ids
computed there and passed in (transformers' precomputed `image_*` kwargs), the check off
(TRANSFORMERS_DISABLE_TORCH_CHECK=1), eager attention, and a meta twin of the embedder
(same adapters, trainable weights, checkpointing); it takes 1.5 to 6.5 s per 2B step on a
2-core CPU against under 0.1 s here, and `parts` and the refusal of unknown layouts would
need these name rules anyway. So the walk stays and the meta count tests it.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field

import torch
from torch import nn

# A LoRA-wrapped layer's parts: its frozen base and the adapter's two small products.
_LORA_PART = re.compile(r"^(?P<layer>.*)\.(?P<role>base_layer|lora_A|lora_B)(?:\.[^.]+)?$")
_BLOCKS = (
    (re.compile(r"(?:^|\.)visual\.patch_embed\.(?P<leaf>proj)$"), "patch_embed"),
    (re.compile(r"(?:^|\.)visual\.blocks\.(?P<index>\d+)\.(?P<leaf>.+)$"), "vision"),
    (re.compile(r"(?:^|\.)visual\.merger\.(?P<leaf>.+)$"), "merger"),
    (re.compile(r"(?:^|\.)embed_tokens$"), "embed"),
    (re.compile(r"(?:^|\.)layers\.(?P<index>\d+)\.(?P<leaf>.+)$"), "text"),
    (re.compile(r"(?:^|\.)language_model\.norm$"), "final"),
)
# Where each layer (and norm) sits inside its block, in forward order: layers at one
# position read the same input; attention's products sit at 0.5, lora_B at +0.25.
_POSITIONS = {
    "patch_embed": {"proj": 0},
    "vision": {"norm1": -0.5, "attn.qkv": 0, "attn.proj": 1, "norm2": 1.5, "mlp.fc1": 2,
               "mlp.gate_proj": 2, "mlp.up_proj": 2, "mlp.fc2": 3, "mlp.down_proj": 3},
    "merger": {"ln_q": -0.5, "mlp.0": 0, "mlp.2": 1},
    "embed": {"": 0},
    "text": {"input_layernorm": -0.5, "self_attn.q_proj": 0, "self_attn.k_proj": 0,
             "self_attn.v_proj": 0, "self_attn.o_proj": 1, "post_attention_layernorm": 1.5,
             "mlp.gate_proj": 2, "mlp.up_proj": 2, "mlp.down_proj": 3},
    "final": {"": 0},
}  # fmt: skip
_ORDER = ("patch_embed", "vision", "merger", "embed", "text", "final")
_ATTENTION = 0.5
_CHECKPOINTED = ("vision", "text")  # transformers' GradientCheckpointingLayer blocks
_NOT_RUN = re.compile(r"(?:^|\.)lm_head$")

Block = tuple[str, int]  # (kind, index)


@dataclass(frozen=True)
class ForwardShape:
    """What one forward of the embedder runs over: a batch, or one GradCache chunk."""

    lengths: tuple[int, ...]  # real tokens of each sequence (padding excluded)
    padded_length: int  # the language model runs len(lengths) x padded_length positions
    image_grids: tuple[tuple[int, int, int], ...] = ()  # (t, h, w) patches of each image

    @classmethod
    def of(cls, inputs: Mapping[str, torch.Tensor]) -> ForwardShape:
        """The shape of collated inputs (attention_mask, image_grid_thw)."""
        mask = inputs["attention_mask"]
        grids = inputs.get("image_grid_thw")
        return cls(
            tuple(int(n) for n in mask.sum(1).tolist()),
            int(mask.shape[1]),
            tuple(tuple(int(x) for x in row) for row in grids.tolist())
            if grids is not None
            else (),
        )


@dataclass(frozen=True)
class StepFlops:
    """FLOPs of a step (forward and backward, or forward only): model and hardware counts."""

    forward: float  # model FLOPs: each forward once, real tokens
    backward: float  # model FLOPs: the gradients that trainable weights need, real tokens
    hardware_forward: float  # the forward (with gradients when training), padded tokens
    hardware_backward: float  # the backward autograd runs, padded tokens
    recomputation: float  # gradient checkpointing's extra forward of checkpointed blocks
    grad_cache_forward: float  # GradCache's first forward, without gradients
    parts: dict[str, float] = field(default_factory=dict)  # model FLOPs by component

    @property
    def model(self) -> float:
        return self.forward + self.backward

    @property
    def hardware(self) -> float:
        return (self.hardware_forward + self.hardware_backward + self.recomputation
                + self.grad_cache_forward)  # fmt: skip

    def as_dict(self) -> dict:
        return asdict(self) | {"model": self.model, "hardware": self.hardware}


@dataclass(frozen=True)
class _Layer:
    name: str
    block: Block
    position: float
    weights: int  # elements of the weight: 2 x weights x rows FLOPs per forward
    in_features: int
    trainable: bool
    role: str  # "base", "lora_A" or "lora_B"


def _where(module_name: str) -> tuple[Block, float, str] | None:
    """(block, position, role) of a module by its name; None for what the embedder never runs."""
    lora = _LORA_PART.match(module_name)
    name, role = (lora["layer"], lora["role"]) if lora else (module_name, "base")
    role = "base" if role == "base_layer" else role
    if _NOT_RUN.search(name):
        return None
    for pattern, kind in _BLOCKS:
        match = pattern.search(name)
        if not match:
            continue
        groups = match.groupdict()
        leaf = groups.get("leaf") or ""
        if leaf in _POSITIONS[kind]:
            position = _POSITIONS[kind][leaf] + (0.25 if role == "lora_B" else 0.0)
            return (kind, int(groups.get("index") or 0)), position, role
    raise ValueError(f"no FLOPs rule for {module_name!r} (Qwen2-VL and Qwen2.5-VL layouts only)")


def _order(block: Block) -> tuple[int, int]:
    return _ORDER.index(block[0]), block[1]


def _vision_sequences(config, grid: tuple[int, int, int], block: int) -> list[int]:
    """Patches per attention sequence of one image in vision block `block`."""
    t, h, w = grid
    vision = config.vision_config
    full = getattr(vision, "fullatt_block_indexes", None)
    if config.model_type != "qwen2_5_vl" or full is None or block in full:
        return [h * w] * t  # each frame of each image attends within itself
    merge = vision.spatial_merge_size
    size = vision.window_size // merge // vision.patch_size  # window side in merged tokens
    rows = [min(size, h // merge - s) for s in range(0, h // merge, size)]
    cols = [min(size, w // merge - s) for s in range(0, w // merge, size)]
    return [r * c * merge * merge for r in rows for c in cols] * t


def embedder_flops(
    model: nn.Module,
    forwards: Sequence[ForwardShape],
    *,
    backward: bool = True,
    gradient_checkpointing: bool = False,
    grad_cache: bool = False,
) -> StepFlops:
    """FLOPs of running `model` (an embedder, or the image-text-to-text model it wraps, LoRA
    adapters included; on any device, `meta` too) over `forwards` (one per GradCache
    chunk), forward only or forward and backward, with the weights trainable as they are
    set. The module docstring says what is counted and what model and hardware FLOPs are."""
    config = next((m.config for m in model.modules()
                   if hasattr(getattr(m, "config", None), "vision_config")), None)  # fmt: skip
    if config is None or config.model_type not in ("qwen2_vl", "qwen2_5_vl"):
        kind = getattr(config, "model_type", type(model).__name__)
        raise ValueError(f"no FLOPs rule for {kind} (Qwen2-VL and Qwen2.5-VL layouts only)")
    merge = config.vision_config.spatial_merge_size
    layers = []
    for name, module in model.named_modules():
        if isinstance(module, (nn.Linear, nn.Conv3d)) and (where := _where(name)) is not None:
            in_features = module.weight[0].numel()
            layers.append(_Layer(name, where[0], where[1], module.weight.numel(), in_features,
                                 module.weight.requires_grad, where[2]))  # fmt: skip
    trainable = []  # (block, position) of every trainable parameter
    for name, parameter in model.named_parameters():
        if parameter.requires_grad and (where := _where(name.rsplit(".", 1)[0])) is not None:
            trainable.append(where[:2])
    blocks = sorted({layer.block for layer in layers}, key=_order)
    # Attention width (query heads x head dim) of each block that attends.
    width = {}
    for layer in layers:
        if layer.role == "base" and layer.name.endswith(("attn.qkv", "attn.qkv.base_layer")):
            width[layer.block] = layer.weights // layer.in_features // 3
        elif layer.role == "base" and layer.name.endswith(("q_proj", "q_proj.base_layer")):
            width[layer.block] = layer.weights // layer.in_features

    def gets_gradient(block: Block, position: float, hardware: bool) -> bool:
        """Whether the input at (block, position) needs (model) or gets (hardware) a gradient."""
        if block[0] == "patch_embed":
            return False  # pixel values
        if hardware and gradient_checkpointing and block[0] == "text":
            return True  # the token embeddings' output requires grad (activation_checkpointing_enable)
        return any(_order(b) < _order(block) or (b == block and p < position) for b, p in trainable)

    totals = dict.fromkeys(("forward", "backward", "hardware_forward", "hardware_backward",
                            "recomputation", "grad_cache_forward"), 0.0)  # fmt: skip
    parts: dict[str, float] = {}
    for shape in forwards:
        patches = sum(t * h * w for t, h, w in shape.image_grids)
        for hardware in (False, True):
            rows = {"patch_embed": patches, "vision": patches, "merger": patches // merge**2,
                    "text": len(shape.lengths) * shape.padded_length if hardware else sum(shape.lengths)}  # fmt: skip
            forward_of = dict.fromkeys(blocks, 0.0)
            last_of: dict[Block, tuple[float, float]] = {}  # (position, FLOPs) of the last product
            backward_through: set[Block] = set()  # blocks the backward runs through
            back = 0.0
            for layer in layers:
                flops = 2.0 * layer.weights * rows[layer.block[0]]
                grads = layer.trainable + gets_gradient(layer.block, layer.position, hardware)
                forward_of[layer.block] += flops
                back += grads * flops
                if grads:
                    backward_through.add(layer.block)
                if layer.position >= last_of.get(layer.block, (-1.0, 0.0))[0]:
                    last_of[layer.block] = (layer.position, flops)
                if not hardware:
                    kind = "lora" if layer.role != "base" else layer.block[0]
                    parts[kind] = parts.get(kind, 0.0) + flops * (1 + backward * grads)
            for block, d in width.items():
                if block[0] == "vision":
                    squares = sum(s * s for grid in shape.image_grids
                                  for s in _vision_sequences(config, grid, block[1]))  # fmt: skip
                else:
                    squares = (len(shape.lengths) * shape.padded_length**2 if hardware
                               else sum(n * n for n in shape.lengths))  # fmt: skip
                flops = 4.0 * squares * d
                grads = 2 * gets_gradient(block, _ATTENTION, hardware)
                forward_of[block] += flops
                back += grads * flops
                if not hardware:
                    kind = f"{block[0]}_attention"
                    parts[kind] = parts.get(kind, 0.0) + flops * (1 + backward * grads)
            forward = sum(forward_of.values())
            if not hardware:
                totals["forward"] += forward
                totals["backward"] += back * backward
                continue
            totals["hardware_forward"] += forward
            totals["grad_cache_forward"] += forward * grad_cache
            if backward:
                totals["hardware_backward"] += back
                if gradient_checkpointing:
                    totals["recomputation"] += sum(
                        forward_of[b] - last_of[b][1]
                        for b in backward_through
                        if b[0] in _CHECKPOINTED
                    )
    return StepFlops(**totals, parts=parts)
