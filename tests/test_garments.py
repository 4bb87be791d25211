"""The garment benchmark: CIRR files, determinism, garments, its grammar, the oracle on it."""

from __future__ import annotations

import hashlib
import inspect
import itertools
import json
import random
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from src.augment.pairs import CaptionPair
from src.data.loading import load_split
from src.offline.domain import Change
from src.offline.domains import dataset_domain
from src.offline.garments.benchmark import (
    MAX_IMAGES,
    _random_image_set,
    build_garment_benchmark,
    main,
)
from src.offline.garments.captions import (
    CLAUSES,
    apply_caption,
    corpus_sentences,
    describe_difference,
    render_changes,
    stated_changes,
)
from src.offline.garments.garments import (
    ATTRIBUTES,
    CATEGORIES,
    NECKLINES,
    VALUES,
    Garment,
    differences,
    garment_to_json,
    load_garments,
)
from src.offline.garments.render import render_garment
from src.offline.scene_oracle import SCENE_ORACLE, SceneOracle
from src.offline.tiny import INFO_FILE, qwen_tokenizer
from src.offline.tiny import main as tiny_main

SIZES = {"num_train_images": 60, "num_val_images": 30, "num_test_images": 30, "image_size": 28}
WORD = re.compile(r"[^\W\d_]+")


def file_hashes(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


@pytest.fixture(scope="module")
def bench(tmp_path_factory) -> Path:
    return build_garment_benchmark(tmp_path_factory.mktemp("garments"), seed=3, **SIZES)


def replace_(garment: Garment, **values: str) -> Garment:
    return Garment(**(garment_to_json(garment) | values))


def captions(root: Path, split: str) -> list[dict]:
    return json.loads((root / "captions" / f"cap.rc2.{split}.json").read_text())


def test_the_files_are_cirr_and_byte_identical_for_the_same_arguments(bench, tmp_path, capsys):
    for split, (images, triplets) in {
        "train": (60, 40),  # ten sets, four triplets each (the default)
        "val": (30, 20),
        "test1": (30, 20),
    }.items():
        data = load_split("cirr", bench, split)
        assert (len(data.images), len(data.triplets)) == (images, triplets)
    names = json.loads((bench / "image_splits" / "split.rc2.train.json").read_text())
    assert all(re.fullmatch(r"\./train/0/train-\d+-[0-2]-img[01]\.png", p) for p in names.values())
    with Image.open(bench / names["train-0-0-img0"]) as image:
        assert image.size == (28, 28) and image.mode == "RGB"
    assert dataset_domain(bench).name == "garments"
    main(
        ["--output_dir", str(tmp_path / "again"), "--seed", "3"]
        + [f"--{k}={v}" for k, v in SIZES.items()]
    )
    assert "garment CIRR benchmark" in capsys.readouterr().out
    hashes = file_hashes(bench)
    assert len(hashes) == 2 * 3 + 1 + 120
    assert file_hashes(tmp_path / "again") == hashes
    other = build_garment_benchmark(tmp_path / "other", seed=4, **SIZES)
    assert captions(other, "train") != captions(bench, "train")


def test_the_default_image_size_is_84_and_sizes_are_bounded(tmp_path):
    assert MAX_IMAGES == 5 * 10 * 4 * 3 * 3 * 10 // 2 == 9000
    defaults = {
        name: parameter.default
        for name, parameter in inspect.signature(build_garment_benchmark).parameters.items()
        if parameter.default is not inspect.Parameter.empty
    }
    assert defaults == {
        "num_train_images": 4200,
        "num_val_images": 1800,
        "num_test_images": 300,
        "image_size": 84,
        "seed": 0,
        "triplets_per_set": 4,
    }
    with pytest.raises(ValueError, match="at most"):
        build_garment_benchmark(tmp_path, num_train_images=MAX_IMAGES)
    root = build_garment_benchmark(tmp_path / "b", 6, 6, 6)
    with Image.open(next((root / "train").rglob("*.png"))) as image:
        assert image.size == (84, 84)


def test_no_garment_or_image_is_shared(bench, small_benchmark):
    garments = load_garments(bench)
    assert len(set(garments.values())) == len(garments) == 120
    images = [h for name, h in file_hashes(bench).items() if name.endswith(".png")]
    assert len(set(images)) == len(images) == 120  # no two images alike
    shapes = {h for name, h in file_hashes(small_benchmark).items() if name.endswith(".png")}
    assert not shapes & set(images)
    assert not (bench / "scenes.json").exists()


def test_every_caption_parses_back_to_its_target(bench):
    garments = load_garments(bench)
    for split in ("train", "val", "test1"):
        for entry in captions(bench, split):
            result = apply_caption(garments[entry["reference"]], entry["caption"])
            if split == "test1":
                assert result in [garments[m] for m in entry["img_set"]["members"]]
            else:
                assert result == garments[entry["target_hard"]]


def test_the_sets_of_the_default_sizes_are_drawn_quickly_and_never_repeat_a_garment():
    rng, seen = random.Random(0), set()
    for _ in range((4200 + 1800 + 300) // 6):
        _random_image_set(rng, seen, 4)
    assert len(seen) == 6300


def test_near_misses_differ_from_the_target_in_one_attribute(bench):
    garments = load_garments(bench)
    edits, missed = set(), set()
    for split in ("train", "val"):
        entries = captions(bench, split)
        for _, group in itertools.groupby(entries, key=lambda e: e["img_set"]["id"]):
            first, *others = group
            assert len(others) == 3  # R -> T, then three near misses -> T
            target = garments[first["target_hard"]]
            edits.add(len(differences(garments[first["reference"]], target)))
            near = set(first["img_set"]["members"]) - {first["reference"], first["target_hard"]}
            assert len(near) == 4 and {e["reference"] for e in others} <= near
            assert all(e["target_hard"] == first["target_hard"] for e in others)
            for name in near:
                (change,) = differences(garments[name], target)
                missed.add(change.kind)
                assert garments[name] != garments[first["reference"]]
    assert edits == {1, 2}
    assert missed == set(ATTRIBUTES)  # the neckline too


def test_a_near_miss_in_the_neckline_alone():
    target = Garment("skirt", "navy", "dotted", "short", "collared", "navy")
    for neckline in ("round", "v-neck"):
        near = Garment("skirt", "navy", "dotted", "short", neckline, "navy")
        assert differences(near, target) == [Change("neckline", None, "collared")]


def test_every_phrasing_parses_back_to_its_change():
    rng = random.Random(0)
    for reference in (
        Garment("shirt", "red", "plain", "medium", "round", "white"),
        Garment("skirt", "navy", "dotted", "short", "collared", "navy"),
        Garment("jacket", "olive", "checked", "long", "v-neck", "beige"),
    ):
        for attribute in ATTRIBUTES:
            for value in VALUES[attribute]:
                if value == getattr(reference, attribute):
                    continue
                target = Garment(**(garment_to_json(reference) | {attribute: value}))
                texts = {describe_difference(reference, target, rng) for _ in range(60)}
                assert describe_difference(reference, target) in texts
                for text in texts:
                    assert apply_caption(reference, text) == target
    reference = Garment("shirt", "red", "plain", "short", "round", "white")
    two = render_changes(
        reference,
        differences(reference, Garment("jacket", "red", "striped", "short", "round", "white")),
    )
    assert two == "is a jacket instead of a shirt and has stripes"
    neck = Garment("shirt", "red", "plain", "short", "v-neck", "white")
    assert describe_difference(reference, neck) == "has a v-neck"
    assert apply_caption(reference, "has a v-neck instead of a round neck") == neck
    assert apply_caption(reference, "comes with a v-neck") == neck


def test_the_neckline_is_named_by_the_part_the_garment_has():
    """A neck on shirts, dresses and jackets, a waistband on skirts and trousers; a clause
    that names the reference's neckline needs the reference to have the same part."""
    rng = random.Random(1)
    shirt = Garment("shirt", "red", "plain", "short", "round", "white")
    skirt = Garment("skirt", "red", "plain", "short", "round", "white")
    assert describe_difference(skirt, replace_(skirt, neckline="v-neck")) == (
        "has a v-shaped waistband"
    )
    assert apply_caption(skirt, "has a paperbag waist instead of a straight waistband") == (
        replace_(skirt, neckline="collared")
    )
    # Across parts: shirt -> skirt with a new neckline; the clause speaks of the waist.
    target = replace_(skirt, neckline="collared")
    texts = {describe_difference(shirt, target, rng) for _ in range(80)}
    assert all("paperbag waist" in t and "instead of a round neck" not in t for t in texts)
    assert all(apply_caption(shirt, t) == target for t in texts)
    assert describe_difference(shirt, target) == (
        "is a skirt instead of a shirt and has a paperbag waist"
    )
    # Unchanged across parts: the value stays (a round neck becomes a straight waistband).
    assert apply_caption(shirt, "is a skirt") == skirt
    for category in CATEGORIES:
        garment = replace_(shirt, category=category)
        for neckline in NECKLINES:
            if neckline != garment.neckline:
                changed = replace_(garment, neckline=neckline)
                for text in {describe_difference(garment, changed, rng) for _ in range(30)}:
                    assert apply_caption(garment, text) == changed


@pytest.mark.parametrize(
    "text",
    [
        "is red",  # already red
        "has a round neck",  # already round
        "has a collar instead of a v-neck",  # the reference's neck is round
        "has a v-shaped waistband",  # a shirt has a neck
        "is a skirt and has a v-neck",  # a skirt has a waistband
        "is a dress and has a collar instead of a straight waistband",  # a shirt has a neck
        "has a v-neck and has a collar",  # two necklines
        "is a dress instead of a skirt",  # the reference is a shirt
        "is longer and has long sleeves",  # a shirt stays sleeved, "longer" speaks of a hem
        "is blue",  # not a colour of the benchmark
        "is navy and is black",  # two colours
        "has longer sleeves",  # already long
        "is navy, and",
    ],
)
def test_bad_captions_are_rejected(text):
    with pytest.raises(ValueError):
        stated_changes(Garment("shirt", "red", "plain", "long", "round", "white"), text)


def test_the_clause_table_reads_every_clause_one_way():
    assert {m.attribute for m in CLAUSES.values()} == set(ATTRIBUTES)
    assert all(", " not in c and " and " not in c for c in CLAUSES)
    reference = Garment("skirt", "red", "plain", "short", "round", "white")
    assert stated_changes(
        reference, "is longer, is navy and also should be a pair of trousers"
    ) == [
        Change("length", None, "medium"),
        Change("colour", None, "navy"),
        Change("category", None, "trousers"),
    ]
    assert stated_changes(
        reference,
        "has a v-shaped waistband instead of a straight waistband and is a pair of trousers",
    ) == [Change("neckline", None, "v-neck"), Change("category", None, "trousers")]


@pytest.mark.parametrize("category", CATEGORIES)
def test_every_neckline_renders_visibly_at_the_top_edge(category):
    """Two necklines differ in many pixels at 84 px, even where the trim is the main colour
    (the shape shows by the opening or the silhouette), and only in the top part."""
    for colour, trim, pattern in (("teal", "beige", "plain"), ("black", "black", "checked")):
        images = {
            n: np.asarray(render_garment(Garment(category, colour, pattern, "short", n, trim)))
            for n in NECKLINES
        }
        for a, b in itertools.combinations(NECKLINES, 2):
            changed = np.abs(images[a].astype(int) - images[b].astype(int)).sum(axis=-1) > 30
            rows = np.nonzero(changed)[0]
            assert changed.sum() >= 60, (a, b, changed.sum())
            assert rows.max() < 0.45 * 84  # the top edge: neck or waistband


def test_the_scene_oracle_works_on_garments(bench, small_benchmark, tmp_path):
    assert SCENE_ORACLE.works_on(bench) and SCENE_ORACLE.works_on(small_benchmark)
    assert not SCENE_ORACLE.works_on(tmp_path)
    oracle = SceneOracle(bench)
    triplet = load_split("cirr", bench, "train").triplets[0]
    pair = CaptionPair(
        "p", triplet.pairid, triplet.reference, "", triplet.target, "", triplet.caption, None
    )
    (generation,) = oracle.generate([pair])
    garments = load_garments(bench)
    assert generation.text == describe_difference(
        garments[triplet.reference], garments[triplet.target], random.Random("p")
    )
    near = next(m for m in triplet.group if m not in (triplet.reference, triplet.target))
    other = CaptionPair("o", "x", triplet.reference, "", near, "", triplet.caption, None)
    assert oracle.yes_probabilities([pair, other], [triplet.caption, triplet.caption]) == [1.0, 0.0]
    assert oracle.describe()["method"] == "exact scene difference from garments.json"


def test_a_tiny_tokenizer_with_the_garment_corpus_reads_its_words_whole(bench):
    words = {w for text in corpus_sentences() for w in WORD.findall(text)}
    for split in ("train", "val", "test1"):
        words |= {w for e in captions(bench, split) for w in WORD.findall(e["caption"])}
    assert words <= {w for text in corpus_sentences() for w in WORD.findall(text)}
    tokenizer = qwen_tokenizer(corpus_sentences())
    assert all(len(tokenizer.tokenize(" " + word)) == 1 for word in words)
    default = qwen_tokenizer()
    assert qwen_tokenizer(()).get_vocab() == default.get_vocab()
    assert any(len(default.tokenize(" " + word)) > 1 for word in words)


def test_a_tiny_checkpoint_for_garments_from_the_command_line(tmp_path, capsys):
    tiny_main(
        ["--backbone", "qwen2_vl", "--output_dir", str(tmp_path), "--extra_corpus", "garments"]
    )
    assert "parameters" in capsys.readouterr().out
    info = json.loads((tmp_path / INFO_FILE).read_text())
    assert info["extra_corpus_texts"] == len(corpus_sentences())
    assert info["vocab_size"] > len(qwen_tokenizer())
