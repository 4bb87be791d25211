"""Inputs checked before work: image files of every kind PIL reads become RGB, bad ones are
listed before round 0, captions with special tokens or no text are refused with the entry
named, long ones are truncated and counted."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from src.data.images import check_images, load_image
from src.data.records import Split, Triplet
from src.errors import AnnotationError
from src.model.registry import get_backbone, load_processor
from src.preflight import check_captions


@pytest.fixture()
def images(tmp_path) -> dict[str, str]:
    made = {}
    cmyk = Image.new("CMYK", (20, 10), (0, 255, 255, 0))  # red in CMYK
    made["cmyk"] = tmp_path / "cmyk.jpg"
    cmyk.save(made["cmyk"], "JPEG")
    sixteen = Image.fromarray(np.array([[65535, 32768], [0, 256]], dtype=np.uint16))
    assert sixteen.mode == "I;16"
    made["sixteen"] = tmp_path / "sixteen.png"
    sixteen.save(made["sixteen"])
    rgba = Image.new("RGBA", (4, 4), (255, 0, 0, 255))
    rgba.putpixel((0, 0), (0, 0, 255, 0))  # fully transparent
    made["rgba"] = tmp_path / "rgba.png"
    rgba.save(made["rgba"])
    palette = Image.new("P", (3, 3), 1)
    palette.putpalette([0, 0, 0, 0, 200, 0] + [0] * 762)
    palette.info["transparency"] = 0
    palette.putpixel((1, 1), 0)
    made["palette"] = tmp_path / "palette.png"
    palette.save(made["palette"], transparency=0)
    made["gray"] = tmp_path / "gray.png"
    Image.new("L", (5, 5), 77).save(made["gray"])
    made["one"] = tmp_path / "one.png"
    Image.new("RGB", (1, 1), (1, 2, 3)).save(made["one"])
    return {name: str(path) for name, path in made.items()}


def test_every_image_kind_becomes_rgb(images, tiny_qwen):
    sizes = check_images(list(images.values()))
    assert sizes[images["one"]] == (1, 1) and sizes[images["cmyk"]] == (20, 10)
    loaded = {name: load_image(path) for name, path in images.items()}
    assert all(image.mode == "RGB" for image in loaded.values())
    red = loaded["cmyk"].getpixel((5, 5))
    assert red[0] > 200 and red[1] < 60 and red[2] < 60
    assert [loaded["sixteen"].getpixel(xy)[0] for xy in ((0, 0), (1, 0), (0, 1))] == [255, 128, 0]
    assert loaded["rgba"].getpixel((0, 0)) == (255, 255, 255)  # transparent: on white
    assert loaded["rgba"].getpixel((1, 1)) == (255, 0, 0)
    assert loaded["palette"].getpixel((1, 1)) == (255, 255, 255)
    assert loaded["palette"].getpixel((0, 0)) == (0, 200, 0)
    assert loaded["gray"].getpixel((2, 2)) == (77, 77, 77)
    processor = load_processor(tiny_qwen)
    backbone = get_backbone("qwen2_vl")
    batch = backbone.pack(processor, ["<|image_pad|> x"] * len(loaded), list(loaded.values()))
    assert batch["pixel_values"].shape[0] > 0  # the 1 x 1 image too


def test_bad_images_are_listed_before_any_work(images, tmp_path):
    zero = tmp_path / "zero.png"
    zero.write_bytes(b"")
    garbage = tmp_path / "garbage.jpg"
    garbage.write_bytes(b"\xff\xd8\xff" + b"nonsense" * 50)
    truncated = tmp_path / "truncated.png"
    data = Path(images["gray"]).read_bytes()
    truncated.write_bytes(data[: len(data) // 2])
    with pytest.raises(AnnotationError) as error:
        check_images([*images.values(), str(zero), str(garbage), str(truncated)])
    message = str(error.value)
    assert "3 of 9 image files cannot be used" in message
    for path in (zero, garbage, truncated):
        assert str(path) in message


def test_an_image_above_the_pixel_limit_is_refused_without_decoding(images):
    with pytest.raises(AnnotationError, match=r"20 x 10 = 200 pixels, above the limit of 100"):
        check_images([images["cmyk"]], max_pixels=100)
    flat = images["gray"].replace("gray", "flat")
    Image.new("RGB", (402, 2)).save(flat)
    with pytest.raises(AnnotationError, match="aspect ratio above 200"):
        check_images([flat])


def test_the_check_is_cached_and_notices_a_changed_file(images, tmp_path, monkeypatch):
    cache = tmp_path / "checks.json"
    check_images(list(images.values()), cache)
    opened = []
    real_open = Image.open
    monkeypatch.setattr(Image, "open", lambda *a, **k: opened.append(a[0]) or real_open(*a, **k))
    check_images(list(images.values()), cache)
    assert opened == []
    Image.new("L", (6, 6), 10).save(images["gray"])
    assert check_images(list(images.values()), cache)[images["gray"]] == (6, 6)
    assert opened == [images["gray"]]


def split_with(captions: list[str]) -> Split:
    triplets = [Triplet(str(i), "a", caption, "b") for i, caption in enumerate(captions)]
    return Split("train", triplets, {"a": "a.png", "b": "b.png"})


def test_captions_with_special_tokens_are_refused_with_the_entry_named(tiny_qwen):
    tokenizer = load_processor(tiny_qwen).tokenizer
    for token in ("<|image_pad|>", "<|vision_start|>", "<|im_end|>"):
        with pytest.raises(AnnotationError, match=rf"pairid 1: the caption holds '{token}'"):
            check_captions(split_with(["fine", f"make it {token} red"]), tokenizer, 64)


def test_long_captions_are_truncated_and_counted(tiny_qwen):
    tokenizer = load_processor(tiny_qwen).tokenizer
    long = " ".join(["make the red circle blue"] * 20)
    split = split_with(["add a square", long, long])
    assert check_captions(split, tokenizer, 8) == 2
    assert split.triplets[0].caption == "add a square"
    assert len(tokenizer(split.triplets[1].caption, add_special_tokens=False)["input_ids"]) <= 8
    assert long.startswith(split.triplets[1].caption)
