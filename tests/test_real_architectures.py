"""Real architectures without downloads: the shipped configs build on the meta device with
their published parameter counts, LoRA target names resolve on each, and the embedder's
pixel budget gives exactly the image-token counts of Qwen2-VL's resizing rule."""

from __future__ import annotations

import math

import pytest
from PIL import Image

from src.arguments import DEFAULT_LORA_TARGETS, ModelArguments
from src.data.records import Split
from src.model.architectures import (
    architecture_config,
    build_model,
    count_parameters,
    load_architecture,
    shipped_architectures,
    vision_parameters,
)
from src.model.encoder import build_encoder, check_lora_targets, lora_target_counts
from src.model.registry import get_backbone, image_token_count, load_processor
from src.retrieval.encode import EmbeddingCache, gallery_rows

# Published sizes (model pages of the architectures; see each JSON's "published_parameters").
PUBLISHED = {"qwen2_vl_2b": 2.209e9, "qwen2_vl_7b": 8.29e9, "llava_next_mistral_7b": 7.57e9}


@pytest.mark.parametrize("name", shipped_architectures())
def test_shipped_configs_build_on_meta_with_their_parameter_counts(name):
    architecture = load_architecture(name)
    model = build_model(architecture_config(name))
    assert next(model.parameters()).device.type == "meta"
    total = count_parameters(model)
    assert total == architecture["parameters"]
    if name in PUBLISHED:
        assert total == pytest.approx(PUBLISHED[name], rel=0.005)
    assert 3e8 < vision_parameters(model) < 7e8
    targets = DEFAULT_LORA_TARGETS.split(",")
    counts = lora_target_counts(model, targets, skip_vision=True)
    layers = architecture["config"].get("num_hidden_layers") or architecture["config"]["text_config"].get("num_hidden_layers", 32)
    assert all(count == layers for count in counts.values()), counts  # one per language layer
    check_lora_targets(model, targets, skip_vision=True)


def smart_resize_tokens(width: int, height: int, min_pixels: int, max_pixels: int) -> int:
    """Qwen2-VL's rule, written out here: sides to multiples of 28, scaled into the budget
    (down with floor, up with ceil); one token per 28 x 28."""
    factor = 28
    h, w = round(height / factor) * factor, round(width / factor) * factor
    if h * w > max_pixels:
        beta = math.sqrt(height * width / max_pixels)
        h = max(factor, math.floor(height / beta / factor) * factor)
        w = max(factor, math.floor(width / beta / factor) * factor)
    elif h * w < min_pixels:
        beta = math.sqrt(min_pixels / (height * width))
        h, w = math.ceil(height * beta / factor) * factor, math.ceil(width * beta / factor) * factor
    return (h // factor) * (w // factor)


@pytest.mark.parametrize("budget", [(3136, 200704), (3136, 28 * 28 * 64), (28 * 28 * 100, 28 * 28 * 400)])
def test_the_pixel_budget_gives_the_rule_s_token_counts_and_changes_the_cache_key(
    tiny_qwen, tmp_path, budget
):
    min_pixels, max_pixels = budget
    encoder = build_encoder(tiny_qwen, ModelArguments(min_pixels=min_pixels, max_pixels=max_pixels))
    assert (encoder.config.min_pixels, encoder.config.max_pixels) == budget
    processor, backbone = encoder.processor, encoder.backbone
    image_id = processor.tokenizer.convert_tokens_to_ids(backbone.image_token)
    for width, height in [(640, 480), (1024, 768), (500, 900), (256, 256), (1, 1), (3000, 40)]:
        expected = smart_resize_tokens(width, height, min_pixels, max_pixels)
        assert image_token_count(processor, width, height) == expected
        batch = backbone.pack(processor, [f"{backbone.image_token} x"], [Image.new("RGB", (width, height))])
        assert int((batch["input_ids"] == image_id).sum()) == expected
    encoder.save(tmp_path / "saved")  # a saved checkpoint keeps its budget
    reloaded = load_processor(tmp_path / "saved")
    assert get_backbone("qwen2_vl").pixel_bounds(reloaded) == budget
    rows = gallery_rows(Split("x", [], {"a": "a.png"}), backbone.image_token)
    key = EmbeddingCache.key(rows, "val", "w", "qwen2_vl", processor)
    backbone.apply_pixel_budget(processor, None, max_pixels * 2)
    assert EmbeddingCache.key(rows, "val", "w", "qwen2_vl", processor) != key
