"""Tiny, randomly initialised checkpoints of the supported architectures, built offline.

`build_tiny_checkpoint` writes a standard Hugging Face checkpoint (config, weights,
tokenizer, image processor, processor, chat template) with `save_pretrained`, so that it
loads with `AutoProcessor` / `AutoModelForImageTextToText` in a process that knows
nothing of this project, and the offline default run goes through exactly the code a
real checkpoint goes through (docs/architecture.md, "Models").

    python -m src.offline.tiny --backbone qwen2_vl --output_dir DIR [--image_size 56] [--seed 0]
        [--extra_corpus garments]
"""

from __future__ import annotations

import argparse
import json
import re
import time
from collections.abc import Sequence
from pathlib import Path

import torch
from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
from tokenizers.processors import TemplateProcessing
from transformers import (
    AutoModelForImageTextToText,
    CLIPVisionConfig,
    LlamaConfig,
    LlavaNextConfig,
    LlavaNextImageProcessor,
    LlavaNextProcessor,
    PreTrainedTokenizerFast,
    Qwen2_5_VLConfig,
    Qwen2_5_VLProcessor,
    Qwen2Tokenizer,
    Qwen2VLConfig,
    Qwen2VLImageProcessor,
    Qwen2VLProcessor,
    Qwen2VLVideoProcessor,
)
from transformers.utils import logging as hf_logging

from src.offline.tokenizer_corpus import EXTRA_CORPORA, corpus_texts

BUILDER_VERSION = "tiny-v1"
BACKBONES = ("qwen2_vl", "qwen2_5_vl", "llava_next")
INFO_FILE = "tiny_checkpoint_info.json"

# Widths and depths: docs/notes.md's tiny Qwen2-VL (text 128 x 2 layers, vision 64 x 2).
TEXT_WIDTH = 128
TEXT_LAYERS = 2
TEXT_HEADS = 4
TEXT_KV_HEADS = 2
TEXT_FFN = 256
VISION_WIDTH = 64
VISION_LAYERS = 2
VISION_HEADS = 4
PATCH = 14
MERGE = 2
# Room for the merges: training stops earlier, once every word of the corpus is one token.
MAX_VOCAB = 8192

QWEN_SPECIAL_TOKENS = (
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|vision_pad|>",
    "<|image_pad|>",
    "<|video_pad|>",
)
LLAVA_SPECIAL_TOKENS = ("<unk>", "<s>", "</s>", "<pad>", "<image>")

# The same pre-tokenizer regex as Qwen2Tokenizer (transformers' tokenization_qwen2.py), so
# the BPE trained here tokenizes identically once Qwen2Tokenizer rebuilds it from
# vocab + merges.
PRETOKENIZE_REGEX = (
    r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|"""
    r"""\s*[\r\n]+|\s+(?!\S)|\s+"""
)

# Chat templates in each backbone's style. Newlines are written as '\n' expressions because
# transformers renders templates with trim_blocks, which eats a newline after a block tag.
QWEN_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' }}"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for item in message['content'] %}"
    "{% if item['type'] == 'image' or 'image' in item or 'image_url' in item %}"
    "{{ '<|vision_start|><|image_pad|><|vision_end|>' }}"
    "{% elif item['type'] == 'video' or 'video' in item %}"
    "{{ '<|vision_start|><|video_pad|><|vision_end|>' }}"
    "{% elif 'text' in item %}{{ item['text'] }}"
    "{% endif %}{% endfor %}{% endif %}"
    "{{ '<|im_end|>\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
# Vicuna style of the llava-hf LLaVA-NeXT checkpoints: "USER: <image>\n... ASSISTANT:".
LLAVA_CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{% if message['role'] == 'user' %}{{ 'USER: ' }}"
    "{% elif message['role'] == 'assistant' %}{{ 'ASSISTANT: ' }}{% endif %}"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for item in message['content'] %}"
    "{% if item['type'] == 'image' or 'image' in item or 'image_url' in item %}"
    "{{ '<image>\\n' }}"
    "{% elif 'text' in item %}{{ item['text'] }}"
    "{% endif %}{% endfor %}{% endif %}"
    "{% if message['role'] == 'assistant' %}{{ eos_token }}{% else %}{{ ' ' }}{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ 'ASSISTANT:' }}{% endif %}"
)
# The words the chat templates add around messages, trained into the vocabulary too.
CHAT_TEXTS = ("system\nuser\nassistant\n", "USER: ASSISTANT: USER: ASSISTANT:")


def _train_bpe(special_tokens: tuple[str, ...], extra_texts: Sequence[str] = ()) -> Tokenizer:
    """A byte-level BPE over `corpus_texts()` and `extra_texts` (another domain's sentences)
    in which every corpus word is one token. Without extra texts the training input, and so
    the tokenizer, is exactly the default one.

    Words absent from the corpus would split into letters (docs/notes.md), so the corpus's
    words are also trained once with a leading space: " word" is how a word mid-sentence
    reaches the model. With MAX_VOCAB out of reach, training runs until no pair is left.
    """
    texts = [*corpus_texts(), *extra_texts]
    words = sorted({w for text in texts for w in re.findall(r"[^\W\d_]+", text)})
    tokenizer = Tokenizer(models.BPE())
    tokenizer.normalizer = normalizers.NFC()
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(PRETOKENIZE_REGEX), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=MAX_VOCAB,
        special_tokens=list(special_tokens),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator([*texts, *CHAT_TEXTS, " " + " ".join(words)], trainer)
    return tokenizer


def _vocab_and_merges(tokenizer: Tokenizer) -> tuple[dict[str, int], list[tuple[str, str]]]:
    model = json.loads(tokenizer.to_str())["model"]
    # Qwen2Tokenizer needs merges as tuples when built from a vocab (docs/notes.md).
    return model["vocab"], [tuple(merge) for merge in model["merges"]]


def qwen_tokenizer(extra_texts: Sequence[str] = ()) -> Qwen2Tokenizer:
    vocab, merges = _vocab_and_merges(_train_bpe(QWEN_SPECIAL_TOKENS, extra_texts))
    return Qwen2Tokenizer(
        vocab=vocab,
        merges=merges,
        unk_token=None,
        bos_token=None,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        extra_special_tokens=list(QWEN_SPECIAL_TOKENS[1:]),
        # padding_side is saved only when passed to the constructor (docs/notes.md).
        padding_side="left",
        model_max_length=32768,
    )


def llava_tokenizer(extra_texts: Sequence[str] = ()) -> PreTrainedTokenizerFast:
    backend = _train_bpe(LLAVA_SPECIAL_TOKENS, extra_texts)
    # Like the Llama tokenizers of the llava-hf checkpoints: <s> starts every sequence.
    backend.post_processor = TemplateProcessing(
        single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", backend.token_to_id("<s>"))]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        unk_token="<unk>",
        bos_token="<s>",
        eos_token="</s>",
        pad_token="<pad>",
        extra_special_tokens=["<image>"],
        padding_side="left",
        model_max_length=4096,
    )


def _text_ids(tokenizer) -> dict[str, int | None]:
    return {
        "vocab_size": len(tokenizer),
        "bos_token_id": tokenizer.bos_token_id,
        "eos_token_id": tokenizer.eos_token_id,
        "pad_token_id": tokenizer.pad_token_id,
    }


def _qwen_text_config(tokenizer) -> dict:
    head_dim = TEXT_WIDTH // TEXT_HEADS
    return {
        **_text_ids(tokenizer),
        # Qwen's tokenizer has no bos token; its configs name <|endoftext|> as bos.
        "bos_token_id": tokenizer.convert_tokens_to_ids("<|endoftext|>"),
        "hidden_size": TEXT_WIDTH,
        "intermediate_size": TEXT_FFN,
        "num_hidden_layers": TEXT_LAYERS,
        "num_attention_heads": TEXT_HEADS,
        "num_key_value_heads": TEXT_KV_HEADS,
        "max_position_embeddings": 32768,
        # mrope_section must sum to head_dim / 2 (docs/notes.md); the real split is 1/4, 3/8, 3/8.
        "rope_parameters": {
            "rope_type": "default",
            "rope_theta": 1000000.0,
            "mrope_section": [head_dim // 8, 3 * head_dim // 16, 3 * head_dim // 16],
        },
    }


def vision_token_ids(tokenizer) -> dict[str, int]:
    # The config defaults are the real model's ids (151655, ...): set them from our tokenizer.
    ids = tokenizer.convert_tokens_to_ids
    return {
        "image_token_id": ids("<|image_pad|>"),
        "video_token_id": ids("<|video_pad|>"),
        "vision_start_token_id": ids("<|vision_start|>"),
        "vision_end_token_id": ids("<|vision_end|>"),
    }


def _qwen_processors(image_size: int) -> tuple[Qwen2VLImageProcessor, Qwen2VLVideoProcessor]:
    # min_pixels == max_pixels == S*S: an S x S image keeps its size (other aspect ratios
    # get other grids, docs/notes.md); set here because call-time min/max pixels are deprecated.
    sizes = {
        "min_pixels": image_size * image_size,
        "max_pixels": image_size * image_size,
        "patch_size": PATCH,
        "temporal_patch_size": 2,
        "merge_size": MERGE,
    }
    return Qwen2VLImageProcessor(**sizes), Qwen2VLVideoProcessor(**sizes)


def _build_qwen2_vl(image_size: int, extra_texts: Sequence[str]):
    tokenizer = qwen_tokenizer(extra_texts)
    config = Qwen2VLConfig(
        text_config=_qwen_text_config(tokenizer),
        # vision hidden_size is the merger's output and must equal the text width (docs/notes.md).
        vision_config={
            "depth": VISION_LAYERS,
            "embed_dim": VISION_WIDTH,
            "hidden_size": TEXT_WIDTH,
            "num_heads": VISION_HEADS,
            "mlp_ratio": 2,
            "patch_size": PATCH,
            "spatial_merge_size": MERGE,
            "temporal_patch_size": 2,
        },
        **vision_token_ids(tokenizer),
    )
    image_processor, video_processor = _qwen_processors(image_size)
    processor = Qwen2VLProcessor(
        image_processor, tokenizer, video_processor, chat_template=QWEN_CHAT_TEMPLATE
    )
    return config, processor


def _build_qwen2_5_vl(image_size: int, extra_texts: Sequence[str]):
    tokenizer = qwen_tokenizer(extra_texts)
    config = Qwen2_5_VLConfig(
        text_config=_qwen_text_config(tokenizer),
        # Unlike Qwen2-VL, hidden_size is the tower's own width and out_hidden_size the
        # merger's output (= text width); window_size >= 28 (ZeroDivisionError below) and
        # fullatt_block_indexes must name blocks of a 2-block tower (docs/notes.md).
        vision_config={
            "depth": VISION_LAYERS,
            "hidden_size": VISION_WIDTH,
            "out_hidden_size": TEXT_WIDTH,
            "intermediate_size": 2 * VISION_WIDTH,
            "hidden_act": "silu",
            "num_heads": VISION_HEADS,
            "patch_size": PATCH,
            "spatial_merge_size": MERGE,
            "temporal_patch_size": 2,
            "window_size": 2 * PATCH * MERGE,
            "fullatt_block_indexes": [VISION_LAYERS - 1],
        },
        **vision_token_ids(tokenizer),
    )
    image_processor, video_processor = _qwen_processors(image_size)
    processor = Qwen2_5_VLProcessor(
        image_processor, tokenizer, video_processor, chat_template=QWEN_CHAT_TEMPLATE
    )
    return config, processor


def _build_llava_next(image_size: int, extra_texts: Sequence[str]):
    tokenizer = llava_tokenizer(extra_texts)
    # The same grid pinpoints in config and image processor (docs/notes.md): one crop for an
    # S x S image, 2 x 2 crops for a 2S x 2S one.
    pinpoints = [[image_size * h, image_size * w] for h, w in ((1, 1), (1, 2), (2, 1), (2, 2))]
    config = LlavaNextConfig(
        vision_config=CLIPVisionConfig(
            hidden_size=VISION_WIDTH,
            intermediate_size=2 * VISION_WIDTH,
            num_hidden_layers=VISION_LAYERS,
            num_attention_heads=VISION_HEADS,
            image_size=image_size,
            patch_size=PATCH,
            projection_dim=VISION_WIDTH,
        ),
        text_config=LlamaConfig(
            **_text_ids(tokenizer),
            hidden_size=TEXT_WIDTH,
            intermediate_size=TEXT_FFN,
            num_hidden_layers=TEXT_LAYERS,
            num_attention_heads=TEXT_HEADS,
            num_key_value_heads=TEXT_KV_HEADS,
            max_position_embeddings=4096,
        ),
        image_token_index=tokenizer.convert_tokens_to_ids("<image>"),
        vision_feature_select_strategy="default",
        vision_feature_layer=-2,
        image_grid_pinpoints=pinpoints,
        image_seq_length=(image_size // PATCH) ** 2,
    )
    # A LlavaNextImageProcessor (a CLIPImageProcessor gives KeyError: 'image_sizes') whose
    # size and crop_size match the CLIP image_size (docs/notes.md).
    image_processor = LlavaNextImageProcessor(
        size={"shortest_edge": image_size},
        crop_size={"height": image_size, "width": image_size},
        image_grid_pinpoints=pinpoints,
    )
    processor = LlavaNextProcessor(
        image_processor,
        tokenizer,
        patch_size=PATCH,
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,  # CLIP's CLS token
        chat_template=LLAVA_CHAT_TEMPLATE,
    )
    return config, processor


_BUILDERS = {
    "qwen2_vl": _build_qwen2_vl,
    "qwen2_5_vl": _build_qwen2_5_vl,
    "llava_next": _build_llava_next,
}


def build_tiny_checkpoint(
    backbone: str,
    output_dir: str | Path,
    image_size: int = 56,
    seed: int = 0,
    extra_texts: Sequence[str] = (),
) -> Path:
    """Write a tiny `backbone` checkpoint (model + processor) to `output_dir`.

    Weights are drawn from `seed` alone, so equal seeds give identical tensors (of the same
    vocabulary size). `image_size` (a multiple of 28) is the side of the square images the
    processor keeps at their size (Qwen) or the CLIP input size (LLaVA-NeXT). `extra_texts`
    join the tokenizer corpus, so that a model for another domain (e.g. the garments'
    `corpus_sentences()`) reads its words whole; without them the checkpoint is the default.
    """
    if backbone not in _BUILDERS:
        raise ValueError(f"unknown backbone {backbone!r}; choose one of {BACKBONES}")
    if image_size <= 0 or image_size % (PATCH * MERGE):
        raise ValueError(f"image_size must be a positive multiple of {PATCH * MERGE}")
    output_dir = Path(output_dir)
    config, processor = _BUILDERS[backbone](image_size, extra_texts)
    torch.manual_seed(seed)
    model = AutoModelForImageTextToText.from_config(config)
    model.generation_config.pad_token_id = processor.tokenizer.pad_token_id
    output_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(output_dir)
    processor.save_pretrained(output_dir)
    info = {
        "backbone": backbone,
        "image_size": image_size,
        "seed": seed,
        "parameters": sum(p.numel() for p in model.parameters()),
        "vocab_size": len(processor.tokenizer),
        "builder_version": BUILDER_VERSION,
    }
    if extra_texts:  # recorded only when given: the default info file stays as it was
        info["extra_corpus_texts"] = len(extra_texts)
    (output_dir / INFO_FILE).write_text(json.dumps(info, indent=2) + "\n")
    return output_dir


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backbone", required=True, choices=BACKBONES)
    parser.add_argument("--output_dir", required=True, type=Path)
    parser.add_argument("--image_size", type=int, default=56)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--extra_corpus",
        choices=sorted(EXTRA_CORPORA),
        help="also train the tokenizer on this domain's sentences",
    )
    args = parser.parse_args(argv)
    hf_logging.disable_progress_bar()
    start = time.perf_counter()
    extra = EXTRA_CORPORA[args.extra_corpus]() if args.extra_corpus else ()
    path = build_tiny_checkpoint(args.backbone, args.output_dir, args.image_size, args.seed, extra)
    info = json.loads((path / INFO_FILE).read_text())
    print(
        f"{path}: {args.backbone}, {info['parameters']:,} parameters, "
        f"vocab {info['vocab_size']}, {time.perf_counter() - start:.1f} s"
    )


if __name__ == "__main__":
    main()
