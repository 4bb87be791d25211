"""The domains' changes: every difference of any pair, salience, texts that state chosen
changes, and agreement with the scene oracle where it speaks."""

from __future__ import annotations

import json
import random
from collections import Counter
from pathlib import Path

import pytest

from src.offline.caption_truth import describes, named_changes
from src.offline.domain import Change
from src.offline.domains import DOMAINS, dataset_domain, description_domain
from src.offline.garments.benchmark import build_garment_benchmark
from src.offline.garments.domain import GARMENTS_DOMAIN
from src.offline.garments.garments import Garment
from src.offline.synthetic.domain import SHAPES_DOMAIN
from src.offline.synthetic.scenes import SceneObject, make_scene


@pytest.fixture(scope="module")
def garment_benchmark(tmp_path_factory) -> Path:
    return build_garment_benchmark(tmp_path_factory.mktemp("g"), 60, 6, 6, image_size=28)


def set_pairs(root: Path) -> list[tuple[str, str]]:
    """(reference, member) for every triplet of the training split and member of its set."""
    entries = json.loads((root / "captions" / "cap.rc2.train.json").read_text())
    return [(e["reference"], m) for e in entries for m in e["img_set"]["members"]]


def obj(cell: int, colour: str, shape: str, size: str = "small") -> SceneObject:
    return SceneObject(cell, colour, shape, size)


def test_domains_are_recognised_by_their_files(small_benchmark, garment_benchmark, tmp_path):
    assert dataset_domain(small_benchmark) is SHAPES_DOMAIN
    assert dataset_domain(garment_benchmark) is GARMENTS_DOMAIN
    assert dataset_domain(tmp_path) is None
    for domain in DOMAINS:
        (tmp_path / domain.descriptions_file).write_text("{}")
    assert dataset_domain(tmp_path) is None  # both files: neither benchmark
    assert description_domain(make_scene([obj(0, "red", "star")])) is SHAPES_DOMAIN
    garment = Garment("shirt", "red", "plain", "long", "collared", "white")
    assert description_domain(garment) is GARMENTS_DOMAIN
    with pytest.raises(ValueError):
        description_domain("a cat")


def test_shapes_salience_and_matching():
    base = make_scene(
        [obj(0, "red", "circle"), obj(4, "blue", "square", "large"), obj(8, "green", "star")]
    )
    target = make_scene(
        [obj(2, "yellow", "star"), obj(7, "blue", "square", "large"), obj(8, "red", "star")]
    )
    assert SHAPES_DOMAIN.differences(base, target) == [
        Change("add", 2, obj(2, "yellow", "star")),
        Change("remove", 0, None),
        Change("recolour", 8, "red"),
        Change("move", 4, 7),
    ]
    # Large objects first within a kind; an object two attributes away is still edited in place.
    two = make_scene([obj(4, "blue", "square", "large"), obj(8, "green", "star")])
    assert [c.subject for c in SHAPES_DOMAIN.differences(base, make_scene([]))] == [4, 0, 8]
    assert SHAPES_DOMAIN.differences(
        two, make_scene([obj(4, "red", "circle", "large"), obj(8, "green", "star")])
    ) == [
        Change("recolour", 4, "red"),
        Change("reshape", 4, "circle"),
    ]
    # Equal costs: recolour in place rather than swap cells.
    swapped_colours = make_scene([obj(0, "blue", "circle"), obj(1, "red", "circle")])
    same_shapes = make_scene([obj(0, "red", "circle"), obj(1, "blue", "circle")])
    assert {c.kind for c in SHAPES_DOMAIN.differences(same_shapes, swapped_colours)} == {"recolour"}


def test_a_swap_of_cells_cannot_be_stated():
    scene = make_scene([obj(0, "red", "circle"), obj(1, "blue", "star", "large")])
    swapped = make_scene([obj(1, "red", "circle"), obj(0, "blue", "star", "large")])
    assert [c.kind for c in SHAPES_DOMAIN.differences(scene, swapped)] == ["move", "move"]
    assert named_changes(SHAPES_DOMAIN, scene, swapped, 2) == []
    assert not describes(scene, swapped, "move the red circle to the top")


def test_the_scene_oracle_names_what_a_careful_captioner_names(small_benchmark, garment_benchmark):
    for root in (small_benchmark, garment_benchmark):
        domain = dataset_domain(root)
        descriptions = domain.load_descriptions(root)
        agree = spoken = 0
        for reference, member in set_pairs(root):
            text = domain.describe_difference(descriptions[reference], descriptions[member], None)
            if text is None:
                continue
            spoken += 1
            stated = domain.stated_changes(descriptions[reference], text)
            # Both are cheapest: the oracle states as many changes as there are differences.
            assert len(stated) == len(
                domain.differences(descriptions[reference], descriptions[member])
            )
            agree += describes(descriptions[reference], descriptions[member], text)
        assert spoken >= len(set_pairs(root)) * 4 / 6
        # Where two cheapest matchings tie, the oracle may pick the other one.
        assert agree >= 0.98 * spoken


@pytest.mark.parametrize("domain", DOMAINS, ids=lambda d: d.name)
def test_stated_changes_read_back_what_was_rendered(domain, small_benchmark, garment_benchmark):
    root = small_benchmark if domain is SHAPES_DOMAIN else garment_benchmark
    descriptions = domain.load_descriptions(root)
    names = sorted(descriptions)
    rng = random.Random(0)
    for _ in range(150):
        reference, target = (descriptions[n] for n in rng.sample(names, 2))
        changes = domain.differences(reference, target)
        assert domain.differences(reference, reference) == []
        for subset in (changes[:1], changes[:2], changes[1:3]):
            text = domain.render_changes(reference, subset, rng)
            if text is not None:
                assert Counter(domain.stated_changes(reference, text)) == Counter(subset)
        for change in changes[:2]:
            options = domain.alternatives(reference, change)
            assert change not in options
        possible = domain.possible_changes(reference)
        assert len(set(possible)) == len(possible)
        assert all(domain.render_changes(reference, [c], None) for c in rng.sample(possible, 10))
