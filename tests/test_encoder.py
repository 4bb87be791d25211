"""The VLM2Vec encoder: pooling, batch independence, save/load round trips."""

import json

import pytest
import torch
from PIL import Image

from src.arguments import ModelArguments
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
    encoder = build_encoder(tiny_qwen, ModelArguments(lora=lora, lora_r=4))
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
    # trainable: a LoRA adapter stays unmerged (merging changes float order; test_loading)
    reloaded = load_encoder(tmp_path / "ckpt", dtype="float32", trainable=True).eval()
    with torch.no_grad():
        after = reloaded(**inputs)
    assert torch.equal(before, after)
    # The next round trains exactly what round 0 trained: an untied LM head left trainable
    # gets no gradient (DDP stops on it) and would cost optimizer memory for nothing.
    trains = {n for n, p in encoder.named_parameters() if p.requires_grad}
    assert trains == {n for n, p in reloaded.named_parameters() if p.requires_grad}
    assert not any("lm_head" in name for name in trains)


def test_a_released_lora_adapter_checkpoint_loads_with_its_intended_embeddings(tiny_qwen, tmp_path):
    """VLM2Vec releases are LoRA adapters beside their base's config and processor files."""
    from peft import LoraConfig, get_peft_model
    from transformers import Qwen2VLForConditionalGeneration

    base = Qwen2VLForConditionalGeneration.from_pretrained(tiny_qwen, dtype=torch.float32)
    adapted = get_peft_model(
        base, LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    )
    release = tmp_path / "released"
    adapted.save_pretrained(release)
    reference = build_encoder(tiny_qwen, dtype="float32")
    reference.processor.save_pretrained(release)
    (release / "config.json").write_text((tiny_qwen / "config.json").read_text())
    collator = ContrastiveCollator(reference.processor, reference.backbone)
    inputs = collator.pack_queries(images(2), CAPTIONS[:2])[0]
    # the model itself takes the processor's float32 pixels (the collator packs uint8 ones,
    # which the embedder finishes on the device)
    pixels = reference.backbone.device_pixel_values(reference.processor, inputs["pixel_values"])
    with torch.no_grad():
        expected = torch.nn.functional.normalize(
            adapted.get_base_model().model(**inputs | {"pixel_values": pixels}).last_hidden_state[:, -1].float(),
            dim=-1,
        )
        loaded = build_encoder(release, dtype="float32").eval()
        assert torch.allclose(loaded(**inputs), expected, atol=1e-5)
        assert not torch.allclose(reference.eval()(**inputs), expected, atol=1e-3)
    adapter_config = json.loads((release / "adapter_config.json").read_text())
    adapter_config["base_model_name_or_path"] = "Org/not-a-local-path"
    (release / "adapter_config.json").write_text(json.dumps(adapter_config))
    with pytest.raises(FileNotFoundError, match="--base_model_name"):
        build_encoder(release, dtype="float32")
    assert torch.allclose(
        build_encoder(release, ModelArguments(base_model_name=str(tiny_qwen))).eval()(**inputs),
        expected,
        atol=1e-5,
    )
