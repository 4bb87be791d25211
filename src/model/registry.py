"""Backbone registry: which transformers classes load a checkpoint, and how inputs are packed.

Every entry loads through the ordinary transformers classes from a local path, so the
offline tiny checkpoints and real checkpoints (Qwen2-VL-2B-Instruct, VLM2Vec-Qwen2VL-2B,
LLaVA-NeXT) go through the same code.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import transformers
from PIL import Image
from transformers import AutoProcessor, BatchFeature, ProcessorMixin


@dataclass(frozen=True)
class Backbone:
    """One vision-language architecture the embedder can wrap."""

    name: str
    model_class_name: str
    image_token: str

    @property
    def model_class(self) -> type:
        return getattr(transformers, self.model_class_name)

    def pack(
        self, processor: ProcessorMixin, texts: list[str], images: list[Image.Image]
    ) -> BatchFeature:
        """Tokenise a batch of texts, each holding one image token, with its images.

        The processor expands each image token to the image's patch tokens and returns
        everything the model's forward needs (`mm_token_type_ids` and `image_grid_thw`
        for Qwen, `image_sizes` for LLaVA-NeXT).
        """
        return processor(text=texts, images=images, padding=True, return_tensors="pt")


BACKBONES: dict[str, Backbone] = {
    "qwen2_vl": Backbone("qwen2_vl", "Qwen2VLForConditionalGeneration", "<|image_pad|>"),
    "qwen2_5_vl": Backbone("qwen2_5_vl", "Qwen2_5_VLForConditionalGeneration", "<|image_pad|>"),
    "llava_next": Backbone("llava_next", "LlavaNextForConditionalGeneration", "<image>"),
}


def get_backbone(name: str) -> Backbone:
    if name not in BACKBONES:
        raise ValueError(f"unknown --model_backbone {name!r}; choose one of {sorted(BACKBONES)}")
    return BACKBONES[name]


def detect_backbone(model_path: str | Path) -> str:
    """The backbone named by a checkpoint's config.json (`model_type`).

    A LoRA adapter directory is followed to its base model.
    """
    path = Path(model_path)
    config_file = path / "config.json"
    if not config_file.is_file():
        adapter_file = path / "adapter_config.json"
        if adapter_file.is_file():
            base = json.loads(adapter_file.read_text())["base_model_name_or_path"]
            return detect_backbone(base)
        raise FileNotFoundError(
            f"{config_file} not found: --model_name must be a local checkpoint directory"
        )
    model_type = json.loads(config_file.read_text()).get("model_type")
    if model_type not in BACKBONES:
        raise ValueError(
            f"{config_file}: model_type {model_type!r} is not a supported backbone "
            f"({sorted(BACKBONES)}); pass --model_backbone explicitly if it is a variant"
        )
    return model_type


def load_processor(path: str | Path) -> ProcessorMixin:
    """Load a checkpoint's processor and refuse a tokenizer-only result.

    `AutoProcessor` silently returns just the tokenizer when the saved processor class is
    unknown (docs/notes.md), which would only fail much later inside the model's forward.
    """
    processor = AutoProcessor.from_pretrained(str(path))
    if not isinstance(processor, ProcessorMixin):
        raise ValueError(
            f"{path}: AutoProcessor returned {type(processor).__name__}, not a multimodal "
            "processor; check processor_config.json / preprocessor_config.json there"
        )
    return processor
