"""The synthetic CIRR-format benchmark: files, determinism, scenes, captions, the oracle."""

from __future__ import annotations

import hashlib
import json
import random
import re
from pathlib import Path

import pytest
from PIL import Image

from src.offline.synthetic.benchmark import build_synthetic_benchmark, main
from src.offline.synthetic.captions import (
    TEMPLATES,
    apply_caption,
    corpus_sentences,
    describe_difference,
    parse_caption,
    render_caption,
)
from src.offline.synthetic.scenes import (
    COLOURS,
    EDIT_KINDS,
    POSITIONS,
    SHAPES,
    SIZES,
    Edit,
    SceneObject,
    apply_edits,
    load_scenes,
    make_scene,
    scene_from_json,
    scene_to_json,
)

SPLITS = {"train": "./train/", "val": "./dev/", "test1": "./test1/"}
SIZE_ARGS = {"num_train_images": 60, "num_val_images": 30, "num_test_images": 30, "image_size": 56}


def file_hashes(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


@pytest.fixture(scope="module")
def bench(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_synthetic_benchmark(tmp_path_factory.mktemp("synthetic"), seed=3, **SIZE_ARGS)


def load(bench: Path, kind: str, split: str):
    name = "captions/cap" if kind == "captions" else "image_splits/split"
    with open(bench / f"{name}.rc2.{split}.json") as f:
        return json.load(f)


def obj(cell: int, colour: str, shape: str, size: str = "small") -> SceneObject:
    return SceneObject(cell, colour, shape, size)


# ---------------------------------------------------------------- files


def test_same_arguments_give_identical_files(bench, tmp_path, capsys):
    main(
        ["--output_dir", str(tmp_path), "--seed", "3"]
        + [f"--{k}={v}" for k, v in SIZE_ARGS.items()]
    )
    assert "synthetic CIRR benchmark" in capsys.readouterr().out
    hashes = file_hashes(bench)
    assert len(hashes) == 2 * 3 + 1 + 120
    assert file_hashes(tmp_path) == hashes


# The JSON files of the `bench` fixture as the writer wrote them before the CIRR writer was
# shared with the garment benchmark: the default benchmark must not change.
JSON_DIGEST = "12965b3815cd43e9c19197dc4f54e054bd4686a2d829c5c25ac8df219bbc451b"


def test_json_files_are_those_of_the_original_writer(bench):
    json_files = sorted((k, v) for k, v in file_hashes(bench).items() if k.endswith(".json"))
    assert len(json_files) == 7
    assert hashlib.sha256(json.dumps(json_files).encode()).hexdigest() == JSON_DIGEST


def test_another_seed_gives_another_benchmark(bench, tmp_path):
    other = build_synthetic_benchmark(
        tmp_path, seed=4, **(SIZE_ARGS | {"num_val_images": 6, "num_test_images": 6})
    )
    assert load(other, "captions", "train") != load(bench, "captions", "train")


def test_cirr_schema_is_exact(bench):
    pairids = []
    all_names: set[str] = set()
    for split, prefix in SPLITS.items():
        images = load(bench, "images", split)
        entries = load(bench, "captions", split)
        assert isinstance(images, dict) and isinstance(entries, list)
        assert len(images) == {"train": 60, "val": 30, "test1": 30}[split]
        assert len(entries) == 2 * len(images) // 6
        name_prefix = {"train": "train", "val": "dev", "test1": "test1"}[split]
        for name, path in images.items():
            assert re.fullmatch(rf"{name_prefix}-\d+-[0-2]-img[01]", name)
            assert path.startswith(prefix) and path.endswith(f"/{name}.png")
            if split == "train":
                assert re.fullmatch(r"\./train/\d+/[\w-]+\.png", path)
            with Image.open(bench / path) as image:
                assert image.size == (56, 56) and image.mode == "RGB"
        assert not all_names & images.keys()
        all_names |= images.keys()
        labelled = split != "test1"
        entry_keys = ["pairid", "reference", "target_hard", "target_soft", "caption", "img_set"]
        set_keys = ["id", "members", "reference_rank", "target_rank"]
        if not labelled:
            entry_keys = [k for k in entry_keys if k not in ("target_hard", "target_soft")]
            set_keys = set_keys[:3]
        for entry in entries:
            assert list(entry) == entry_keys
            assert list(entry["img_set"]) == set_keys
            assert type(entry["pairid"]) is int and type(entry["img_set"]["id"]) is int
            assert isinstance(entry["caption"], str) and entry["caption"]
            members = entry["img_set"]["members"]
            assert len(members) == 6 == len(set(members))
            assert all(isinstance(m, str) and m in images for m in members)
            assert type(entry["img_set"]["reference_rank"]) is int
            assert members[entry["img_set"]["reference_rank"]] == entry["reference"]
            assert entry["reference"] in images
            if labelled:
                assert type(entry["img_set"]["target_rank"]) is int
                assert members[entry["img_set"]["target_rank"]] == entry["target_hard"]
                assert entry["target_hard"] in images
                assert entry["target_hard"] != entry["reference"]
                soft = entry["target_soft"]
                assert soft[entry["target_hard"]] == 1.0
                assert all(type(v) is float and v in (1.0, -1.0) for v in soft.values())
                assert set(soft) <= set(members) - {entry["reference"]}
            pairids.append(entry["pairid"])
    assert len(pairids) == len(set(pairids))
    assert set(json.loads((bench / "scenes.json").read_text())) == all_names


# ---------------------------------------------------------------- scenes and captions


def changed_attributes(a, b) -> list[str] | None:
    """The attributes of the one object that differs between scenes a and b, else None."""
    only_a, only_b = set(a) - set(b), set(b) - set(a)
    if len(a) != len(b) or len(only_a) != 1 or len(only_b) != 1:
        return None
    (x,), (y,) = only_a, only_b
    return [k for k in ("colour", "shape", "size", "cell") if getattr(x, k) != getattr(y, k)]


def test_near_misses_differ_from_the_target_by_one_attribute(bench):
    scenes = load_scenes(bench)
    assert len(set(scenes.values())) == len(scenes)  # no image repeats anywhere
    for split in ("train", "val"):
        entries = load(bench, "captions", split)
        for first, second in zip(entries[::2], entries[1::2], strict=True):
            assert first["img_set"]["members"] == second["img_set"]["members"]
            target = first["target_hard"]
            assert second["target_hard"] == target
            near = set(first["img_set"]["members"]) - {first["reference"], target}
            assert second["reference"] in near
            for name in near:
                assert len(changed_attributes(scenes[target], scenes[name]) or []) == 1
                assert scenes[name] != scenes[first["reference"]]


def test_every_caption_is_unambiguous_and_gives_the_target(bench):
    scenes = load_scenes(bench)
    for split in SPLITS:
        for entry in load(bench, "captions", split):
            result = apply_caption(scenes[entry["reference"]], entry["caption"])
            if split == "test1":
                assert result in [scenes[m] for m in entry["img_set"]["members"]]
            else:
                assert result == scenes[entry["target_hard"]]


def test_scene_json_round_trip(bench):
    data = json.loads((bench / "scenes.json").read_text())
    for item in data.values():
        assert 2 <= len(item) <= 4
        assert all(list(o) == ["colour", "shape", "size", "row", "col"] for o in item)
        assert scene_to_json(scene_from_json(item)) == item


def test_every_phrasing_parses_back_to_its_edit():
    assert all(len(TEMPLATES[k]) >= 3 for k in ("add", "remove", "recolour", "reshape", "move"))
    assert len(TEMPLATES["grow"]) >= 3 and len(TEMPLATES["shrink"]) >= 3
    rng = random.Random(0)
    scene = make_scene(
        [obj(0, "red", "circle"), obj(1, "red", "circle", "large"), obj(4, "blue", "star")]
    )
    edits = [
        Edit("add", 8, "green", "square", "large"),
        Edit("remove", 0),
        Edit("recolour", 1, colour="yellow"),
        Edit("reshape", 4, shape="triangle"),
        Edit("resize", 0, size="large"),
        Edit("resize", 1, size="small"),
        Edit("move", 4, to_cell=6),
    ]
    assert {e.kind for e in edits} == set(EDIT_KINDS)
    for edit in edits:
        texts = {render_caption(scene, [edit], rng) for _ in range(200)}
        assert len(texts) >= 3
        for text in texts:
            assert parse_caption(scene, text) == [edit]
        for second in edits:
            if second.cell != edit.cell and edit.kind != "add" and second.kind != "add":
                pair = [edit, second]
                for _ in range(5):
                    assert parse_caption(scene, render_caption(scene, pair, rng)) == pair


def test_ambiguous_or_impossible_captions_are_rejected():
    scene = make_scene([obj(0, "blue", "square"), obj(2, "blue", "square"), obj(4, "red", "star")])
    for text in (
        "remove the blue square",  # two blue squares
        "remove the green circle",  # none
        "make the red star red",  # no change
        "add a small red star at the center",  # occupied cell
        "make the red star smaller",  # already small
        "fly the red star to the moon",  # not a caption
    ):
        with pytest.raises(ValueError):
            apply_caption(scene, text)
    assert apply_caption(scene, "remove the blue square at the top left") == make_scene(
        [obj(2, "blue", "square"), obj(4, "red", "star")]
    )


# ---------------------------------------------------------------- the scene oracle


BASE = make_scene(
    [obj(0, "red", "circle"), obj(4, "blue", "square", "large"), obj(8, "green", "triangle")]
)


@pytest.mark.parametrize(
    ("edits", "expected"),
    [
        ([Edit("add", 2, "yellow", "star", "small")], "add a small yellow star at the top right"),
        ([Edit("remove", 4)], "remove the blue square"),
        ([Edit("recolour", 8, colour="yellow")], "make the green triangle yellow"),
        ([Edit("reshape", 0, shape="star")], "change the red circle into a star"),
        ([Edit("resize", 0, size="large")], "make the red circle bigger"),
        ([Edit("resize", 4, size="small")], "make the blue square smaller"),
        ([Edit("move", 4, to_cell=7)], "move the blue square to the bottom"),
        (
            [Edit("remove", 4), Edit("move", 0, to_cell=4)],
            "remove the blue square and move the red circle to the center",
        ),
        (
            [Edit("recolour", 0, colour="blue"), Edit("resize", 0, size="large")],
            "make the red circle blue and make the blue circle bigger",
        ),
    ],
)
def test_describe_difference_on_hand_built_scenes(edits, expected):
    target = apply_edits(BASE, edits)
    assert describe_difference(BASE, target) == expected
    assert parse_caption(BASE, expected) == edits
    assert describe_difference(scene_to_json(BASE), scene_to_json(target)) == expected


def test_describe_difference_names_objects_unambiguously():
    scene = make_scene(
        [obj(0, "red", "circle"), obj(1, "red", "circle", "large"), obj(3, "red", "circle")]
    )
    expected = {
        0: "remove the red circle at the top left",
        1: "remove the large red circle",
        3: "remove the red circle at the left",
    }
    for cell, text in expected.items():
        target = make_scene([o for o in scene if o.cell != cell])
        assert describe_difference(scene, target) == text
    swapped = make_scene(
        [obj(0, "red", "circle", "large"), obj(1, "red", "circle"), obj(3, "red", "circle")]
    )
    text = describe_difference(scene, swapped)
    assert text is not None and apply_caption(scene, text) == swapped


def test_describe_difference_needs_one_or_two_edits():
    assert describe_difference(BASE, BASE) is None
    three = apply_edits(
        BASE,
        [Edit("remove", 0), Edit("remove", 4), Edit("add", 1, "red", "star", "small")],
    )
    assert describe_difference(BASE, three) is None


def test_describe_difference_round_trips_on_the_benchmark(bench):
    scenes = load_scenes(bench)
    described = 0
    for entry in load(bench, "captions", "train"):
        reference = scenes[entry["reference"]]
        for member in entry["img_set"]["members"]:
            text = describe_difference(reference, scenes[member])
            if text is not None:
                assert apply_caption(reference, text) == scenes[member]
                described += 1
    assert described >= len(load(bench, "captions", "train")) * 4


def test_corpus_covers_every_caption_word(bench):
    vocabulary = set(re.findall(r"\w+", " ".join(corpus_sentences())))
    words: set[str] = set(COLOURS) | set(SHAPES) | set(SIZES)
    words |= {w for p in POSITIONS for w in p.split()}
    scenes = load_scenes(bench)
    for split in SPLITS:
        for entry in load(bench, "captions", split):
            words |= set(re.findall(r"\w+", entry["caption"]))
            for member in entry["img_set"]["members"]:
                text = describe_difference(scenes[entry["reference"]], scenes[member])
                words |= set(re.findall(r"\w+", text or ""))
    for templates in TEMPLATES.values():
        words |= {w for t in templates for w in re.findall(r"\w+", re.sub(r"\{\w+\}", "", t))}
    assert words <= vocabulary, words - vocabulary
