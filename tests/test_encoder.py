"""The VLM2Vec encoder: pooling, batch independence, save/load round trips."""

import pytest
import torch
from PIL import Image

from src.data.collator import ContrastiveCollator
from src.model.encoder import build_encoder, last_token_pool, load_encoder
from src.model.registry import detect_backbone


def images(n, size=56):
    return [Image.new("RGB", (size, size), ((40 * i) % 256, (90 * i) % 256, 60)) for i in range(n)]


CAPTIONS = ["add a small red circle at the top left", "remove the blue square", "make it big", "x"]


def test_last_token_pool_left_and_right_padding():
    hidden = torch.arange(2 * 4 * 1, dtype=torch.float32).reshape(2, 4, 1)
    right = torch.tensor([[1, 1, 0, 0], [1, 1, 1, 1]])
    left = torch.tensor([[0, 0, 1, 1], [1, 1, 1, 1]])
    assert last_token_pool(hidden, right).flatten().tolist() == [1.0, 7.0]
    assert last_token_pool(hidden, left).flatten().tolist() == [3.0, 7.0]


@pytest.mark.parametrize("padding_side", ["left", "right"])
def test_embedding_does_not_depend_on_the_batch(tiny_qwen, padding_side):
    encoder = build_encoder(tiny_qwen, dtype="float32").eval()
    encoder.processor.tokenizer.padding_side = padding_side
    collator = ContrastiveCollator(encoder.processor, encoder.backbone)
    with torch.no_grad():
        batch = encoder(**collator.pack_queries(images(4), CAPTIONS)[0])
        for i in range(4):
            alone = encoder(**collator.pack_queries(images(4)[i : i + 1], CAPTIONS[i : i + 1])[0])
            assert torch.allclose(alone[0], batch[i], atol=1e-5)
    assert torch.allclose(batch.norm(dim=-1), torch.ones(4), atol=1e-5)


def test_backbone_read_from_config(tiny_model_dirs):
    for name, path in tiny_model_dirs.items():
        assert detect_backbone(path) == name


@pytest.mark.parametrize("lora", [False, True])
def test_save_load_round_trip_gives_identical_embeddings(tiny_qwen, tmp_path, lora):
    encoder = build_encoder(tiny_qwen, lora=lora, lora_r=4, dtype="float32")
    with torch.no_grad():
        for p in encoder.parameters():
            if p.requires_grad:
                p.add_(0.01 * torch.randn_like(p))
    encoder.eval()
    collator = ContrastiveCollator(encoder.processor, encoder.backbone)
    inputs = collator.pack_queries(images(3), CAPTIONS[:3])[0]
    with torch.no_grad():
        before = encoder(**inputs)
    encoder.save(tmp_path / "ckpt")
    expected = {"adapter_config.json"} if lora else {"config.json", "model.safetensors"}
    assert expected <= {p.name for p in (tmp_path / "ckpt").iterdir()}
    reloaded = load_encoder(tmp_path / "ckpt", dtype="float32").eval()
    with torch.no_grad():
        after = reloaded(**inputs)
    assert torch.equal(before, after)
