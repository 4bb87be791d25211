"""The simulated captioner: its error rates, its determinism, its truth (`describes`), its judge."""

from __future__ import annotations

import itertools
import math
import random
from collections import Counter
from dataclasses import asdict
from pathlib import Path

import pytest

from src.augment.pairs import CaptionPair
from src.data.loading import load_split
from src.offline.caption_errors import (
    DEFAULT_CAPTION_ERRORS,
    ERROR_KINDS,
    CaptionErrorRates,
    PairCase,
    make_mistake,
)
from src.offline.caption_truth import describes
from src.offline.domain import Change
from src.offline.garments.benchmark import build_garment_benchmark
from src.offline.garments.domain import GARMENTS_DOMAIN
from src.offline.garments.garments import Garment
from src.offline.simulated_captioner import SimulatedCaptioner, simulated_dataset_captioner
from src.offline.synthetic.scenes import SceneObject, make_scene
from src.records import Generation, Simulation


@pytest.fixture(scope="module")
def garment_benchmark(tmp_path_factory) -> Path:
    return build_garment_benchmark(
        tmp_path_factory.mktemp("garments"),
        num_train_images=120,
        num_val_images=60,
        num_test_images=30,
        image_size=28,
    )


def pair(
    reference: str, negative: str, caption: str = "make it so", pairid: str = "p"
) -> CaptionPair:
    return CaptionPair(pairid, "s", reference, "", negative, "", caption, None)


def random_pairs(captioner: SimulatedCaptioner, n: int, seed: int = 0) -> list[CaptionPair]:
    """n distinct ordered pairs of different training images, each with its own caption."""
    names = sorted(name for name in captioner.descriptions if name.startswith("train"))
    chosen = random.Random(seed).sample(list(itertools.permutations(names, 2)), n)
    return [pair(a, b, f"caption {i % 7}", f"p{i}") for i, (a, b) in enumerate(chosen)]


def kinds(captioner: SimulatedCaptioner, p: CaptionPair) -> list[str]:
    """The kinds of the pair's differences, most salient first."""
    reference, negative = captioner.descriptions[p.reference], captioner.descriptions[p.negative]
    return [change.kind for change in captioner.domain.differences(reference, negative)]


def within(count: int, n: int, rate: float, sigmas: float = 4.0) -> bool:
    return abs(count / n - rate) <= sigmas * math.sqrt(rate * (1 - rate) / n) + 1e-12


# ---------------------------------------------------------------- rates


def test_rates_are_validated():
    assert CaptionErrorRates(0.22, 0.03, 0.03, 0.01, 0.01, 0.43, 0.0, 2) == DEFAULT_CAPTION_ERRORS
    assert CaptionErrorRates().max_named_changes == 2
    for bad in (
        {"wrong_value": -0.1},
        {"judge_false_yes": 1.5},
        {"extra_change": float("nan")},
        {"missed_change": True},
        {"wrong_value": 0.6, "repeated_original": 0.5},  # the five text errors sum over 1
        {"max_named_changes": 0},
        {"max_named_changes": 2.0},
    ):
        with pytest.raises(ValueError):
            CaptionErrorRates(**bad)
    assert CaptionErrorRates(0.2, 0.2, 0.2, 0.2, 0.2, 1.0, 1.0).judge_false_no == 1.0


def test_the_cap_must_fit_the_grammar(small_benchmark, garment_benchmark):
    with pytest.raises(ValueError, match="shapes grammar states 1 to 2"):
        SimulatedCaptioner(small_benchmark, CaptionErrorRates(max_named_changes=3))
    assert SimulatedCaptioner(garment_benchmark, CaptionErrorRates(max_named_changes=6))
    with pytest.raises(ValueError, match="garments grammar states 1 to 6"):
        SimulatedCaptioner(garment_benchmark, CaptionErrorRates(max_named_changes=7))


def test_each_mistake_comes_at_its_rate_and_the_judge_errs_at_its_rate(small_benchmark):
    captioner = SimulatedCaptioner(small_benchmark)
    pairs = random_pairs(captioner, 3000)
    generations = captioner.generate(pairs)
    records = [g.simulation for g in generations]
    assert all(g.text is not None and g.finished for g in generations)
    errors = Counter(r.error for r in records)
    rates = asdict(DEFAULT_CAPTION_ERRORS)
    for kind in ERROR_KINDS:
        assert within(errors[kind], len(pairs), rates[kind]), (kind, errors[kind])
    # The truth: every text without a mistake is right; these three mistakes never are.
    assert all(r.correct for r in records if r.error is None)
    wrong = ("wrong_value", "missed_change", "extra_change")
    assert not any(r.correct for r in records if r.error in wrong)
    assert all(r.named == min(2, r.differences) for r in records if r.error is None)
    answers = captioner.yes_probabilities(pairs, [g.text for g in generations])
    assert set(answers) <= {0.0, 1.0}
    pairs_judged = list(zip(answers, records, strict=True))
    wrong_texts = [a for a, r in pairs_judged if not r.correct]
    right_texts = [a for a, r in pairs_judged if r.correct]
    assert within(sum(a == 1.0 for a in wrong_texts), len(wrong_texts), DEFAULT_CAPTION_ERRORS.judge_false_yes)
    assert within(sum(a == 0.0 for a in right_texts), len(right_texts), DEFAULT_CAPTION_ERRORS.judge_false_no)


@pytest.mark.parametrize("kind", ERROR_KINDS)
def test_each_mistake_on_both_domains(small_benchmark, garment_benchmark, kind):
    for root in (small_benchmark, garment_benchmark):
        captioner = SimulatedCaptioner(root, CaptionErrorRates(**{kind: 1.0}))
        # Two differences or more: every mistake is possible.
        pairs = [p for p in random_pairs(captioner, 80, seed=1) if len(kinds(captioner, p)) >= 2][
            :60
        ]
        records = [g.simulation for g in captioner.generate(pairs)]
        assert Counter(r.error for r in records) == {kind: 60}
        if kind in ("wrong_value", "missed_change", "extra_change"):
            assert not any(r.correct for r in records)
        if kind == "missed_change":
            assert all(r.named == 1 for r in records)
        if kind == "repeated_original":
            assert [g.text for g in captioner.generate(pairs)] == [
                p.original_caption for p in pairs
            ]


def single_differences(captioner: SimulatedCaptioner, root: Path) -> list[CaptionPair]:
    """(target, member) pairs of the benchmark's sets that differ in one change (the near
    misses)."""
    pairs = [
        pair(triplet.target, member, triplet.caption)
        for triplet in load_split("cirr", root, "train").triplets
        for member in triplet.group
    ]
    return [p for p in pairs if len(kinds(captioner, p)) == 1]


def test_an_impossible_mistake_falls_back_to_the_next(small_benchmark, garment_benchmark):
    # One difference: nothing to leave out, so a false change is added instead.
    captioner = SimulatedCaptioner(garment_benchmark, CaptionErrorRates(missed_change=1.0))
    records = [
        g.simulation
        for g in captioner.generate(single_differences(captioner, garment_benchmark))
    ]
    assert {r.error for r in records} == {"extra_change"}
    assert all(r.differences == 1 and r.named == 2 for r in records)
    # A lone resize has no other value (two sizes), and nothing to leave out.
    captioner = SimulatedCaptioner(small_benchmark, CaptionErrorRates(wrong_value=1.0))
    pairs = single_differences(captioner, small_benchmark)
    resized = [p for p in pairs if kinds(captioner, p) == ["resize"]]
    assert resized
    assert {g.simulation.error for g in captioner.generate(resized)} == {"extra_change"}


# ---------------------------------------------------------------- determinism


def test_the_same_pair_gets_the_same_text_in_any_batch_or_order(small_benchmark):
    first = SimulatedCaptioner(small_benchmark)
    pairs = random_pairs(first, 80, seed=2)
    together = first.generate(pairs)
    # Another instance, the reverse order, other pairids, batches of three.
    second = SimulatedCaptioner(small_benchmark)
    renamed = [
        CaptionPair(f"other{i}", "t", p.reference, "x", p.negative, "y", p.original_caption, "z")
        for i, p in enumerate(reversed(pairs))
    ]
    apart = [g for i in range(0, len(renamed), 3) for g in second.generate(renamed[i : i + 3])]
    assert list(reversed(apart)) == together
    texts = [g.text for g in together]
    answers = first.yes_probabilities(pairs, texts)
    assert list(reversed(second.yes_probabilities(renamed, list(reversed(texts))))) == answers
    # The seed changes the draws; the original caption is part of the pair.
    assert SimulatedCaptioner(small_benchmark, seed=1).generate(pairs) != together
    recaptioned = [pair(p.reference, p.negative, p.original_caption + "!") for p in pairs]
    assert first.generate(recaptioned) != together


def test_the_judge_reads_descriptions_and_text_only(garment_benchmark):
    truthful = SimulatedCaptioner(garment_benchmark, CaptionErrorRates())
    contrary = SimulatedCaptioner(
        garment_benchmark, CaptionErrorRates(judge_false_yes=1.0, judge_false_no=1.0)
    )
    pairs = random_pairs(truthful, 40, seed=3)
    generations = SimulatedCaptioner(garment_benchmark).generate(pairs)
    texts = [g.text for g in generations]
    truth = [1.0 if g.simulation.correct else 0.0 for g in generations]
    assert truthful.yes_probabilities(pairs, texts) == truth
    assert contrary.yes_probabilities(pairs, texts) == [1.0 - t for t in truth]


# ---------------------------------------------------------------- what is named


def test_many_differences_give_exactly_the_cap(small_benchmark, garment_benchmark):
    shapes = SimulatedCaptioner(small_benchmark, CaptionErrorRates())
    many = [p for p in random_pairs(shapes, 300, seed=4) if len(kinds(shapes, p)) >= 5]
    assert many
    for generation in shapes.generate(many):
        record = generation.simulation
        assert record.differences >= 5
        assert (record.correct, record.error, record.named) == (True, None, 2)
    garments = SimulatedCaptioner(garment_benchmark)
    all_six = next(p for p in random_pairs(garments, 500, seed=5) if len(kinds(garments, p)) == 6)
    for cap in range(1, 7):
        captioner = SimulatedCaptioner(garment_benchmark, CaptionErrorRates(max_named_changes=cap))
        (generation,) = captioner.generate([all_six])
        assert generation.simulation == Simulation(correct=True, error=None, differences=6, named=cap)


def test_equal_images_get_no_text(small_benchmark):
    captioner = SimulatedCaptioner(small_benchmark, CaptionErrorRates(repeated_original=1.0))
    name = sorted(captioner.descriptions)[0]
    (generation,) = captioner.generate([pair(name, name)])
    assert generation == Generation(
        text=None, finished=True, simulation=Simulation(correct=False, error=None, differences=0, named=0)
    )


def obj(cell: int, colour: str, shape: str, size: str = "small") -> SceneObject:
    return SceneObject(cell, colour, shape, size)


BASE = make_scene(
    [obj(0, "red", "circle"), obj(4, "blue", "square", "large"), obj(8, "green", "triangle")]
)
# Three differences, most salient first: add a star, recolour the triangle, move the square.
THREE = make_scene(
    [
        obj(0, "red", "circle"),
        obj(2, "yellow", "star"),
        obj(7, "blue", "square", "large"),
        obj(8, "yellow", "triangle"),
    ]
)
ONE = make_scene(
    [obj(0, "red", "circle"), obj(4, "blue", "square", "large"), obj(8, "yellow", "triangle")]
)


@pytest.mark.parametrize(
    ("target", "text", "expected"),
    [
        (ONE, "make the green triangle yellow", True),
        (ONE, "paint the green triangle yellow", True),  # phrasing aside
        (
            THREE,
            "add a small yellow star at the top right and make the green triangle yellow",
            True,
        ),
        (
            THREE,
            "first turn the green triangle yellow, then put a small yellow star at the top right",
            True,
        ),
        (
            THREE,
            "add a small yellow star at the top right and move the blue square to the bottom",
            False,
        ),
        (
            THREE,
            "add a small yellow star at the top right and make the green triangle purple",
            False,
        ),
        (THREE, "add a small yellow star at the top right", False),  # a change missed
        (ONE, "make the green triangle yellow and remove the red circle", False),  # one not there
        (ONE, "make the yellow triangle green", False),  # reversed
        (THREE, "remove the yellow star and make the yellow triangle green", False),  # reversed
        (ONE, "fly the triangle to the moon", False),
        (ONE, None, False),
        (BASE, "make the green triangle yellow", False),  # no difference to name
    ],
)
def test_describes_shapes(target, text, expected):
    assert describes(BASE, target, text) is expected


def test_describes_follows_the_cap():
    one = "add a small yellow star at the top right"
    assert describes(BASE, THREE, one, max_named_changes=1)
    assert not describes(BASE, THREE, "make the green triangle yellow", max_named_changes=1)
    with pytest.raises(ValueError, match="shapes grammar"):
        describes(BASE, THREE, one, max_named_changes=3)


SKIRT = Garment("skirt", "red", "plain", "short", "round", "white")
# Category, colour, pattern, length; then the neckline too.
DRESS = Garment("dress", "navy", "striped", "long", "round", "white")
V_DRESS = Garment("dress", "navy", "striped", "long", "v-neck", "white")
V_SKIRT = Garment("skirt", "red", "plain", "short", "v-neck", "black")  # neckline, trim


@pytest.mark.parametrize(
    ("text", "cap", "expected"),
    [
        ("is a dress instead of a skirt and is navy", 2, True),
        ("is navy and also should be a dress", 2, True),
        ("is a dress and has stripes", 2, False),  # not the most salient two
        ("is a dress and is black", 2, False),  # wrong value
        ("is a skirt instead of a dress and is red", 2, False),  # reversed
        ("is a dress", 2, False),  # missed
        ("is a dress", 1, True),
        ("is a dress, is navy and has black trim", 2, False),  # a change not there
        ("is a dress, is navy, has stripes and is long", 4, True),
        ("is a dress, is navy, has stripes and has long sleeves", 4, False),  # a dress has a hem
        ("is a dress, is navy, has stripes and is longer", 4, False),  # one step: medium
        ("is a dress, is navy, is striped and is cut long", 5, True),
    ],
)
def test_describes_garments(text, cap, expected):
    assert describes(SKIRT, DRESS, text, max_named_changes=cap) is expected


@pytest.mark.parametrize(
    ("target", "text", "cap", "expected"),
    [
        (V_SKIRT, "has a v-shaped waistband and has black trim", 2, True),
        (V_SKIRT, "has a v-shaped waistband", 1, True),  # the neckline before the trim
        (V_SKIRT, "has black trim", 1, False),
        (V_SKIRT, "has a v-neck and has black trim", 2, False),  # a skirt has a waistband
        (V_SKIRT, "has a paperbag waist and has black trim", 2, False),  # wrong value
        (V_DRESS, "is a dress, is navy, has stripes, is long and has a v-neck", 5, True),
        (V_DRESS, "is a dress, is navy, has stripes, is long and comes with a v-neck", 6, True),
        (V_DRESS, "is a dress, is navy, has stripes, is long and has a collar", 5, False),
        (  # the reference, a skirt, has no round neck to name
            V_DRESS,
            "is a dress, is navy, has stripes, is long and has a v-neck instead of a round neck",
            5,
            False,
        ),
    ],
)
def test_describes_the_neckline(target, text, cap, expected):
    assert describes(SKIRT, target, text, max_named_changes=cap) is expected


def test_describe_and_factory(small_benchmark, garment_benchmark, tmp_path):
    rates = CaptionErrorRates(wrong_value=0.5, judge_false_yes=0.25)
    factory = simulated_dataset_captioner(rates, seed=7)
    assert factory.works_on(small_benchmark) and factory.works_on(garment_benchmark)
    assert not factory.works_on(tmp_path)
    assert "only on the synthetic benchmark" in factory.requirement
    captioner = factory.load(garment_benchmark)
    assert isinstance(captioner, SimulatedCaptioner) and captioner.name == factory.name
    description = captioner.describe()
    assert description["simulation"] is True
    assert description["stands_in_for_a_foundation_model"] is True
    assert description["error_rates"] == asdict(rates) and description["seed"] == 7
    assert description["domain"] == "garments"
    with pytest.raises(ValueError, match="no synthetic benchmark"):
        SimulatedCaptioner(tmp_path)


@pytest.mark.parametrize(
    ("reference", "target"),
    [
        (  # a new neck on a shirt
            Garment("shirt", "red", "plain", "short", "round", "white"),
            Garment("shirt", "red", "plain", "short", "collared", "white"),
        ),
        (  # a skirt's waistband becomes a dress's neck
            Garment("skirt", "red", "plain", "short", "round", "white"),
            Garment("dress", "red", "plain", "short", "v-neck", "white"),
        ),
    ],
)
def test_the_mistakes_on_the_neckline(reference, target):
    domain = GARMENTS_DOMAIN
    case = PairCase.of(domain, reference, target, "the original", 2)
    assert Change("neckline", None, target.neckline) in case.named
    for seed in range(5):
        rng = random.Random(seed)
        made, text = make_mistake(case, "wrong_value", rng)
        stated = domain.stated_changes(reference, text)
        assert made == "wrong_value" and not describes(reference, target, text)
        # One named change got another value: the neckline's third value, or another one's.
        assert len(stated) == len(case.named)
        assert len(set(stated) - set(case.named)) == 1
        made, text = make_mistake(case, "extra_change", rng)
        stated = domain.stated_changes(reference, text)
        assert made == "extra_change" and not describes(reference, target, text)
        assert Change("neckline", None, target.neckline) in stated
        made, text = make_mistake(case, "reversed_direction", rng)
        assert domain.apply_caption(target, text) == reference
    # Across draws, the neckline gets its third value.
    third = next(
        n for n in ("round", "v-neck", "collared") if n not in (reference.neckline, target.neckline)
    )
    wrong = set()
    for seed in range(40):
        wrong.update(
            domain.stated_changes(
                reference, make_mistake(case, "wrong_value", random.Random(seed))[1]
            )
        )
    assert Change("neckline", None, third) in wrong
