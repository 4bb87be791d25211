"""Real architectures without downloads: their public configs, built with random weights.

`src/model/architectures/{name}.json` holds the public `config.json` and image processor
settings of each released checkpoint (its Hugging Face id is in "source", the parameter
count transformers builds from it in "parameters", and what the model pages state in
"published_parameters"):

- qwen2_vl_2b, qwen2_vl_7b (Qwen2-VL-2B / 7B-Instruct), qwen2_5_vl_3b, qwen2_5_vl_7b
  (Qwen2.5-VL-3B / 7B-Instruct), llava_next_mistral_7b (llava-v1.6-mistral-7b-hf).

`build_model` instantiates an architecture with random weights, on the `meta` device when
only shapes are needed (no memory, instant), so the real module names, head counts and
vision merger are exercised without any weights; `--plan` counts parameters the same way
for any local checkpoint's config.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn
from transformers import AutoConfig, PretrainedConfig

from src.model.encoder import is_vision_module
from src.model.registry import checkpoint_config, detect_backbone, get_backbone

ARCHITECTURES_DIR = Path(__file__).with_name("architectures")


def shipped_architectures() -> list[str]:
    return sorted(path.stem for path in ARCHITECTURES_DIR.glob("*.json"))


def load_architecture(name: str) -> dict:
    """{"name", "source", "parameters", "published_parameters", "config", "preprocessor"}."""
    path = ARCHITECTURES_DIR / f"{name}.json"
    if not path.is_file():
        raise ValueError(f"unknown architecture {name!r}; shipped: {shipped_architectures()}")
    return json.loads(path.read_text())


def architecture_config(name: str) -> PretrainedConfig:
    """The transformers config of a shipped architecture."""
    config = dict(load_architecture(name)["config"])
    return AutoConfig.for_model(config.pop("model_type"), **config)


def depth_reduced(config: PretrainedConfig, text_layers: int, vision_layers: int) -> PretrainedConfig:
    """`config` with fewer language-model layers and vision blocks (the same widths, heads,
    vocabulary and merger): the real shapes at a size whose activations outweigh its weights
    (benchmarks/real_shape_check.py --activations)."""
    config = config.__class__.from_dict(config.to_dict())
    text = getattr(config, "text_config", config)
    text.num_hidden_layers = text_layers
    if getattr(text, "layer_types", None):
        text.layer_types = text.layer_types[:text_layers]
    if getattr(text, "max_window_layers", None) is not None:
        text.max_window_layers = min(text.max_window_layers, text_layers)
    vision = config.vision_config
    if hasattr(vision, "depth"):
        vision.depth = vision_layers
        if getattr(vision, "fullatt_block_indexes", None) is not None:
            vision.fullatt_block_indexes = [i for i in vision.fullatt_block_indexes if i < vision_layers]
    else:
        vision.num_hidden_layers = vision_layers
    return config


def build_model(
    config: PretrainedConfig, dtype: torch.dtype = torch.bfloat16, device: str = "meta"
) -> nn.Module:
    """The image-text-to-text model of `config` with random weights (on `device`)."""
    backbone = get_backbone(config.model_type)
    with torch.device(device):
        return backbone.model_class._from_config(config, dtype=dtype)


def build_from_path(path: str | Path, dtype: torch.dtype = torch.bfloat16) -> nn.Module:
    """A local checkpoint's architecture on the `meta` device (its config only)."""
    config = checkpoint_config(path)
    detect_backbone(path)  # a clear error for an unsupported model_type
    return build_model(config, dtype)


def count_parameters(model: nn.Module, trainable_only: bool = False) -> int:
    """Distinct parameters (tied weights once)."""
    seen, total = set(), 0
    for parameter in model.parameters():
        if id(parameter) in seen or (trainable_only and not parameter.requires_grad):
            continue
        seen.add(id(parameter))
        total += parameter.numel()
    return total


def vision_parameters(model: nn.Module) -> int:
    return sum(p.numel() for name, p in model.named_parameters() if is_vision_module(name))


def architecture_signature(config: PretrainedConfig) -> str:
    """An architecture's identity for measured-throughput lookups (benchmarks/results/)."""
    text = getattr(config, "text_config", config)
    vision = config.vision_config
    vision_width = getattr(vision, "embed_dim", None) or vision.hidden_size
    vision_depth = getattr(vision, "depth", None) or vision.num_hidden_layers
    return (
        f"{config.model_type}-text{text.hidden_size}x{text.num_hidden_layers}"
        f"-vision{vision_width}x{vision_depth}"
    )
