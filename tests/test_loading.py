"""Models load straight onto their process's device; inference runs LoRA merged into a
float32 base and unmerged on a bfloat16 one; the attention kernel is a checked, recorded
choice."""

from __future__ import annotations

import pytest
import torch
from peft import PeftModel
from PIL import Image
from transformers import AutoModelForImageTextToText, Qwen2VLForConditionalGeneration

import src.model.encoder as encoder_module
from src.arguments import AugmentArguments, ModelArguments
from src.augment.captioners import load_captioner
from src.data.images import load_image
from src.errors import ArgumentError
from src.model.encoder import build_encoder, load_embedder_config, load_encoder, load_weights_into
from src.model.prompts import query_text


class Loaded(Exception):
    """Raised by a stubbed loader once it has seen what it was asked for."""


@pytest.fixture
def second_gpu(monkeypatch):
    """This process is local rank 1 of a node whose GPUs run bfloat16 natively (simulated); every
    from_pretrained records its arguments and stops."""
    monkeypatch.setenv("LOCAL_RANK", "1")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (9, 0))
    asked: list[dict] = []

    def record(*args, **kwargs):
        asked.append(kwargs)
        raise Loaded

    for cls in (Qwen2VLForConditionalGeneration, AutoModelForImageTextToText):
        monkeypatch.setattr(cls, "from_pretrained", record)
    return asked


def test_the_embedder_loads_onto_its_process_device(tiny_qwen, second_gpu):
    with pytest.raises(Loaded):
        build_encoder(tiny_qwen, ModelArguments(lora=True))
    assert second_gpu[-1]["device_map"] == {"": "cuda:1"}
    assert second_gpu[-1]["dtype"] == torch.bfloat16  # a frozen LoRA base
    with pytest.raises(Loaded):
        build_encoder(tiny_qwen)
    assert second_gpu[-1]["device_map"] == {"": "cuda:1"}
    assert second_gpu[-1]["dtype"] == torch.float32  # full fine-tuning keeps float32 weights


def test_a_saved_lora_embedder_loads_its_base_onto_the_device(lora_checkpoint, second_gpu):
    with pytest.raises(Loaded):
        load_encoder(lora_checkpoint)
    assert second_gpu[-1]["device_map"] == {"": "cuda:1"}


def test_the_captioner_loads_onto_its_process_device(tiny_qwen, second_gpu):
    with pytest.raises(Loaded):
        load_captioner("qwen2_vl", tiny_qwen, AugmentArguments())
    assert second_gpu[-1]["device_map"] == {"": "cuda:1"}


@pytest.fixture(scope="module")
def lora_checkpoint(tiny_qwen, tmp_path_factory):
    """A LoRA embedder whose adapter is not zero (LoRA starts with B = 0)."""
    torch.manual_seed(0)
    encoder = build_encoder(tiny_qwen, ModelArguments(lora=True, lora_r=4))
    with torch.no_grad():
        for name, parameter in encoder.model.named_parameters():
            if "lora_B" in name:
                parameter.normal_(0, 0.05)
    directory = tmp_path_factory.mktemp("lora") / "checkpoint"
    encoder.save(directory)
    return directory


def test_inference_runs_the_adapter_merged_with_the_same_embeddings(
    lora_checkpoint, tiny_qwen, small_train_split
):
    merged = load_encoder(lora_checkpoint)
    unmerged = load_encoder(lora_checkpoint, trainable=True).eval()
    assert not isinstance(merged.model, PeftModel)
    assert not any("lora_" in name for name, _ in merged.model.named_parameters())
    assert isinstance(unmerged.model, PeftModel)
    triplets = small_train_split.triplets[:6]
    images = [load_image(small_train_split.images[t.reference]) for t in triplets]
    texts = [query_text(merged.backbone.image_token, "cirr", t.caption) for t in triplets]
    inputs = merged.backbone.pack(merged.processor, texts, images)
    with torch.no_grad():
        a, b = merged(**inputs), unmerged(**inputs)
        without_adapter = build_encoder(tiny_qwen).eval()(**inputs)
    assert torch.allclose(a, b, atol=1e-5)
    assert (a - without_adapter).abs().max() > 1e-3  # the adapter is in both


def test_a_bfloat16_base_keeps_small_adapter_updates_in_inference(tiny_qwen, tmp_path):
    """A trained adapter's updates are often below half a bfloat16 step of the weight they
    add to: merged into a bfloat16 base they round away, and mining and evaluation measure
    another model than the one trained. Inference on a bfloat16 base gives the trained
    model's embeddings (cosine >= 0.999) and the same top 10 of a 200-image gallery."""
    from peft.tuners.lora import Linear as LoraLinear

    torch.manual_seed(0)
    encoder = build_encoder(tiny_qwen, ModelArguments(lora=True, lora_r=8))
    below_half_step = []
    with torch.no_grad():
        for module in encoder.model.modules():
            if isinstance(module, LoraLinear):
                lora_b = module.lora_B["default"].weight
                lora_b.normal_(0, 3e-6)
                delta = module.scaling["default"] * lora_b @ module.lora_A["default"].weight
                weight = module.base_layer.weight.to(torch.bfloat16).float()
                half_step = torch.ldexp(torch.ones_like(weight), torch.frexp(weight.abs())[1] - 9)
                below_half_step.append((delta.abs() < half_step).float().mean())
    assert torch.stack(below_half_step).mean() > 0.9  # most updates are below half a step
    encoder.save(tmp_path / "checkpoint")
    generator = torch.Generator().manual_seed(0)
    gallery = [to_image(torch.randint(0, 256, (56, 56, 3), generator=generator, dtype=torch.uint8)) for _ in range(200)]

    def embeddings(model) -> torch.Tensor:
        texts = [query_text(model.backbone.image_token, "cirr", "the same")] * 50
        with torch.no_grad():
            return torch.cat([
                model(**model.backbone.pack(model.processor, texts, gallery[i : i + 50])).float()
                for i in range(0, len(gallery), 50)
            ])  # fmt: skip

    trained = embeddings(load_encoder(tmp_path / "checkpoint", dtype="bfloat16", trainable=True).eval())
    inference = load_encoder(tmp_path / "checkpoint", dtype="bfloat16")
    served = embeddings(inference)
    assert torch.nn.functional.cosine_similarity(served, trained).min() >= 0.999
    top10 = lambda e: (e[:40] @ e.T).topk(11).indices[:, 1:]  # noqa: E731
    assert torch.equal(top10(served), top10(trained))
    assert isinstance(inference.model, PeftModel)  # unmerged, as trained
    assert not isinstance(load_encoder(tmp_path / "checkpoint", dtype="float32").model, PeftModel)


def test_trainer_resume_loads_the_saved_weights_in_place(lora_checkpoint, tiny_qwen, tmp_path, monkeypatch):
    """Resume loads into the live encoder: a LoRA adapter straight from its safetensors, a
    full model through from_pretrained onto its device; no second encoder is built."""
    monkeypatch.setattr(encoder_module, "load_encoder", lambda *a, **k: pytest.fail("a second model"))
    fresh = build_encoder(tiny_qwen, ModelArguments(lora=True, lora_r=4))
    load_weights_into(fresh, lora_checkpoint)
    expected = PeftModel.from_pretrained(
        Qwen2VLForConditionalGeneration.from_pretrained(tiny_qwen), str(lora_checkpoint)
    ).state_dict()
    state = fresh.model.state_dict()
    lora = [name for name in state if "lora_" in name]
    assert lora and all(torch.equal(state[name], expected[name]) for name in lora)

    full = build_encoder(tiny_qwen)
    with torch.no_grad():
        for parameter in full.parameters():
            parameter.add_(0.01)
    full.save(tmp_path / "full")
    again = build_encoder(tiny_qwen)
    load_weights_into(again, tmp_path / "full")
    assert all(torch.equal(p, q) for p, q in zip(full.parameters(), again.parameters(), strict=True))


def test_the_attention_kernel_is_checked_and_recorded(tiny_qwen, tmp_path, monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None if name == "flash_attn" else real(name))
    with pytest.raises(ArgumentError, match="flash-attn package"):
        ModelArguments(attn_implementation="flash_attention_2")
    encoder = build_encoder(tiny_qwen, ModelArguments(attn_implementation="eager"))
    assert encoder.model.config._attn_implementation == "eager"
    encoder.save(tmp_path / "eager")
    assert load_embedder_config(tmp_path / "eager").attn_implementation == "eager"
    assert load_encoder(tmp_path / "eager").model.config._attn_implementation == "eager"


def to_image(pixels: torch.Tensor) -> Image.Image:
    return Image.fromarray(pixels.numpy())
