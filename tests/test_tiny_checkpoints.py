"""The tiny checkpoints load and run with plain transformers, in a process without this repo."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from safetensors.torch import load_file
from transformers import AutoTokenizer

from src.model import prompts
from src.offline.tiny import BACKBONES, INFO_FILE, build_tiny_checkpoint, main
from src.offline.tokenizer_corpus import corpus_texts

PROCESSOR_CLASSES = {
    "qwen2_vl": "Qwen2VLProcessor",
    "qwen2_5_vl": "Qwen2_5_VLProcessor",
    "llava_next": "LlavaNextProcessor",
}
MODEL_CLASSES = {
    "qwen2_vl": "Qwen2VLForConditionalGeneration",
    "qwen2_5_vl": "Qwen2_5_VLForConditionalGeneration",
    "llava_next": "LlavaNextForConditionalGeneration",
}
IMAGE_TOKENS = {
    "qwen2_vl": "<|image_pad|>",
    "qwen2_5_vl": "<|image_pad|>",
    "llava_next": "<image>",
}
# Image tokens per image: {checkpoint: {image side: tokens}} (docs/notes.md: 4 / 16 for Qwen at
# 56 / 112 px; LLaVA-NeXT with CLIP at 56 px: 36 / 88).
EXPECTED_IMAGE_TOKENS = {
    "qwen2_vl": {56: 4},
    "qwen2_vl_112": {112: 16},
    "qwen2_5_vl": {56: 4},
    "llava_next": {56: 36, 112: 88},
}
WORD = re.compile(r"[^\W\d_]+")

# Runs in a fresh interpreter, cwd outside the repo and without it on sys.path.
LOAD_SCRIPT = r"""
import json, sys
import torch
from PIL import Image
from transformers import AutoModelForImageTextToText, AutoProcessor

def image(side, shade):
    return Image.new("RGB", (side, side), (shade, 40, 200 - shade))

results = {}
for name, spec in json.loads(sys.argv[1]).items():
    processor = AutoProcessor.from_pretrained(spec["path"])
    model = AutoModelForImageTextToText.from_pretrained(spec["path"]).eval()
    marker = spec["image_token"]
    marker_id = processor.tokenizer.convert_tokens_to_ids(marker)
    tokens_per_image = {}
    for side in spec["sides"]:
        batch = processor(text=[marker + "\nRepresent the given image.\n"],
                          images=[image(side, 90)], return_tensors="pt")
        tokens_per_image[side] = int((batch["input_ids"] == marker_id).sum())
        with torch.no_grad():
            logits = model(**batch).logits

    # Last-token states alone and inside a left-padded batch.
    texts = [marker + "\nFind it: red\n", marker + "\nFind it: a much longer text about a red star\n"]
    images = [image(spec["sides"][0], 10), image(spec["sides"][0], 200)]
    def last_states(text_list, image_list):
        inputs = processor(text=text_list, images=image_list, padding=True, return_tensors="pt")
        with torch.no_grad():
            out = model(**inputs, output_hidden_states=True, logits_to_keep=1, use_cache=False)
        return out.hidden_states[-1][:, -1]
    together = last_states(texts, images)
    alone = torch.cat([last_states([t], [i]) for t, i in zip(texts, images)])

    content = [{"type": "image", "image": image(spec["sides"][0], 60 * i)} for i in range(spec["chat_images"])]
    content.append({"type": "text", "text": "Answer with the new modification text only."})
    messages = [
        {"role": "system", "content": [{"type": "text", "text": "The first image is the reference image."}]},
        {"role": "user", "content": content},
    ]
    chat = processor.apply_chat_template(messages, tokenize=True, add_generation_prompt=True,
                                         return_dict=True, return_tensors="pt")
    with torch.no_grad():
        generated = model.generate(**chat, max_new_tokens=4, do_sample=False)
    results[name] = {
        "processor": type(processor).__name__,
        "model": type(model).__name__,
        "logits": list(logits.shape),
        "input_length": int(batch["input_ids"].shape[1]),
        "vocab": len(processor.tokenizer),
        "padding_side": processor.tokenizer.padding_side,
        "tokens_per_image": tokens_per_image,
        "padding_diff": float((together - alone).abs().max()),
        "chat_keys": sorted(chat.keys()),
        "chat_image_tokens": int((chat["input_ids"] == marker_id).sum()),
        "chat_text": processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=True),
        "new_tokens": int(generated.shape[1] - chat["input_ids"].shape[1]),
    }
results["src_imported"] = "src" in sys.modules
print(json.dumps(results))
"""


@pytest.fixture(scope="module")
def checkpoints(tiny_model_dirs, tmp_path_factory) -> dict[str, Path]:
    """The session's tiny checkpoints (built by build_tiny_checkpoint's defaults: 56 px, seed
    0), and a Qwen2-VL one at 112 px."""
    assert set(tiny_model_dirs) == set(BACKBONES)
    root = tmp_path_factory.mktemp("tiny")
    return dict(tiny_model_dirs) | {
        "qwen2_vl_112": build_tiny_checkpoint("qwen2_vl", root / "q112", image_size=112)
    }


@pytest.fixture(scope="module")
def loaded(checkpoints, tmp_path_factory) -> dict:
    """Load every checkpoint in one clean subprocess (one torch import for all)."""
    specs = {
        name: {
            "path": str(path),
            "image_token": IMAGE_TOKENS[name.removesuffix("_112")],
            "sides": sorted(EXPECTED_IMAGE_TOKENS[name]),
            "chat_images": 1 if name == "llava_next" else 2,
        }
        for name, path in checkpoints.items()
    }
    env = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    done = subprocess.run(
        [sys.executable, "-c", LOAD_SCRIPT, json.dumps(specs)],
        cwd=tmp_path_factory.mktemp("clean"),
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_loads_without_this_project(loaded):
    assert loaded["src_imported"] is False


@pytest.mark.parametrize("name", [*BACKBONES, "qwen2_vl_112"])
def test_forward_and_generate(loaded, name):
    backbone = name.removesuffix("_112")
    result = loaded[name]
    assert result["processor"] == PROCESSOR_CLASSES[backbone]
    assert result["model"] == MODEL_CLASSES[backbone]
    assert result["padding_side"] == "left"
    assert result["logits"] == [1, result["input_length"], result["vocab"]]
    expected = {str(side): n for side, n in EXPECTED_IMAGE_TOKENS[name].items()}
    assert result["tokens_per_image"] == expected
    assert result["padding_diff"] < 1e-4
    chat_images = 1 if backbone == "llava_next" else 2
    first_side = str(min(EXPECTED_IMAGE_TOKENS[name]))
    assert result["chat_image_tokens"] == chat_images * expected[first_side]
    assert 0 < result["new_tokens"] <= 4
    if backbone == "llava_next":
        assert "image_sizes" in result["chat_keys"]
        assert result["chat_text"] == (
            "<s>The first image is the reference image. "
            "USER: <image>\nAnswer with the new modification text only. ASSISTANT:"
        )
    else:
        assert {"mm_token_type_ids", "image_grid_thw"} <= set(result["chat_keys"])
        image = "<|vision_start|><|image_pad|><|vision_end|>"
        assert result["chat_text"] == (
            "<|im_start|>system\nThe first image is the reference image.<|im_end|>\n"
            f"<|im_start|>user\n{image}{image}Answer with the new modification text only."
            "<|im_end|>\n<|im_start|>assistant\n"
        )


@pytest.mark.parametrize("backbone", BACKBONES)
def test_weights_follow_the_seed(checkpoints, tmp_path, backbone):
    reference = load_file(checkpoints[backbone] / "model.safetensors")
    same = load_file(build_tiny_checkpoint(backbone, tmp_path / "same") / "model.safetensors")
    other = load_file(
        build_tiny_checkpoint(backbone, tmp_path / "other", seed=1) / "model.safetensors"
    )
    assert reference.keys() == same.keys() == other.keys()
    assert all(reference[key].equal(same[key]) for key in reference)
    assert not all(reference[key].equal(other[key]) for key in reference)


@pytest.mark.parametrize("backbone", ["qwen2_vl", "llava_next"])
def test_tokenizer_keeps_corpus_words_whole(checkpoints, backbone):
    tokenizer = AutoTokenizer.from_pretrained(checkpoints[backbone])
    words = sorted({word for text in corpus_texts() for word in WORD.findall(text)})
    whole = [word for word in words if len(tokenizer.tokenize(" " + word)) == 1]
    assert len(whole) / len(words) > 0.95
    assert all(len(tokenizer.tokenize(" " + word)) <= 2 for word in words)


@pytest.mark.parametrize("backbone", ["qwen2_vl", "llava_next"])
def test_instructions_are_one_token_per_word(checkpoints, backbone):
    tokenizer = AutoTokenizer.from_pretrained(checkpoints[backbone])
    marker = IMAGE_TOKENS[backbone]
    texts = [prompts.candidate_text(marker)] + [
        prompts.query_text(marker, dataset, "make it red") for dataset in prompts.QUERY_INSTRUCTIONS
    ]
    for text in texts:
        tokens = tokenizer.tokenize(text)
        assert tokens[0] == marker
        pieces = [tokenizer.convert_tokens_to_string([token]).strip() for token in tokens[1:]]
        assert [piece for piece in pieces if WORD.search(piece)] == WORD.findall(
            text[len(marker) :]
        )


def test_cli_prints_a_summary(tmp_path, capsys):
    main(["--backbone", "qwen2_vl", "--output_dir", str(tmp_path / "cli"), "--seed", "2"])
    line = capsys.readouterr().out.strip()
    assert line.startswith(str(tmp_path / "cli")) and "parameters" in line and "vocab" in line
    info = json.loads((tmp_path / "cli" / INFO_FILE).read_text())
    assert info["backbone"] == "qwen2_vl" and info["seed"] == 2 and info["image_size"] == 56
