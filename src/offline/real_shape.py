"""Real architectures (src/model/architectures/) as checkpoints without downloads.

The public config of a released model with random weights, and a processor with the
released image processor settings, so that the real module names, head counts, vision
merger, image-token counts and processor paths run on this machine. The tokenizer is the
tiny checkpoints' BPE (src/offline/tiny.py): fine where only shapes matter (it reads
every prompt as whole words, but its token ids are not the released ones), and the config's
special-token ids are set from it. Nothing here says anything about a model's quality.

    python -m src.offline.real_shape --arch qwen2_vl_2b --output_dir DIR [--weights]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from transformers import (
    LlavaNextImageProcessor,
    LlavaNextProcessor,
    PretrainedConfig,
    ProcessorMixin,
    Qwen2_5_VLProcessor,
    Qwen2VLImageProcessor,
    Qwen2VLProcessor,
    Qwen2VLVideoProcessor,
)

from src.model.architectures import (
    architecture_config,
    build_model,
    depth_reduced,
    load_architecture,
)
from src.offline.tiny import (
    LLAVA_CHAT_TEMPLATE,
    QWEN_CHAT_TEMPLATE,
    llava_tokenizer,
    qwen_tokenizer,
    vision_token_ids,
)

_QWEN_IMAGE_KEYS = ("min_pixels", "max_pixels", "patch_size", "temporal_patch_size", "merge_size",
                    "image_mean", "image_std")  # fmt: skip
_LLAVA_IMAGE_KEYS = ("size", "crop_size", "image_grid_pinpoints", "image_mean", "image_std",
                     "resample", "do_pad")  # fmt: skip


def real_shape_processor(name: str) -> ProcessorMixin:
    """The released image processor settings of `name` with the tiny BPE tokenizer."""
    architecture = load_architecture(name)
    pre, model_type = architecture["preprocessor"], architecture["config"]["model_type"]
    if model_type == "llava_next":
        image_processor = LlavaNextImageProcessor(**{k: pre[k] for k in _LLAVA_IMAGE_KEYS})
        vision = architecture["config"]["vision_config"]
        return LlavaNextProcessor(
            image_processor,
            llava_tokenizer(),
            patch_size=vision["patch_size"],
            vision_feature_select_strategy=architecture["config"]["vision_feature_select_strategy"],
            num_additional_image_tokens=1,
            chat_template=LLAVA_CHAT_TEMPLATE,
        )
    settings = {k: pre[k] for k in _QWEN_IMAGE_KEYS}
    image_processor = Qwen2VLImageProcessor(**settings)
    video_processor = Qwen2VLVideoProcessor(**settings)
    processor_class = Qwen2_5_VLProcessor if model_type == "qwen2_5_vl" else Qwen2VLProcessor
    return processor_class(
        image_processor, qwen_tokenizer(), video_processor, chat_template=QWEN_CHAT_TEMPLATE
    )


def real_shape_config(
    name: str, processor: ProcessorMixin, depth: tuple[int, int] | None = None
) -> PretrainedConfig:
    """The released config of `name`, its special-token ids set from `processor`'s tokenizer
    (`depth`: (text layers, vision blocks) instead of the released ones)."""
    config = architecture_config(name)
    if depth is not None:
        config = depth_reduced(config, *depth)
    tokenizer = processor.tokenizer
    if config.model_type == "llava_next":
        config.image_token_index = tokenizer.convert_tokens_to_ids("<image>")
        config.text_config.pad_token_id = tokenizer.pad_token_id
        return config
    for key, value in vision_token_ids(tokenizer).items():
        setattr(config, key, value)
    text = config.text_config
    text.bos_token_id = tokenizer.convert_tokens_to_ids("<|endoftext|>")
    text.eos_token_id, text.pad_token_id = tokenizer.eos_token_id, tokenizer.pad_token_id
    return config


def build_real_shape(
    name: str,
    dtype: torch.dtype = torch.bfloat16,
    device: str = "cpu",
    seed: int = 0,
    depth: tuple[int, int] | None = None,
) -> tuple[torch.nn.Module, ProcessorMixin]:
    """The architecture `name` with random weights (seeded) and its processor."""
    processor = real_shape_processor(name)
    config = real_shape_config(name, processor, depth)
    torch.manual_seed(seed)
    model = build_model(config, dtype, device)
    model.generation_config.pad_token_id = processor.tokenizer.pad_token_id
    return model, processor


def write_real_shape_checkpoint(
    name: str,
    output_dir: str | Path,
    weights: bool = False,
    dtype: torch.dtype = torch.bfloat16,
    depth: tuple[int, int] | None = None,
) -> Path:
    """A checkpoint directory of `name`: config and processor, and random weights if asked
    (without them it serves `--plan` and every check that reads configs only); `depth`:
    (text layers, vision blocks) instead of the released ones."""
    output_dir = Path(output_dir)
    processor = real_shape_processor(name)
    config = real_shape_config(name, processor, depth)
    output_dir.mkdir(parents=True, exist_ok=True)
    if weights:
        model, processor = build_real_shape(name, dtype, depth=depth)
        model.save_pretrained(output_dir)
    else:
        config.save_pretrained(output_dir)
    processor.save_pretrained(output_dir)
    return output_dir


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--arch", required=True)
    parser.add_argument("--output_dir", required=True, type=Path)
    parser.add_argument("--weights", action="store_true", help="also random weights (bf16)")
    args = parser.parse_args(argv)
    print(write_real_shape_checkpoint(args.arch, args.output_dir, args.weights))


if __name__ == "__main__":
    main()
