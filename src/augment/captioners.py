"""Captioners: what writes a new modification text for a (reference, hard negative) pair,
and answers the consistency check's yes/no questions about it.

- `qwen2_vl`, `qwen2_5_vl`: one conversation holding both images, built with the
  processor's chat template and `qwen_vl_utils.process_vision_info`, each image within
  `--foundation_max_pixels`;
- `llava` (LLaVA / LLaVA-NeXT, trained on one image per prompt): both images side by side
  in one picture with a visible bar between them, the prompt saying which side is which;
- `generic`: any checkpoint that `AutoModelForImageTextToText` loads and whose processor
  has a chat template: two images where its processor takes them, side by side otherwise;
- a `DatasetCaptioner`: one that reads the dataset instead of running a model, handed in
  by whoever builds the job (src/offline/ hands in the synthetic benchmark's scene oracle,
  a stand-in for a perfect foundation model, which works only on that benchmark).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import torch
from PIL import Image, ImageDraw
from qwen_vl_utils import process_vision_info
from transformers import AutoConfig, AutoModelForImageTextToText, BatchFeature, ProcessorMixin

from src.arguments import FOUNDATION_MODEL_BACKBONES, AugmentArguments
from src.augment.consistency import answer_token_ids, yes_probability
from src.augment.pairs import CaptionPair
from src.augment.prompts import NO_ANSWERS, YES_ANSWERS, caption_prompt, consistency_question
from src.data.images import load_image
from src.errors import ArgumentError
from src.model.encoder import default_device, logged_loading, resolve_dtype
from src.model.registry import load_processor
from src.records import Generation

logger = logging.getLogger("augment")

QWEN_BACKBONES = ("qwen2_vl", "qwen2_5_vl")
TWO_IMAGES, SIDE_BY_SIDE = "two_images", "side_by_side"


class Captioner(Protocol):
    """Writes texts for pairs and answers yes/no questions about (pair, text)."""

    name: str

    def generate(self, pairs: list[CaptionPair]) -> list[Generation]:
        """One Generation per pair (`finished`: the text ended on its own rather than at
        the token limit)."""
        ...

    def yes_probabilities(self, pairs: list[CaptionPair], texts: list[str]) -> list[float]:
        """P(yes) that each text describes the change from the pair's reference to its negative."""
        ...

    def describe(self) -> dict:
        """How it runs (layout, device, dtype), for the stats."""
        ...


@dataclass(frozen=True)
class DatasetCaptioner:
    """A captioner that reads the dataset instead of running a model.

    `works_on(dataset_root)` says whether it can caption that dataset (it is then the
    default when no foundation model is named), `requirement` what it needs, in words;
    `load(dataset_root)` builds it; `settings` are what changes its texts (recorded in the
    augmentation file's meta).
    """

    name: str
    requirement: str
    works_on: Callable[[Path], bool]
    load: Callable[[Path], Captioner]
    settings: dict | None = None


def detect_foundation_backbone(model_path: str | Path) -> str:
    """The captioner for a checkpoint, from its config's `model_type`."""
    if not (Path(model_path) / "config.json").is_file():
        raise ArgumentError(
            f"--foundation_model_path {model_path}: no config.json there; pass a local "
            "checkpoint directory"
        )
    try:
        model_type = AutoConfig.from_pretrained(str(model_path)).model_type
    except (OSError, ValueError) as error:
        raise ArgumentError(f"--foundation_model_path {model_path}: its config does not load ({error})") from None
    if model_type in QWEN_BACKBONES:
        return model_type
    if model_type in ("llava", "llava_next"):
        return "llava"
    return "generic"


def resolve_captioner(
    backbone: str | None,
    model_path: str | None,
    dataset_root: str | Path,
    dataset_captioners: Mapping[str, DatasetCaptioner],
) -> str:
    """The captioner of this run (flags already checked alone), or a clear error where none
    may be chosen silently: on real data a foundation model is never picked by default."""
    root = Path(dataset_root)
    if backbone is None:
        if model_path is not None:
            return detect_foundation_backbone(model_path)
        for captioner in dataset_captioners.values():
            if captioner.works_on(root):
                return captioner.name
        raise ArgumentError(
            "no foundation model for augmentation on real data: pass --foundation_model_path "
            "(a local chat vision-language checkpoint), or --foundation_model_backbone none to "
            "skip augmentation"
        )
    if backbone in FOUNDATION_MODEL_BACKBONES:
        detect_foundation_backbone(model_path)  # the directory holds a config
        return backbone
    if backbone == "none":
        return backbone
    captioner = dataset_captioners.get(backbone)
    if captioner is None:
        raise ArgumentError(f"--foundation_model_backbone {backbone} is not available in this run")
    if not captioner.works_on(root):
        raise ArgumentError(
            f"--foundation_model_backbone {backbone} {captioner.requirement}, which {root} is "
            "not; pass --foundation_model_path for real data"
        )
    return backbone


# ---------------------------------------------------------------- images


def fit_pixels(image: Image.Image, max_pixels: int) -> Image.Image:
    """`image` scaled down (aspect kept) to at most `max_pixels` pixels."""
    width, height = image.size
    if width * height <= max_pixels:
        return image
    scale = math.sqrt(max_pixels / (width * height))
    size = (max(1, int(width * scale)), max(1, int(height * scale)))
    return image.resize(size, Image.Resampling.BICUBIC)


def side_by_side(left: Image.Image, right: Image.Image, max_pixels: int) -> Image.Image:
    """One picture: `left`, a white bar edged in black, `right`; both at the same height,
    each within `max_pixels`. The bar stays visible on light and dark images alike."""
    left, right = fit_pixels(left, max_pixels), fit_pixels(right, max_pixels)
    height = min(left.height, right.height)
    left = left.resize((max(1, round(left.width * height / left.height)), height))
    right = right.resize((max(1, round(right.width * height / right.height)), height))
    bar = max(4, round(height / 14))
    canvas = Image.new("RGB", (left.width + bar + right.width, height), "white")
    canvas.paste(left, (0, 0))
    canvas.paste(right, (left.width + bar, 0))
    draw = ImageDraw.Draw(canvas)
    edge = max(1, bar // 4)
    draw.rectangle((left.width, 0, left.width + edge - 1, height), fill="black")
    draw.rectangle((left.width + bar - edge, 0, left.width + bar - 1, height), fill="black")
    return canvas


def _conversation(images: list[Image.Image], text: str, max_pixels: int | None) -> list[dict]:
    budget = {} if max_pixels is None else {"max_pixels": max_pixels}
    content = [{"type": "image", "image": image, **budget} for image in images]
    return [{"role": "user", "content": [*content, {"type": "text", "text": text}]}]


def takes_two_images(processor: ProcessorMixin) -> bool:
    """Whether a processor's chat template and image processing accept two images in one prompt."""
    probe = Image.new("RGB", (56, 56), "gray")
    try:
        prompt = processor.apply_chat_template(
            _conversation([probe, probe], "?", None), tokenize=False, add_generation_prompt=True
        )
        processor(text=[prompt], images=[probe, probe], return_tensors="pt")
    except Exception as error:  # any refusal means: show it one picture
        logger.info("the processor does not take two images (%s); side by side instead", error)
        return False
    return True


# ---------------------------------------------------------------- foundation models


class VisionLanguageCaptioner:
    """A chat vision-language model as captioner and yes/no judge."""

    def __init__(
        self,
        name: str,
        model: torch.nn.Module,
        processor: ProcessorMixin,
        layout: str,
        options: AugmentArguments,
    ):
        self.name = name
        self.model = model
        self.processor = processor
        self.layout = layout
        self.options = options
        self.yes_ids, self.no_ids = answer_token_ids(processor.tokenizer, YES_ANSWERS, NO_ANSWERS)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def side_by_side(self) -> bool:
        return self.layout == SIDE_BY_SIDE

    def _images(self, pair: CaptionPair) -> list[Image.Image]:
        reference, negative = load_image(pair.reference_path), load_image(pair.negative_path)
        budget = self.options.foundation_max_pixels
        if self.side_by_side:
            return [side_by_side(reference, negative, budget)]
        if self.name in QWEN_BACKBONES:  # process_vision_info applies the budget
            return [reference, negative]
        return [fit_pixels(reference, budget), fit_pixels(negative, budget)]

    def inputs(self, pairs: list[CaptionPair], texts: list[str]) -> BatchFeature:
        """The model inputs of one prompt per (pair, user text), left-padded, on the model's device."""
        qwen = self.name in QWEN_BACKBONES
        conversations = [
            _conversation(self._images(pair), text, self.options.foundation_max_pixels if qwen else None)
            for pair, text in zip(pairs, texts, strict=True)
        ]
        prompts = [
            self.processor.apply_chat_template(c, tokenize=False, add_generation_prompt=True)
            for c in conversations
        ]
        if qwen:
            patch = getattr(self.processor.image_processor, "patch_size", 14)
            images, _ = process_vision_info(conversations, image_patch_size=patch)
        else:
            images = [item["image"] for c in conversations for item in c[0]["content"][:-1]]
        # A template that writes the bos token itself must not get a second one.
        bos = self.processor.tokenizer.bos_token
        add_special_tokens = not (bos and all(p.startswith(bos) for p in prompts))
        batch = self.processor(
            text=prompts,
            images=images,
            padding=True,
            return_tensors="pt",
            add_special_tokens=add_special_tokens,
        )
        dtype = next(self.model.parameters()).dtype
        return batch.to(device=self.device, dtype=dtype)

    def caption_inputs(self, pairs: list[CaptionPair]) -> BatchFeature:
        mode = self.options.prompt_mode
        prompts = [caption_prompt(p.original_caption, mode, self.side_by_side) for p in pairs]
        return self.inputs(pairs, prompts)

    def _generation_kwargs(self) -> dict:
        options, tokenizer = self.options, self.processor.tokenizer
        pad = (
            tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        )
        kwargs = {"max_new_tokens": options.max_new_tokens, "pad_token_id": pad}
        if options.do_sample:
            # top_k 0: no top-k cut, whatever the checkpoint's generation_config says.
            return kwargs | {
                "do_sample": True,
                "temperature": options.generation_temperature,
                "top_p": options.top_p,
                "top_k": 0,
            }
        return kwargs | {"do_sample": False}

    def _eos_ids(self) -> set[int]:
        eos = self.model.generation_config.eos_token_id
        eos = eos if isinstance(eos, list) else [eos]
        return {i for i in [*eos, self.processor.tokenizer.eos_token_id] if i is not None}

    @torch.inference_mode()
    def generate(self, pairs: list[CaptionPair]) -> list[Generation]:
        inputs = self.caption_inputs(pairs)
        output = self.model.generate(**inputs, **self._generation_kwargs())
        new_tokens = output[:, inputs["input_ids"].shape[1] :].cpu()
        texts = self.processor.tokenizer.batch_decode(new_tokens, skip_special_tokens=True)
        eos = torch.tensor(sorted(self._eos_ids()))
        finished = torch.isin(new_tokens, eos).any(dim=1).tolist()
        return [Generation(text=t, finished=f) for t, f in zip(texts, finished, strict=True)]

    def question_inputs(self, pairs: list[CaptionPair], texts: list[str]) -> BatchFeature:
        questions = [consistency_question(t, self.side_by_side) for t in texts]
        return self.inputs(pairs, questions)

    @torch.inference_mode()
    def yes_probabilities(self, pairs: list[CaptionPair], texts: list[str]) -> list[float]:
        inputs = self.question_inputs(pairs, texts)
        logits = self.model(**inputs, logits_to_keep=1, use_cache=False).logits[:, -1]
        return yes_probability(logits, self.yes_ids, self.no_ids).tolist()

    def describe(self) -> dict:
        return {
            "layout": self.layout,
            "device": str(self.device),
            "dtype": str(next(self.model.parameters()).dtype).removeprefix("torch."),
        }


def load_captioner(
    backbone: str, model_path: str | Path, options: AugmentArguments
) -> VisionLanguageCaptioner:
    """A foundation model as captioner, on the GPU when there is one (bf16 where supported)."""
    processor = load_processor(model_path)
    if not processor.chat_template:
        raise ArgumentError(
            f"--foundation_model_path {model_path}: its processor has no chat template; the "
            "captioners need a chat (instruction-tuned) checkpoint"
        )
    processor.tokenizer.padding_side = "left"  # generation continues every row at the end
    if backbone in QWEN_BACKBONES:
        layout = TWO_IMAGES
    elif backbone == "llava":
        layout = SIDE_BY_SIDE
    else:
        layout = TWO_IMAGES if takes_two_images(processor) else SIDE_BY_SIDE
    device = default_device()
    with logged_loading(f"captioner {model_path}", device):
        model = AutoModelForImageTextToText.from_pretrained(
            str(model_path), dtype=resolve_dtype("auto"), device_map={"": str(device)}
        )
    return VisionLanguageCaptioner(backbone, model.eval(), processor, layout, options)
