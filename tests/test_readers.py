"""Annotation readers: round trips on hand-made CIRR / FashionIQ fixtures and bad input."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from PIL import Image

from src.data.cirr import load_cirr_split
from src.data.fashioniq import join_fashioniq_captions, load_fashioniq_split
from src.data.loading import load_split
from src.data.records import Split
from src.data.validation import check_image_files
from src.errors import AnnotationError

# ---------------------------------------------------------------- fixture builders


def write_json(path: Path, data: object) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=1))


def write_image(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (2, 2), (200, 30, 30)).save(path)


def img_set(members: list[str], labelled: bool = True) -> dict:
    data = {"id": 1, "members": members, "reference_rank": 0}
    if labelled:
        data["target_rank"] = 1
    return data


CIRR_IMAGES = {
    "train": {
        "train-1-0-img0": "./train/3/train-1-0-img0.png",
        "train-1-0-img1": "./train/3/train-1-0-img1.png",
        "train-1-1-img0": "./train/7/train-1-1-img0.png",
        "train-1-1-img1": "./train/7/train-1-1-img1.png",
    },
    "val": {
        "dev-0-0-img0": "./dev/dev-0-0-img0.png",
        "dev-0-0-img1": "./dev/dev-0-0-img1.png",
        "dev-0-1-img0": "./dev/dev-0-1-img0.png",
    },
    "test1": {
        "test1-0-0-img0": "./test1/test1-0-0-img0.png",
        "test1-0-0-img1": "./test1/test1-0-0-img1.png",
    },
}


def cirr_captions(split: str) -> list[dict]:
    if split == "test1":
        members = list(CIRR_IMAGES["test1"])
        return [
            {
                "pairid": 500,
                "reference": members[0],
                "caption": "make it night",
                "img_set": img_set(members, labelled=False),
            }
        ]
    a, b, c, *rest = CIRR_IMAGES[split]
    members = [a, b, c, *rest]
    return [
        {
            "pairid": 10,
            "reference": a,
            "target_hard": b,
            "target_soft": {b: 1.0, c: 0.5, members[-1]: -1.0},
            "caption": "add a dog",
            "img_set": img_set(members),
        },
        {
            "pairid": 11,
            "reference": b,
            "target_hard": c,
            "target_soft": {c: 1.0},
            "caption": "remove the cat",
            "img_set": img_set(members),
        },
    ]


def make_cirr(root: Path, release_layout: bool = False) -> Path:
    """Write all three CIRR splits; `release_layout` puts annotations under root/cirr/."""
    base = root / "cirr" if release_layout else root
    for split, images in CIRR_IMAGES.items():
        write_json(base / "captions" / f"cap.rc2.{split}.json", cirr_captions(split))
        write_json(base / "image_splits" / f"split.rc2.{split}.json", images)
        for rel in images.values():
            write_image(root / rel)
    return root


def edit_json(path: Path, edit) -> None:
    data = json.loads(path.read_text())
    edit(data)
    write_json(path, data)


FIQ_GALLERIES = {
    "dress": ["d1", "d2", "d3"],
    "shirt": ["s1", "s2"],
    "toptee": ["t1", "t2"],
}
FIQ_SUFFIX = {"d": ".png", "s": ".jpg", "t": ".png", "x": ".jpg"}


def make_fashioniq(root: Path) -> Path:
    for split in ("train", "val", "test"):
        for cat, gallery in FIQ_GALLERIES.items():
            write_json(root / "image_splits" / f"split.{cat}.{split}.json", gallery)
            entries = [
                {"candidate": gallery[0], "target": gallery[1], "captions": ["is red.", "Longer?"]},
                {"candidate": gallery[1], "target": gallery[0], "captions": ["has a collar", "x"]},
            ]
            if split == "test":
                for entry in entries:
                    del entry["target"]
            write_json(root / "captions" / f"cap.{cat}.{split}.json", entries)
    for name in [n for gallery in FIQ_GALLERIES.values() for n in gallery] + ["x9"]:
        write_image(root / "images" / f"{name}{FIQ_SUFFIX[name[0]]}")
    return root


@pytest.fixture
def cirr_root(tmp_path: Path) -> Path:
    return make_cirr(tmp_path / "cirr_data")


@pytest.fixture
def fiq_root(tmp_path: Path) -> Path:
    return make_fashioniq(tmp_path / "fiq")


def raises_with(fn, *parts: str) -> str:
    """Call fn, expect AnnotationError, and check the message names every part."""
    with pytest.raises(AnnotationError) as info:
        fn()
    message = str(info.value)
    for part in parts:
        assert part in message, f"{part!r} not in {message!r}"
    return message


# ---------------------------------------------------------------- CIRR round trips


def test_cirr_train_round_trip(cirr_root: Path) -> None:
    split = load_cirr_split(cirr_root, "train")
    assert split.name == "train" and split.has_labels and split.categories == {}
    first, second = split.triplets
    assert first.pairid == "10" and first.reference == "train-1-0-img0"
    assert first.target == "train-1-0-img1" and first.caption == "add a dog"
    assert first.target_soft == {
        "train-1-0-img1": 1.0,
        "train-1-1-img0": 0.5,
        "train-1-1-img1": -1.0,
    }
    assert first.group == list(CIRR_IMAGES["train"]) and first.source == "original"
    assert first.category is None
    assert second.target_soft == {"train-1-1-img0": 1.0}
    assert split.images["train-1-1-img0"] == str(cirr_root / "train" / "7" / "train-1-1-img0.png")
    assert all(os.path.isabs(p) and os.path.isfile(p) for p in split.images.values())


def test_cirr_val_round_trip(cirr_root: Path) -> None:
    split = load_cirr_split(cirr_root, "val")
    assert [t.pairid for t in split.triplets] == ["10", "11"]
    assert split.triplets[0].target_soft["dev-0-1-img0"] == -1.0
    assert split.images["dev-0-0-img0"] == str(cirr_root / "dev" / "dev-0-0-img0.png")
    assert split.gallery_names() == sorted(CIRR_IMAGES["val"])


def test_cirr_test1_has_no_labels(cirr_root: Path) -> None:
    split = load_cirr_split(cirr_root, "test1")
    (triplet,) = split.triplets
    assert triplet.target is None and triplet.target_soft == {}
    assert triplet.group == list(CIRR_IMAGES["test1"])
    assert not split.has_labels


def make_cirr_layout(root: Path, layout: str) -> Path:
    """The CIRR fixture laid out as released (cirr/img_raw), as CLIP4Cir expects (images
    beside cirr/) or flat; returns the dataset path a user passes."""
    annotations = {"flat": root, "release": root / "cirr", "clip4cir": root / "cirr"}[layout]
    images = {"flat": root, "release": root / "cirr" / "img_raw", "clip4cir": root}[layout]
    for split, paths in CIRR_IMAGES.items():
        write_json(annotations / "captions" / f"cap.rc2.{split}.json", cirr_captions(split))
        write_json(annotations / "image_splits" / f"split.rc2.{split}.json", paths)
        for rel in paths.values():
            write_image(images / rel)
    return root


def records(split: Split) -> tuple:
    """A split's content, without where its files sit."""
    names = {name: Path(path).name for name, path in split.images.items()}
    return [t.to_dict() for t in split.triplets], names, split.categories


@pytest.mark.parametrize("layout", ["release", "clip4cir", "flat"])
@pytest.mark.parametrize("split", ["train", "val", "test1"])
def test_every_cirr_layout_loads_the_same_records(tmp_path, layout, split, caplog):
    reference = load_cirr_split(make_cirr_layout(tmp_path / "flat_ref", "flat"), split)
    root = make_cirr_layout(tmp_path / layout, layout)
    with caplog.at_level("INFO"):
        loaded = load_cirr_split(root, split)
    assert records(loaded) == records(reference)
    assert all(os.path.isfile(path) for path in loaded.images.values())
    named = {"release": "release layout", "clip4cir": "CLIP4Cir layout", "flat": "flat layout"}
    assert named[layout] in caplog.text
    if layout == "release":  # the dataset path may also be cirr/ itself
        assert records(load_cirr_split(root / "cirr", split)) == records(reference)


def test_cirr_annotations_without_their_images_list_every_image_folder_tried(tmp_path):
    root = make_cirr_layout(tmp_path / "release", "release")
    (root / "cirr" / "img_raw").rename(root / "cirr" / "images_elsewhere")
    raises_with(
        lambda: load_cirr_split(root, "val"),
        "no image folder",
        str(root / "cirr" / "img_raw"),
        str(root / "img_raw"),
        "./dev/dev-0-0-img0.png",
    )


@pytest.mark.parametrize("nested", [False, True])
def test_fashioniq_at_the_root_or_in_fashioniq_dataset_loads_the_same_records(tmp_path, nested):
    reference = load_fashioniq_split(make_fashioniq(tmp_path / "ref"), "val")
    root = tmp_path / "copy"
    make_fashioniq(root / "fashionIQ_dataset" if nested else root)
    assert records(load_fashioniq_split(root, "val")) == records(reference)


def test_an_image_path_leaving_the_dataset_root_is_refused(tmp_path):
    root = make_cirr_layout(tmp_path / "cirr_data", "flat")
    write_image(tmp_path / "outside.png")
    split_file = root / "image_splits" / "split.rc2.val.json"
    for escaping in ("../outside.png", str(tmp_path / "outside.png")):
        edit_json(split_file, lambda data, path=escaping: data.update({"dev-0-1-img0": path}))
        raises_with(
            lambda: load_cirr_split(root, "val"),
            str(split_file),
            "'dev-0-1-img0'",
            "outside the dataset root",
            "--allow_external_images",
        )
        allowed = load_cirr_split(root, "val", allow_external_images=True)
        assert allowed.images["dev-0-1-img0"] == str(tmp_path / "outside.png")
    edit_json(split_file, lambda data: data.update({"dev-0-1-img0": "./dev/linked.png"}))
    (root / "dev" / "linked.png").symlink_to(tmp_path / "outside.png")
    raises_with(lambda: load_cirr_split(root, "val"), "'dev-0-1-img0'", "outside the dataset root")


def test_a_fashioniq_image_symlinked_outside_the_root_is_refused(tmp_path):
    root = make_fashioniq(tmp_path / "fiq")
    write_image(tmp_path / "outside.jpg")
    (root / "images" / "d1.png").unlink()
    (root / "images" / "d1.png").symlink_to(tmp_path / "outside.jpg")
    raises_with(lambda: load_fashioniq_split(root, "val"), "d1.png", "outside the dataset root")
    assert load_fashioniq_split(root, "val", allow_external_images=True).images["d1"]


def test_cirr_unknown_split_name(cirr_root: Path) -> None:
    with pytest.raises(ValueError, match="test1"):
        load_cirr_split(cirr_root, "test")


# ---------------------------------------------------------------- CIRR bad input


def test_cirr_missing_captions_lists_every_place_tried(tmp_path: Path) -> None:
    raises_with(
        lambda: load_cirr_split(tmp_path, "val"),
        str(tmp_path / "captions" / "cap.rc2.val.json"),
        str(tmp_path / "cirr" / "captions" / "cap.rc2.val.json"),
        "release layout",
        "CLIP4Cir layout",
    )


def test_cirr_missing_image_split_file(cirr_root: Path) -> None:
    (cirr_root / "image_splits" / "split.rc2.val.json").unlink()
    raises_with(
        lambda: load_cirr_split(cirr_root, "val"),
        str(cirr_root / "image_splits" / "split.rc2.val.json"),
        "not found",
        "layout",
    )


def test_cirr_invalid_json(cirr_root: Path) -> None:
    (cirr_root / "captions" / "cap.rc2.train.json").write_text('[\n  {"pairid": 1,\n  ]')
    raises_with(
        lambda: load_cirr_split(cirr_root, "train"), "cap.rc2.train.json", "line 3", "column"
    )


def test_cirr_top_level_wrong_type(cirr_root: Path) -> None:
    write_json(cirr_root / "image_splits" / "split.rc2.train.json", ["a", "b"])
    raises_with(
        lambda: load_cirr_split(cirr_root, "train"), "split.rc2.train.json", "object", "array"
    )


def _delete(key: str, index: int = 1):
    def edit(data: list) -> None:
        del data[index][key]

    return edit


def _set(key: str, value, index: int = 1):
    def edit(data: list) -> None:
        data[index][key] = value

    return edit


def _del_members(data: list) -> None:
    del data[0]["img_set"]["members"]


def _member_int(data: list) -> None:
    data[0]["img_set"]["members"][1] = 7


def _duplicate(data: list) -> None:
    data.append(dict(data[0], caption="again"))


def _not_object(data: list) -> None:
    data.append("oops")


@pytest.mark.parametrize(
    ("split", "edit", "parts"),
    [
        ("train", _delete("caption"), ["entry 1", "pairid 11", "'caption'", "missing"]),
        ("val", _delete("target_hard"), ["entry 1", "pairid 11", "'target_hard'"]),
        ("val", _delete("target_soft", 0), ["entry 0", "pairid 10", "'target_soft'"]),
        ("train", _delete("pairid", 0), ["entry 0", "'pairid'", "missing"]),
        ("train", _del_members, ["entry 0", "pairid 10", "'img_set.members'"]),
        ("test1", _delete("img_set", 0), ["entry 0", "pairid 500", "'img_set'"]),
        ("train", _set("pairid", "11"), ["entry 1", "'pairid'", "int", "got str"]),
        ("train", _set("caption", 3), ["pairid 11", "'caption'", "str", "got int"]),
        ("train", _set("target_soft", {"x": "high"}), ["pairid 11", "target_soft['x']", "got str"]),
        ("train", _set("target_soft", [1.0]), ["pairid 11", "'target_soft'", "dict", "got list"]),
        ("train", _member_int, ["pairid 10", "img_set.members[1]", "got int"]),
        ("train", _not_object, ["entry 2", "dict", "got str"]),
        ("train", _duplicate, ["duplicate pairid 10", "entries 0 and 2"]),
        ("train", _set("reference", "ghost"), ["pairid 11", "reference", "'ghost'", "image list"]),
        ("val", _set("target_hard", "ghost"), ["pairid 11", "target_hard", "'ghost'"]),
        (
            "train",
            lambda d: d[0]["img_set"]["members"].append("ghost"),
            ["pairid 10", "img_set.members", "'ghost'", "image list"],
        ),
    ],
)
def test_cirr_bad_caption_entries(cirr_root: Path, split: str, edit, parts: list[str]) -> None:
    edit_json(cirr_root / "captions" / f"cap.rc2.{split}.json", edit)
    raises_with(lambda: load_cirr_split(cirr_root, split), f"cap.rc2.{split}.json", *parts)


def test_cirr_image_split_wrong_value_type(cirr_root: Path) -> None:
    edit_json(
        cirr_root / "image_splits" / "split.rc2.val.json",
        lambda d: d.update({"dev-0-0-img1": 5}),
    )
    raises_with(
        lambda: load_cirr_split(cirr_root, "val"),
        "split.rc2.val.json",
        "'dev-0-0-img1'",
        "str",
        "got int",
    )


def test_cirr_missing_image_files_listed_once(cirr_root: Path) -> None:
    (cirr_root / "dev" / "dev-0-0-img1.png").unlink()
    message = raises_with(
        lambda: load_cirr_split(cirr_root, "val"),
        "split.rc2.val.json",
        "1 of 3 image files are missing",
        str(cirr_root / "dev" / "dev-0-0-img1.png"),
    )
    assert "dev-0-0-img0.png" not in message
    assert len(load_cirr_split(cirr_root, "val", check_files=False).triplets) == 2


def test_check_image_files_lists_first_five(tmp_path: Path) -> None:
    images = {f"im{i}": str(tmp_path / f"im{i}.png") for i in range(8)}
    write_image(tmp_path / "im7.png")
    split = Split(name="val", triplets=[], images=images)
    message = raises_with(
        lambda: check_image_files(split, "my source"), "my source", "7 of 8", "first 5"
    )
    assert [f"im{i}.png" in message for i in range(8)] == [True] * 5 + [False] * 3
    check_image_files(Split(name="val", triplets=[], images={"im7": images["im7"]}), "ok")


# ---------------------------------------------------------------- FashionIQ


def test_join_fashioniq_captions() -> None:
    assert join_fashioniq_captions(["is Red.", "longer?"]) == "Is red and longer"
    assert join_fashioniq_captions([" has a collar, ", "."]) == "Has a collar"  # one empty


def test_fashioniq_train_round_trip(fiq_root: Path) -> None:
    split = load_fashioniq_split(fiq_root, "train")
    assert split.name == "train" and split.has_labels
    assert [t.pairid for t in split.triplets] == [
        f"{cat}_{i}" for cat in ("dress", "shirt", "toptee") for i in (0, 1)
    ]
    first = split.triplets[0]
    assert (first.reference, first.target, first.category) == ("d1", "d2", "dress")
    assert first.caption == "Is red and Longer"
    assert first.group is None and first.target_soft == {} and first.source == "original"
    assert split.categories == FIQ_GALLERIES
    assert split.images["s1"] == str(fiq_root / "images" / "s1.jpg")
    assert split.images["d3"] == str(fiq_root / "images" / "d3.png")
    assert set(split.images) == {n for g in FIQ_GALLERIES.values() for n in g}
    assert split.gallery_names("shirt") == ["s1", "s2"]


def test_fashioniq_subset_of_categories_and_test_split(fiq_root: Path) -> None:
    split = load_fashioniq_split(fiq_root, "test", categories=("shirt",))
    assert list(split.categories) == ["shirt"] and set(split.images) == {"s1", "s2"}
    assert all(t.target is None for t in split.triplets) and not split.has_labels


def test_fashioniq_prefers_png_when_both_exist(fiq_root: Path) -> None:
    write_image(fiq_root / "images" / "s1.png")
    split = load_fashioniq_split(fiq_root, "val", categories=("shirt",))
    assert split.images["s1"] == str(fiq_root / "images" / "s1.png")


def test_fashioniq_out_of_gallery_image_on_disk_is_resolved(fiq_root: Path) -> None:
    edit_json(fiq_root / "captions" / "cap.dress.val.json", lambda d: d[1].update(target="x9"))
    split = load_fashioniq_split(fiq_root, "val")
    assert split.images["x9"] == str(fiq_root / "images" / "x9.jpg")
    assert "x9" not in split.categories["dress"]


def test_fashioniq_unknown_image_is_an_error(fiq_root: Path) -> None:
    edit_json(fiq_root / "captions" / "cap.toptee.val.json", lambda d: d[0].update(candidate="zz"))
    raises_with(
        lambda: load_fashioniq_split(fiq_root, "val"),
        "cap.toptee.val.json",
        "pairid toptee_0",
        "candidate 'zz'",
    )


@pytest.mark.parametrize(
    ("edit", "parts"),
    [
        (_delete("target"), ["entry 1", "pairid shirt_1", "'target'", "missing"]),
        (_delete("captions", 0), ["entry 0", "pairid shirt_0", "'captions'"]),
        (_set("captions", "one text"), ["pairid shirt_1", "'captions'", "list", "got str"]),
        (_set("captions", ["one"]), ["pairid shirt_1", "'captions'", "2 texts", "got 1"]),
        (_set("captions", ["a", None]), ["pairid shirt_1", "captions[1]", "got NoneType"]),
        (_set("candidate", 4), ["pairid shirt_1", "'candidate'", "str", "got int"]),
        (_not_object, ["entry 2", "dict", "got str"]),
    ],
)
def test_fashioniq_bad_caption_entries(fiq_root: Path, edit, parts: list[str]) -> None:
    edit_json(fiq_root / "captions" / "cap.shirt.train.json", edit)
    raises_with(lambda: load_fashioniq_split(fiq_root, "train"), "cap.shirt.train.json", *parts)


def test_fashioniq_file_errors(fiq_root: Path) -> None:
    (fiq_root / "captions" / "cap.dress.val.json").unlink()
    raises_with(
        lambda: load_fashioniq_split(fiq_root, "val"),
        str(fiq_root / "captions" / "cap.dress.val.json"),
        "fashionIQ_dataset",
    )
    (fiq_root / "image_splits" / "split.toptee.train.json").write_text("{bad")
    raises_with(
        lambda: load_fashioniq_split(fiq_root, "train"), "split.toptee.train.json", "line 1"
    )
    write_json(fiq_root / "image_splits" / "split.shirt.test.json", {"s1": 1})
    raises_with(lambda: load_fashioniq_split(fiq_root, "test"), "split.shirt.test.json", "array")
    write_json(fiq_root / "image_splits" / "split.shirt.test.json", ["s1", 2])
    raises_with(
        lambda: load_fashioniq_split(fiq_root, "test"),
        "split.shirt.test.json",
        "entry 1",
        "got int",
    )


def test_fashioniq_missing_image_files(fiq_root: Path) -> None:
    for name in ("d1.png", "d2.png", "s2.jpg"):
        (fiq_root / "images" / name).unlink()
    raises_with(
        lambda: load_fashioniq_split(fiq_root, "val"),
        "3 of 7 image files are missing",
        str(fiq_root / "images" / "d1.png"),
        str(fiq_root / "images" / "s2.png"),
    )


# ---------------------------------------------------------------- dispatch


def test_load_split_dispatch(cirr_root: Path, fiq_root: Path) -> None:
    assert load_split("cirr", cirr_root, "val").images == load_cirr_split(cirr_root, "val").images
    assert load_split("CIRR", cirr_root, "test").name == "test1"
    fiq = load_split("fashioniq", fiq_root, "val", categories=("dress",))
    assert list(fiq.categories) == ["dress"]
    with pytest.raises(ValueError, match="unknown dataset 'coco'"):
        load_split("coco", cirr_root, "val")


def test_a_corrupt_image_fails_naming_the_file(tmp_path):
    from src.data.images import ImageLoadError, load_image

    bad = tmp_path / "train" / "broken.png"
    bad.parent.mkdir()
    bad.write_bytes(b"not a png at all")
    with pytest.raises(ImageLoadError, match="broken.png"):
        load_image(bad)
    with pytest.raises(ImageLoadError, match="absent.png"):
        load_image(tmp_path / "absent.png")
