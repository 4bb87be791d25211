"""The garment benchmark: CIRR files, determinism, garments, its grammar, the oracle on it."""

from __future__ import annotations

import hashlib
import json
import random
import re
from pathlib import Path

import pytest
from PIL import Image

from src.augment.pairs import CaptionPair
from src.data.loading import load_split
from src.offline.domain import Change
from src.offline.domains import dataset_domain
from src.offline.garments.benchmark import MAX_IMAGES, build_garment_benchmark, main
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
    VALUES,
    Garment,
    differences,
    garment_to_json,
    load_garments,
)
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


def captions(root: Path, split: str) -> list[dict]:
    return json.loads((root / "captions" / f"cap.rc2.{split}.json").read_text())


def test_the_files_are_cirr_and_byte_identical_for_the_same_arguments(bench, tmp_path, capsys):
    for split, (images, triplets) in {
        "train": (60, 20),
        "val": (30, 10),
        "test1": (30, 10),
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


def test_near_misses_differ_from_the_target_in_one_attribute(bench):
    garments = load_garments(bench)
    edits = set()
    for split in ("train", "val"):
        entries = captions(bench, split)
        for first, second in zip(entries[::2], entries[1::2], strict=True):
            target = garments[first["target_hard"]]
            edits.add(len(differences(garments[first["reference"]], target)))
            near = set(first["img_set"]["members"]) - {first["reference"], first["target_hard"]}
            assert second["reference"] in near and len(near) == 4
            for name in near:
                assert len(differences(garments[name], target)) == 1
                assert garments[name] != garments[first["reference"]]
    assert edits == {1, 2}


def test_every_phrasing_parses_back_to_its_change():
    rng = random.Random(0)
    for reference in (
        Garment("shirt", "red", "plain", "medium", "white"),
        Garment("skirt", "navy", "dotted", "short", "navy"),
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
    reference = Garment("shirt", "red", "plain", "short", "white")
    two = render_changes(
        reference, differences(reference, Garment("jacket", "red", "striped", "short", "white"))
    )
    assert two == "is a jacket instead of a shirt and has stripes"


@pytest.mark.parametrize(
    "text",
    [
        "is red",  # already red
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
        stated_changes(Garment("shirt", "red", "plain", "long", "white"), text)


def test_the_clause_table_reads_every_clause_one_way():
    assert {m.attribute for m in CLAUSES.values()} == set(ATTRIBUTES)
    assert all(", " not in c and " and " not in c for c in CLAUSES)
    reference = Garment("skirt", "red", "plain", "short", "white")
    assert stated_changes(
        reference, "is longer, is navy and also should be a pair of trousers"
    ) == [
        Change("length", None, "medium"),
        Change("colour", None, "navy"),
        Change("category", None, "trousers"),
    ]


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
    assert generation["text"] == describe_difference(
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
