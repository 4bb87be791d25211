"""The FLOPs counter (src/model/flops.py) against a hand count on a small Qwen2-VL config,
against torch's FlopCounterMode on real forward and backward passes, and against
FlopCounterMode on the meta device (no weights)."""

from __future__ import annotations

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode
from transformers import Qwen2VLConfig, Qwen2VLForConditionalGeneration
from transformers.vision_utils import get_vision_cu_seqlens, get_vision_position_ids

from src.arguments import ModelArguments
from src.model.encoder import EmbedderConfig, embedder_from_model
from src.model.flops import ForwardShape, embedder_flops

IMAGE, VISION_START, VISION_END, TEXT = 5, 3, 4, 7
# One vision block of width 32 (2 heads, MLP 64), merger to 64; two language layers of
# width 64 (4 query heads of 16, 2 key/value heads), MLP 128.
VISION, VISION_MLP, TEXT_WIDTH, KV, TEXT_MLP, RANK = 32, 64, 64, 32, 128, 4
PATCH_IN = 3 * 2 * 14 * 14  # channels x temporal patch x 14 x 14
LENGTHS, PADDED, GRIDS = (20, 30), 30, ((1, 4, 4), (1, 4, 6))


def small_config() -> Qwen2VLConfig:
    return Qwen2VLConfig(
        text_config={"vocab_size": 64, "hidden_size": TEXT_WIDTH, "intermediate_size": TEXT_MLP,
                     "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
                     "rope_parameters": {"rope_type": "default", "rope_theta": 1e6, "mrope_section": [2, 3, 3]}},
        vision_config={"depth": 1, "embed_dim": VISION, "hidden_size": TEXT_WIDTH, "num_heads": 2,
                       "mlp_ratio": 2, "patch_size": 14, "spatial_merge_size": 2, "temporal_patch_size": 2},
        image_token_id=IMAGE, video_token_id=6, vision_start_token_id=VISION_START,
        vision_end_token_id=VISION_END,
    )  # fmt: skip


def embedder(lora: bool, device: str = "cpu"):
    torch.manual_seed(0)
    with torch.device(device):
        model = Qwen2VLForConditionalGeneration._from_config(
            small_config(), attn_implementation="eager", dtype=torch.float32
        )
    options = ModelArguments(lora=lora, lora_r=RANK)
    config = EmbedderConfig.of(options, backbone="qwen2_vl", base_model="small",
                               adapter_base_model=None, min_pixels=None, max_pixels=None)  # fmt: skip
    return embedder_from_model(model, None, config).train()


def inputs() -> dict[str, torch.Tensor]:
    """Left-padded rows: text, one image (its merged tokens), text."""
    rows = []
    for length, (t, h, w) in zip(LENGTHS, GRIDS, strict=True):
        image = t * h * w // 4
        rows.append([TEXT] * 2 + [VISION_START] + [IMAGE] * image + [VISION_END]
                    + [TEXT] * (length - image - 4))  # fmt: skip
    ids = torch.zeros(len(rows), PADDED, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for i, row in enumerate(rows):
        ids[i, PADDED - len(row) :] = torch.tensor(row)
        mask[i, PADDED - len(row) :] = 1
    patches = sum(t * h * w for t, h, w in GRIDS)
    return {
        "input_ids": ids,
        "attention_mask": mask,
        "mm_token_type_ids": (ids == IMAGE).int(),
        "pixel_values": torch.randn(patches, PATCH_IN),
        "image_grid_thw": torch.tensor(GRIDS),
    }


def hand_count(lora: bool) -> tuple[float, float]:
    """(forward, backward) model FLOPs, counted by hand."""
    patches, merged, tokens = 16 + 24, (16 + 24) // 4, 20 + 30
    patch_embed = 2 * PATCH_IN * VISION * patches
    block = 2 * (VISION * 3 * VISION + VISION * VISION + 2 * VISION * VISION_MLP) * patches
    vision_attention = 4 * (16**2 + 24**2) * VISION
    merger = 2 * (4 * VISION * 4 * VISION + 4 * VISION * TEXT_WIDTH) * merged
    qkv = 2 * (TEXT_WIDTH * TEXT_WIDTH + 2 * TEXT_WIDTH * KV) * tokens
    rest = 2 * (TEXT_WIDTH * TEXT_WIDTH + 3 * TEXT_WIDTH * TEXT_MLP) * tokens  # o, gate, up, down
    text_attention = 4 * (20**2 + 30**2) * TEXT_WIDTH
    # LoRA: A (in x r) and B (r x out) on q, k, v, o, gate, up, down of each language layer.
    lora_a_qkv = 2 * 3 * TEXT_WIDTH * RANK * tokens
    lora_b_qkv = 2 * (TEXT_WIDTH + 2 * KV) * RANK * tokens
    lora_rest = 2 * (TEXT_WIDTH + TEXT_WIDTH + TEXT_WIDTH + TEXT_MLP) * RANK * tokens  # A of o, gate, up, down
    lora_rest += 2 * (TEXT_WIDTH + TEXT_MLP + TEXT_MLP + TEXT_WIDTH) * RANK * tokens  # their B
    vision = patch_embed + block + vision_attention + merger
    layer = qkv + rest + text_attention
    if not lora:
        # Everything trainable: 2 x forward backward, except the patch embedding, whose input
        # (the pixels) needs no gradient: its weight gradient only.
        return vision + 2 * layer, patch_embed + 2 * (block + vision_attention + merger) + 2 * 2 * layer
    forward = vision + 2 * (layer + lora_a_qkv + lora_b_qkv + lora_rest)
    # The vision tower is frozen with nothing trainable before it: no backward at all.
    # Layer 0: q, k, v read the embeddings, upstream of every adapter: no input gradient
    # for them and their lora_A (weight gradient only); lora_B 2x (weight and input); from
    # the attention on everything carries gradients: frozen projections 1x, adapters 2x.
    layer0 = lora_a_qkv + 2 * lora_b_qkv + 2 * text_attention + rest + 2 * lora_rest
    # Layer 1: its input carries gradients: every frozen projection 1x, every adapter 2x.
    layer1 = qkv + rest + 2 * (lora_a_qkv + lora_b_qkv + lora_rest) + 2 * text_attention
    return forward, layer0 + layer1


@pytest.mark.parametrize("lora", [True, False], ids=["lora", "full"])
def test_model_flops_match_a_hand_count(lora):
    counted = embedder_flops(embedder(lora), [ForwardShape(LENGTHS, PADDED, GRIDS)])
    forward, backward = hand_count(lora)
    assert counted.forward == forward
    assert counted.backward == backward
    assert counted.model == forward + backward


def test_lora_model_flops_leave_out_the_frozen_vision_tower_and_the_embeddings():
    lora = embedder_flops(embedder(True), [ForwardShape(LENGTHS, PADDED, GRIDS)])
    # parts: model FLOPs (forward + backward) by component; the vision tower runs forward only
    forward_only = embedder_flops(embedder(True), [ForwardShape(LENGTHS, PADDED, GRIDS)], backward=False)
    for part in ("patch_embed", "vision", "merger", "vision_attention"):
        assert lora.parts[part] == forward_only.parts[part] > 0
    assert lora.parts["text"] > forward_only.parts["text"]
    assert "embed" not in lora.parts  # the embedding lookup is no matrix product
    assert forward_only.backward == forward_only.hardware_backward == 0


def test_hardware_flops_count_padding_grad_cache_and_recomputation():
    shape = ForwardShape(LENGTHS, PADDED, GRIDS)
    plain = embedder_flops(embedder(False), [shape])
    cached = embedder_flops(embedder(False), [shape], grad_cache=True, gradient_checkpointing=True)
    assert plain.hardware_forward > plain.forward  # 60 positions run, 50 are real
    assert cached.grad_cache_forward == cached.hardware_forward
    assert 0 < cached.recomputation < cached.hardware_forward
    assert cached.model == plain.model  # model FLOPs ignore how the step is run
    assert ForwardShape.of(inputs()) == shape


@pytest.mark.parametrize("checkpointing", [False, True], ids=["plain", "checkpointing"])
@pytest.mark.parametrize("lora", [True, False], ids=["lora", "full"])
def test_hardware_flops_match_what_torch_counts(lora, checkpointing):
    """FlopCounterMode counts every matrix product autograd runs (eager attention:
    its products are matmuls too), recomputation included."""
    encoder = embedder(lora)
    if checkpointing:
        encoder.activation_checkpointing_enable()
    batch = inputs()
    with FlopCounterMode(display=False) as forward:
        embeddings = encoder(**batch)
    with FlopCounterMode(display=False) as backward:
        embeddings.sum().backward()
    counted = embedder_flops(encoder, [ForwardShape.of(batch)], gradient_checkpointing=checkpointing)
    assert counted.hardware_forward == forward.get_total_flops()
    assert counted.hardware_backward + counted.recomputation == backward.get_total_flops()
    if lora and checkpointing:
        # transformers makes the vision tower's patch embedding require grad: the backward
        # runs through the frozen tower, work the model FLOPs leave out
        tower = counted.parts["vision"] + counted.parts["merger"] + 2 * counted.parts["vision_attention"]
        assert counted.hardware_backward - counted.backward >= tower


def on_meta(encoder, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """`batch` for a meta-device embedder. transformers reads values from four things, which
    meta tensors have not: the vision rotary position ids and cu_seqlens (`.tolist()` of the
    grid), the language model's 3D position ids (the image tokens' places) and the image
    placeholder check (`.item()`, off under TRANSFORMERS_DISABLE_TORCH_CHECK=1). So the grid
    and cu_seqlens stay on the CPU and the position ids are computed there first."""
    trunk = encoder._trunk()
    grid = batch["image_grid_thw"]
    text_positions = trunk.compute_3d_position_ids(
        input_ids=batch["input_ids"], image_grid_thw=grid, video_grid_thw=None, inputs_embeds=None,
        attention_mask=batch["attention_mask"], cache=None, mm_token_type_ids=batch["mm_token_type_ids"],
    )  # fmt: skip
    merge = trunk.config.vision_config.spatial_merge_size
    return {k: v if k == "image_grid_thw" else v.to("meta") for k, v in batch.items()} | {
        "position_ids": text_positions.to("meta"),
        "image_position_ids": get_vision_position_ids(grid, merge).to("meta"),
        "image_cu_seqlens": get_vision_cu_seqlens(grid),
    }


def rows(batch: dict[str, torch.Tensor], padded: bool) -> list[dict[str, torch.Tensor]]:
    """Each row of `batch` alone with its image (GradCache chunks of one), padding cut or kept."""
    sizes = batch["image_grid_thw"].prod(-1).tolist()
    out = []
    for i, size in enumerate(sizes):
        keep = slice(None) if padded else batch["attention_mask"][i].bool()
        row = {k: batch[k][i][keep][None] for k in ("input_ids", "attention_mask", "mm_token_type_ids")}
        start = sum(sizes[:i])
        out.append(row | {"pixel_values": batch["pixel_values"][start : start + size],
                          "image_grid_thw": batch["image_grid_thw"][i : i + 1]})  # fmt: skip
    return out


@pytest.mark.parametrize("lora", [True, False], ids=["lora", "full"])
def test_both_totals_match_flop_counter_mode_on_the_meta_device(lora, monkeypatch):
    """Without weights, FlopCounterMode gives both totals exactly: the model FLOPs as the
    plain step of each row alone without its padding, the hardware FLOPs as the step runs
    (GradCache chunks, their no-grad forward, checkpointing's recomputation)."""
    monkeypatch.setenv("TRANSFORMERS_DISABLE_TORCH_CHECK", "1")
    batch = inputs()
    plain = embedder(lora, "meta")
    assert {p.device.type for p in plain.parameters()} == {"meta"}
    with FlopCounterMode(display=False) as model:
        for row in rows(batch, padded=False):
            plain(**on_meta(plain, row)).sum().backward()
    cached = embedder(lora, "meta")
    cached.activation_checkpointing_enable()
    chunks = rows(batch, padded=True)
    with FlopCounterMode(display=False) as hardware:
        with torch.no_grad():
            for chunk in chunks:
                cached(**on_meta(cached, chunk))
        for chunk in chunks:
            cached(**on_meta(cached, chunk)).sum().backward()
    counted = embedder_flops(cached, [ForwardShape.of(chunk) for chunk in chunks],
                             gradient_checkpointing=True, grad_cache=True)  # fmt: skip
    assert counted.model == model.get_total_flops()
    assert counted.hardware == hardware.get_total_flops()
    assert counted.recomputation > 0 and counted.hardware_forward > counted.forward  # both at work


def test_unknown_layers_and_architectures_are_refused():
    model = torch.nn.Sequential(torch.nn.Linear(4, 4))
    model.config = small_config()
    with pytest.raises(ValueError, match="no FLOPs rule for '0'"):
        embedder_flops(model, [ForwardShape((3,), 3)])
    with pytest.raises(ValueError, match="no FLOPs rule for Sequential"):
        embedder_flops(torch.nn.Sequential(torch.nn.Linear(4, 4)), [ForwardShape((3,), 3)])
