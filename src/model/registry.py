"""Backbone registry: which transformers classes load a checkpoint, and how inputs are packed.

Every entry loads through the ordinary transformers classes from a local path, so the
offline tiny checkpoints and real checkpoints (Qwen2-VL-2B-Instruct, VLM2Vec-Qwen2VL-2B,
LLaVA-NeXT) go through the same code.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
import transformers
from peft import PeftConfig
from PIL import Image
from transformers import (
    AutoConfig,
    AutoProcessor,
    BatchFeature,
    PretrainedConfig,
    PreTrainedTokenizerBase,
    ProcessorMixin,
)
from transformers.models.qwen2_vl.image_processing_qwen2_vl import Qwen2VLImageProcessor

from src.errors import ArgumentError

ADAPTER_CONFIG_NAME = "adapter_config.json"


@dataclass(frozen=True)
class Backbone:
    """One vision-language architecture the embedder can wrap.

    `pixel_budget`: its processor resizes each image into [min_pixels, max_pixels]
    (Qwen2-VL and Qwen2.5-VL: one image token per 28 x 28 pixels, docs/notes.md); LLaVA-NeXT
    tiles images on its own grid instead. `runs_every_parameter`: every weight of the
    embedder (the language-model head aside, which is frozen) is in every forward; LLaVA-NeXT
    takes the CLIP tower's second-to-last layer, so the last one never runs, and DDP must
    look for parameters without a gradient after each backward.
    """

    name: str
    model_class_name: str
    image_token: str
    pixel_budget: bool = False
    runs_every_parameter: bool = True

    @property
    def model_class(self) -> type:
        return getattr(transformers, self.model_class_name)

    def pack(
        self, processor: ProcessorMixin, texts: list[str], images: list[Image.Image] | None
    ) -> BatchFeature:
        """Tokenise a batch of texts, each holding one image token, with its images (None:
        texts without an image token, the evaluation's text-only queries).

        The processor expands each image token to the image's patch tokens and returns
        everything the model's forward needs (`mm_token_type_ids` and `image_grid_thw`
        for Qwen, `image_sizes` for LLaVA-NeXT).

        Where `uint8_pixels(processor)`, the images are resized as the processor resizes
        them (on the CPU, in uint8) and patchified, but not rescaled, normalised or copied
        per temporal frame: `pixel_values` is uint8, one eighth of the float32 the processor
        would return (each patch is copied twice, 4 bytes a value), so DataLoader workers
        pass little through shared memory and little is copied to the device;
        `device_pixel_values` finishes them there, to the processor's own values.
        """
        if self.uint8_pixels(processor):
            return processor(
                text=texts,
                images=images,
                padding=True,
                return_tensors="pt",
                do_rescale=False,
                do_normalize=False,
                temporal_patch_size=1,
            )
        return processor(text=texts, images=images, padding=True, return_tensors="pt")

    def uint8_pixels(self, processor: ProcessorMixin) -> bool:
        """Whether `pack` leaves the pixels uint8 for the device to normalise: Qwen's
        torchvision-backed image processor, which patchifies without changing the dtype
        (the PIL backend patchifies in float32; LLaVA-NeXT tiles on its own grid)."""
        image_processor = getattr(processor, "image_processor", None)
        return (
            self.pixel_budget
            and isinstance(image_processor, Qwen2VLImageProcessor)
            and getattr(image_processor, "backend", None) == "torchvision"
        )

    @staticmethod
    def device_pixel_values(processor: ProcessorMixin, pixel_values: torch.Tensor) -> torch.Tensor:
        """The processor's float32 `pixel_values` from `pack`'s uint8 ones, computed where
        they are (on the device): its own rescale-and-normalise (torchvision, the rescale
        fused into mean and std) over each patch, then each patch copied to the temporal
        frames, in the processor's layout (channel, frame, row, column). On the CPU the
        values equal the processor's bit for bit (tests/test_collator.py)."""
        image_processor = processor.image_processor
        patch, frames = image_processor.patch_size, image_processor.temporal_patch_size
        rows, values = pixel_values.shape
        channels = values // (patch * patch)
        normalised = image_processor.rescale_and_normalize(
            pixel_values.reshape(rows, channels, patch, patch),
            image_processor.do_rescale,
            image_processor.rescale_factor,
            image_processor.do_normalize,
            tuple(image_processor.image_mean),
            tuple(image_processor.image_std),
        )
        return (
            normalised.unsqueeze(2)
            .expand(-1, -1, frames, -1, -1)
            .reshape(rows, channels * frames * patch * patch)
        )


    def apply_pixel_budget(
        self, processor: ProcessorMixin, min_pixels: int | None, max_pixels: int | None
    ) -> None:
        """Set the processor's pixel budget (None: keep that bound as it is).

        transformers 5 keeps it in `image_processor.size` (shortest_edge / longest_edge are
        the pixel bounds); `from_pretrained(size=...)` would be silently ignored for the
        released Qwen files, so it is set on the loaded processor (docs/notes.md).
        """
        if min_pixels is None and max_pixels is None:
            return
        if not self.pixel_budget:
            raise ArgumentError(
                f"--min_pixels / --max_pixels apply to Qwen2-VL and Qwen2.5-VL processors; "
                f"{self.name} tiles images on its own grid"
            )
        size = dict(processor.image_processor.size)
        if min_pixels is not None:
            size["shortest_edge"] = min_pixels
        if max_pixels is not None:
            size["longest_edge"] = max_pixels
        processor.image_processor.size = {
            "shortest_edge": size["shortest_edge"],
            "longest_edge": size["longest_edge"],
        }

    @staticmethod
    def pixel_bounds(processor: ProcessorMixin) -> tuple[int | None, int | None]:
        size = dict(processor.image_processor.size)
        return size.get("shortest_edge"), size.get("longest_edge")


def image_token_count(processor: ProcessorMixin, width: int, height: int) -> int:
    """Image tokens the processor gives one image of this size (its own rule, exactly)."""
    return processor._get_num_multimodal_tokens(image_sizes=[(height, width)])[
        "num_image_tokens"
    ][0]


# The embedder's pixel budget for Qwen2-VL / Qwen2.5-VL (one image token per 28 x 28 pixels).
# The minimum is VLM2Vec's `resize_min_pixels` (28*28*4); its maximum, 28*28*1280 (1,280
# tokens), would give a CIRR photo 400-650 tokens and a 64-query step with targets and a
# negative ~100k image tokens. 448 x 448 (256 tokens) keeps the NLVR2 photos of CIRR
# (mostly below 0.5 MP) and FashionIQ's product shots near their own resolution, and is
# the foundation model's budget too (--foundation_max_pixels).
DEFAULT_MIN_PIXELS = 28 * 28 * 4
DEFAULT_MAX_PIXELS = 448 * 448

BACKBONES: dict[str, Backbone] = {
    "qwen2_vl": Backbone(
        "qwen2_vl", "Qwen2VLForConditionalGeneration", "<|image_pad|>", pixel_budget=True
    ),
    "qwen2_5_vl": Backbone(
        "qwen2_5_vl", "Qwen2_5_VLForConditionalGeneration", "<|image_pad|>", pixel_budget=True
    ),
    "llava_next": Backbone(
        "llava_next", "LlavaNextForConditionalGeneration", "<image>", runs_every_parameter=False
    ),
}


# Spellings users bring from the original design (and from --foundation_model_backbone).
BACKBONE_ALIASES = {"llava": "llava_next"}


def get_backbone(name: str) -> Backbone:
    if name not in BACKBONES:
        raise ValueError(f"unknown --model_backbone {name!r}; choose one of {sorted(BACKBONES)}")
    return BACKBONES[name]


def adapter_base(path: str | Path) -> str | None:
    """The base model a LoRA adapter directory names (None: not an adapter)."""
    if not (Path(path) / ADAPTER_CONFIG_NAME).is_file():
        return None
    return PeftConfig.from_pretrained(str(path)).base_model_name_or_path


def checkpoint_config(path: str | Path) -> PretrainedConfig:
    """The config of a local checkpoint; an adapter without its own config gives its base's."""
    path = Path(path)
    base = adapter_base(path)
    if base is not None and not (path / "config.json").is_file():
        path = Path(base)
    if not (path / "config.json").is_file():
        raise FileNotFoundError(
            f"{path / 'config.json'} not found: models are read from local checkpoint directories"
        )
    return AutoConfig.from_pretrained(str(path))


def detect_backbone(model_path: str | Path) -> str:
    """The backbone named by a checkpoint's config (`model_type`; an adapter's base's)."""
    model_type = checkpoint_config(model_path).model_type
    if model_type not in BACKBONES:
        raise ValueError(
            f"{model_path}: model_type {model_type!r} is not a supported backbone "
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


def special_tokens(tokenizer: PreTrainedTokenizerBase) -> list[str]:
    """The tokenizer's special tokens (such as <|image_pad|>), longest first: text holding
    one would be read as that token, not as words."""
    added = [token.content for token in tokenizer.added_tokens_decoder.values() if token.special]
    return sorted(set(tokenizer.all_special_tokens) | set(added), key=len, reverse=True)
