"""Pixels leave the DataLoader workers as uint8 and are normalised and patchified on the
device (src/model/registry.py `pack`, `device_pixel_values`): the same values the Hugging
Face processor gives, bit for bit on the CPU, and the same embeddings."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from src.data.collator import ContrastiveCollator
from src.data.image_store import ModelImages
from src.model.encoder import build_encoder
from src.model.prompts import candidate_text, query_text
from src.model.registry import DEFAULT_MAX_PIXELS, DEFAULT_MIN_PIXELS

# A CIRR photo, sizes the processor rounds, one below min_pixels, the tiny model's own.
SIZES = [(640, 480), (300, 200), (500, 900), (57, 31), (56, 56)]


def noise(width: int, height: int, seed: int) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))


@pytest.fixture(scope="module")
def encoder(tiny_qwen):
    """The tiny Qwen2-VL embedder at the default 448 x 448 budget (as a real run uses)."""
    from src.arguments import ModelArguments

    options = ModelArguments(min_pixels=DEFAULT_MIN_PIXELS, max_pixels=DEFAULT_MAX_PIXELS)
    return build_encoder(tiny_qwen, options, dtype="float32").eval()


def test_uint8_pixels_normalised_on_the_device_equal_the_processor(encoder, tmp_path):
    processor, backbone = encoder.processor, encoder.backbone
    images = [noise(w, h, i) for i, (w, h) in enumerate(SIZES)]
    stored = [ModelImages(processor, tmp_path / "store").load_for_model(_saved(image, tmp_path, i))
              for i, image in enumerate(images)]  # fmt: skip
    texts = [query_text(backbone.image_token, "cirr", "make it red")] * len(images)
    for pictures in (images, stored):
        expected = processor(text=texts, images=pictures, padding=True, return_tensors="pt")
        packed = backbone.pack(processor, texts, pictures)
        assert packed["pixel_values"].dtype == torch.uint8
        assert packed["pixel_values"].nbytes * 8 == expected["pixel_values"].nbytes
        for key in ("input_ids", "attention_mask", "mm_token_type_ids", "image_grid_thw"):
            assert torch.equal(packed[key], expected[key]), key
        on_device = backbone.device_pixel_values(processor, packed["pixel_values"])
        assert on_device.dtype == torch.float32
        assert torch.allclose(on_device, expected["pixel_values"], atol=1e-6)
        assert torch.equal(on_device, expected["pixel_values"])  # on the CPU: bit for bit


def test_embeddings_and_training_batches_are_the_same_as_from_the_processor(encoder):
    processor, backbone = encoder.processor, encoder.backbone
    images = [noise(w, h, 10 + i) for i, (w, h) in enumerate(SIZES)]
    texts = [candidate_text(backbone.image_token)] * len(images)
    with torch.no_grad():
        expected = encoder(**processor(text=texts, images=images, padding=True, return_tensors="pt"))
        packed = encoder(**backbone.pack(processor, texts, images))
    assert torch.equal(packed, expected)
    collator = ContrastiveCollator(processor, backbone, chunk_size=2)
    batch = collator([
        {"reference": images[i], "caption": "add a tree", "target": images[i + 1], "negatives": [],
         "target_id": i + 1, "negative_ids": [], "group_id": i, "query_id": i}
        for i in range(3)
    ])  # fmt: skip
    assert all(chunk["pixel_values"].dtype == torch.uint8 for chunk in batch["query_chunks"] + batch["candidate_chunks"])


def _saved(image: Image.Image, folder, index: int) -> str:
    path = folder / f"image{index}.png"
    image.save(path)
    return str(path)
