"""Captioners on the tiny checkpoints and the synthetic benchmark: what the prompts hold,
the side-by-side picture, the yes/no probabilities, and the scene oracle."""

from __future__ import annotations

import dataclasses
import json
import random

import pytest
import torch
from PIL import Image

from src.arguments import AugmentArguments
from src.augment.captioners import (
    detect_foundation_backbone,
    load_captioner,
    resolve_captioner,
    side_by_side,
    takes_two_images,
)
from src.augment.consistency import yes_probability
from src.augment.generation import ask_consistency
from src.augment.pairs import CaptionPair
from src.augment.prompts import (
    COT_INSTRUCTION,
    DIRECT_INSTRUCTION,
    SIDE_BY_SIDE_INTRO,
    TWO_IMAGES_INTRO,
)
from src.errors import ArgumentError
from src.offline.scene_oracle import SCENE_ORACLE, SceneOracle
from src.offline.synthetic.captions import apply_caption, describe_difference
from src.offline.synthetic.scenes import load_scenes

OPTIONS = AugmentArguments(max_new_tokens=4)


def near_miss_pairs(split, count: int) -> list[CaptionPair]:
    """(reference -> one of the target's near misses) for the first `count` triplets."""
    pairs = []
    for t in split.triplets[:count]:
        negative = next(m for m in t.group if m not in (t.reference, t.target))
        pairs.append(
            CaptionPair(
                f"aug1_{t.pairid}_0",
                t.pairid,
                t.reference,
                split.images[t.reference],
                negative,
                split.images[negative],
                t.caption,
                t.target,
            )
        )
    return pairs


@pytest.fixture(scope="module")
def qwen_captioner(tiny_model_dirs, small_benchmark):
    return load_captioner("qwen2_vl", tiny_model_dirs["qwen2_vl"], OPTIONS)


@pytest.fixture(scope="module")
def llava_captioner(tiny_model_dirs, small_benchmark):
    return load_captioner("llava", tiny_model_dirs["llava_next"], OPTIONS)


@pytest.mark.parametrize("backbone", ["qwen2_vl", "qwen2_5_vl"])
def test_qwen_prompt_holds_both_images(
    backbone, tiny_model_dirs, small_benchmark, small_train_split
):
    captioner = load_captioner(backbone, tiny_model_dirs[backbone], OPTIONS)
    pairs = near_miss_pairs(small_train_split, 3)
    inputs = captioner.caption_inputs(pairs)
    image_token = captioner.model.config.image_token_id
    # 56 px images: 4 merged patches each, two images per prompt.
    assert (inputs["input_ids"] == image_token).sum(dim=1).tolist() == [8, 8, 8]
    assert inputs["image_grid_thw"].shape[0] == 2 * len(pairs)
    prompt = captioner.processor.batch_decode(inputs["input_ids"][:1])[0]
    assert TWO_IMAGES_INTRO in prompt and pairs[0].original_caption in prompt
    assert prompt.count("<|vision_start|>") == 2


def test_prompt_modes(qwen_captioner, small_train_split):
    pair = near_miss_pairs(small_train_split, 1)
    for mode, instruction in (("direct", DIRECT_INSTRUCTION), ("cot", COT_INSTRUCTION)):
        qwen_captioner.options = dataclasses.replace(OPTIONS, prompt_mode=mode)
        ids = qwen_captioner.caption_inputs(pair)["input_ids"][0]
        assert instruction in qwen_captioner.processor.decode(ids)
    qwen_captioner.options = OPTIONS


def test_qwen_pixel_budget_sets_the_image_size(tiny_qwen, small_benchmark, tmp_path):
    big = tmp_path / "big.png"
    Image.new("RGB", (224, 224), "red").save(big)
    pair = CaptionPair("p", "q", "big", str(big), "big", str(big), "make it blue", "t")
    tokens = {}
    for budget in (56 * 56, 112 * 112):
        options = AugmentArguments(foundation_max_pixels=budget)
        captioner = load_captioner("qwen2_vl", tiny_qwen, options)
        # The tiny processor pins every image to 56 x 56; let the budget decide instead.
        captioner.processor.image_processor.max_pixels = 1024 * 1024
        captioner.processor.image_processor.size = {
            "shortest_edge": 56 * 56,
            "longest_edge": 1024 * 1024,
        }
        inputs = captioner.caption_inputs([pair])
        tokens[budget] = int((inputs["input_ids"] == captioner.model.config.image_token_id).sum())
    assert tokens == {56 * 56: 2 * 4, 112 * 112: 2 * 16}


def test_llava_prompt_holds_one_double_width_picture(llava_captioner, small_train_split):
    pairs = near_miss_pairs(small_train_split, 2)
    inputs = llava_captioner.caption_inputs(pairs)
    assert inputs["image_sizes"].shape[0] == len(pairs)  # one picture per prompt
    for height, width in inputs["image_sizes"].tolist():
        assert height == 56 and width > 2 * 56
    image_token = llava_captioner.processor.tokenizer.convert_tokens_to_ids("<image>")
    prompt_ids = inputs["input_ids"][0][inputs["input_ids"][0] != image_token]
    prompt = llava_captioner.processor.tokenizer.decode(prompt_ids)
    assert SIDE_BY_SIDE_INTRO in prompt
    assert prompt.count("<s>") == 1  # the template's bos only


def test_llava_pixel_budget_shrinks_each_half(tiny_model_dirs, small_benchmark, small_train_split):
    options = AugmentArguments()
    options.foundation_max_pixels = 56 * 56 // 4  # below the flag's range, to see the halves shrink
    captioner = load_captioner("llava", tiny_model_dirs["llava_next"], options)
    inputs = captioner.caption_inputs(near_miss_pairs(small_train_split, 1))
    height, width = inputs["image_sizes"][0].tolist()
    assert height == 28 and 2 * 28 < width < 2 * 56


def test_side_by_side_picture_has_a_visible_bar():
    picture = side_by_side(
        Image.new("RGB", (40, 40), "red"), Image.new("RGB", (80, 80), "blue"), 10**6
    )
    assert picture.height == 40 and picture.width > 80
    assert picture.getpixel((5, 20)) == (255, 0, 0)
    assert picture.getpixel((picture.width - 5, 20)) == (0, 0, 255)
    bar = [picture.getpixel((x, 20)) for x in range(40, picture.width - 40)]
    assert (0, 0, 0) in bar and (255, 255, 255) in bar


def test_generic_uses_two_images_where_the_processor_takes_them(
    tiny_model_dirs, small_benchmark, small_train_split
):
    for directory in (tiny_model_dirs["qwen2_vl"], tiny_model_dirs["llava_next"]):
        captioner = load_captioner("generic", directory, OPTIONS)
        assert captioner.layout == "two_images"
        inputs = captioner.caption_inputs(near_miss_pairs(small_train_split, 1))
        images = inputs.get("image_grid_thw", inputs.get("image_sizes"))
        assert images.shape[0] == 2


class _OneImageProcessor:
    def apply_chat_template(self, conversation, **kwargs):
        return "<image> ?"

    def __call__(self, text, images, **kwargs):
        if len(images) != 1:
            raise ValueError("this processor takes one image per prompt")


def test_generic_falls_back_to_side_by_side():
    assert not takes_two_images(_OneImageProcessor())


def test_generation_returns_one_text_per_pair(qwen_captioner, llava_captioner, small_train_split):
    pairs = near_miss_pairs(small_train_split, 3)
    for captioner in (qwen_captioner, llava_captioner):
        generations = captioner.generate(pairs)
        assert len(generations) == 3
        assert all(
            isinstance(g.text, str) and isinstance(g.finished, bool) for g in generations
        )


def test_sampling_follows_the_seed(tiny_qwen, small_benchmark, small_train_split):
    options = AugmentArguments(max_new_tokens=6, do_sample=True, generation_temperature=1.5, top_p=1.0)
    captioner = load_captioner("qwen2_vl", tiny_qwen, options)
    pairs = near_miss_pairs(small_train_split, 2)
    torch.manual_seed(0)
    first = captioner.generate(pairs)
    torch.manual_seed(0)
    assert captioner.generate(pairs) == first


@pytest.mark.parametrize("fixture", ["qwen_captioner", "llava_captioner"])
def test_yes_probabilities_are_the_first_generated_position(fixture, request, small_train_split):
    """One forward pass for both questions of a batch, equal to generate's first-step logits."""
    captioner = request.getfixturevalue(fixture)
    pairs = near_miss_pairs(small_train_split, 3)
    kept = [(p, f"new text {i}") for i, p in enumerate(pairs)]
    calls = []
    handle = captioner.model.register_forward_hook(lambda *args: calls.append(1))
    try:
        answers = ask_consistency(captioner, kept, batch_size=8)
    finally:
        handle.remove()
    assert len(calls) == 1
    texts = [t for _, t in kept] + [p.original_caption for p in pairs]
    inputs = captioner.question_inputs(pairs + pairs, texts)
    with torch.no_grad():
        output = captioner.model.generate(
            **inputs,
            max_new_tokens=1,
            do_sample=False,
            output_logits=True,
            return_dict_in_generate=True,
        )
    expected = yes_probability(output.logits[0], captioner.yes_ids, captioner.no_ids).tolist()
    for i, pair in enumerate(pairs):
        new_yes, original_yes = answers[pair.pairid]
        assert 0.0 < new_yes < 1.0
        assert new_yes == pytest.approx(expected[i], abs=1e-5)
        assert original_yes == pytest.approx(expected[len(pairs) + i], abs=1e-5)


def test_scene_oracle_describes_a_known_pair(small_benchmark, small_train_split):
    oracle = SceneOracle(small_benchmark)
    scenes = load_scenes(small_benchmark)
    triplet = small_train_split.triplets[0]
    pair = CaptionPair(
        "p",
        triplet.pairid,
        triplet.reference,
        "",
        triplet.target,
        "",
        triplet.caption,
        triplet.target,
    )
    (generation,) = oracle.generate([pair])
    assert generation.finished
    assert generation.text == describe_difference(
        scenes[triplet.reference], scenes[triplet.target], random.Random(pair.pairid)
    )
    assert oracle.generate([pair]) == [generation]  # the same pair, the same phrasing
    assert apply_caption(scenes[triplet.reference], generation.text) == scenes[triplet.target]
    # The benchmark's own caption turns the reference into the target: yes; into a near miss: no.
    near_miss = next(m for m in triplet.group if m not in (triplet.reference, triplet.target))
    other = CaptionPair(
        "o", "x", triplet.reference, "", near_miss, "", triplet.caption, triplet.target
    )
    assert oracle.yes_probabilities([pair, other], [triplet.caption, triplet.caption]) == [1.0, 0.0]
    assert oracle.describe()["stands_in_for_a_foundation_model"] is True


def test_captioner_choice_defaults_and_clear_errors(tiny_qwen, tiny_model_dirs, small_benchmark, tmp_path):
    oracle = {SCENE_ORACLE.name: SCENE_ORACLE}
    assert resolve_captioner(None, None, small_benchmark, oracle) == "scene_oracle"
    llava = str(tiny_model_dirs["llava_next"])
    assert resolve_captioner(None, llava, tmp_path, oracle) == "llava"
    assert resolve_captioner("none", None, tmp_path, oracle) == "none"
    with pytest.raises(ArgumentError, match="--foundation_model_path.*--foundation_model_backbone none"):
        resolve_captioner(None, None, tmp_path, oracle)
    with pytest.raises(ArgumentError, match="only on the synthetic benchmark"):
        resolve_captioner("scene_oracle", None, tmp_path, oracle)
    with pytest.raises(ArgumentError, match="not available"):
        resolve_captioner("scene_oracle", None, small_benchmark, {})
    with pytest.raises(ArgumentError, match="no config.json"):
        resolve_captioner("qwen2_vl", str(tmp_path / "missing"), small_benchmark, oracle)


def test_backbone_detection(tiny_model_dirs, tmp_path):
    assert detect_foundation_backbone(tiny_model_dirs["qwen2_vl"]) == "qwen2_vl"
    assert detect_foundation_backbone(tiny_model_dirs["qwen2_5_vl"]) == "qwen2_5_vl"
    assert detect_foundation_backbone(tiny_model_dirs["llava_next"]) == "llava"
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "idefics3"}))
    assert detect_foundation_backbone(tmp_path) == "generic"
    with pytest.raises(ArgumentError, match="--foundation_model_path"):
        detect_foundation_backbone(tmp_path / "missing")
