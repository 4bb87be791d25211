"""The augmentation's pure parts on hand-written inputs: pair selection, clean-up and
rejection rules, the `cot` parser, the consistency verdicts and yes/no probabilities."""

from __future__ import annotations

import math

import pytest
import torch

from src.artifacts import MinedNegative, MinedQuery, digest
from src.augment.cleaning import (
    MIN_WORD_LIMIT,
    REJECTION_REASONS,
    clean_text,
    filter_generations,
    final_text,
    judge,
)
from src.augment.consistency import (
    answer_token_ids,
    apply_answers,
    false_negatives,
    verdict,
    yes_probability,
)
from src.augment.filters import Decisions, FilterResult, Rejection
from src.augment.pairs import CaptionPair, pair_rows, select_pairs
from src.data.records import Triplet
from src.records import Generation, Simulation, dump

ORIGINAL = "make the dog brown and put it on grass"


def pair(
    pairid: str, reference: str = "ref", negative: str = "neg", source: str = "q"
) -> CaptionPair:
    return CaptionPair(
        pairid,
        source,
        reference,
        f"/{reference}.png",
        negative,
        f"/{negative}.png",
        ORIGINAL,
        "tgt",
    )


# ---------------------------------------------------------------- pairs


def mined(target: tuple[int, float], *negatives: tuple[str, int, float]) -> MinedQuery:
    """A mined query: its target's (rank, score) and its negatives' (image, rank, score)."""
    return MinedQuery([MinedNegative(i, s, r) for i, r, s in negatives], *target)


def mined_queries() -> dict[str, MinedQuery]:
    """q1 fails twice (a1 by 0.375, a2 by 0.25), q2 not at all (its target ranks first),
    q3 once (c1 by 0.3125), q4 twice (d1 by 0.625, d2 by 0.125). Scores are dyadic, so the
    gaps are exact."""
    return {
        "q1": mined((4, 0.5), ("a1", 1, 0.875), ("a2", 2, 0.75), ("a3", 5, 0.375)),
        "q2": mined((1, 0.75), ("b1", 2, 0.625)),
        "q3": mined((2, 0.625), ("c1", 1, 0.9375), ("c2", 3, 0.5)),
        "q4": mined((3, 0.25), ("d1", 1, 0.875), ("d2", 2, 0.375)),
    }


TRIPLETS = [Triplet(f"q{i}", f"r{i}", f"caption {i}", f"t{i}") for i in (1, 2, 3, 4)]
IMAGES = {
    n: f"/img/{n}.png"
    for n in ("r1", "r2", "r3", "r4", "a1", "a2", "a3", "b1", "c1", "c2", "d1", "d2")
}


def chosen(selection) -> list[tuple[str, str]]:
    return [(p.source_pairid, p.negative) for p in selection.pairs]


def test_failures_only_hardest_first_across_queries():
    selection = select_pairs(TRIPLETS, IMAGES, mined_queries(), 2, per_query=2, limit=None)
    assert chosen(selection) == [("q4", "d1"), ("q1", "a1"), ("q3", "c1"), ("q1", "a2"), ("q4", "d2")]
    assert (selection.available, selection.failures, selection.failure_queries) == (5, 5, 3)
    first = selection.pairs[0]
    assert first.pairid == "aug2_q4_0" and selection.pairs[3].pairid == "aug2_q1_1"
    assert first.reference == "r4" and first.original_caption == "caption 4"
    assert first.original_target == "t4" and first.negative_path == "/img/d1.png"


def test_failures_per_query_takes_each_querys_highest_ranked_failures():
    selection = select_pairs(TRIPLETS, IMAGES, mined_queries(), 1, per_query=1, limit=None)
    assert chosen(selection) == [("q4", "d1"), ("q1", "a1"), ("q3", "c1")]
    assert (selection.available, selection.failures) == (3, 5)  # failures count before the limit


def test_the_cap_keeps_the_hardest_failures():
    selection = select_pairs(TRIPLETS, IMAGES, mined_queries(), 1, per_query=2, limit=2)
    assert chosen(selection) == [("q4", "d1"), ("q1", "a1")]
    assert selection.available == 5


def test_equal_failures_keep_the_mined_files_order():
    queries = {
        "q3": mined((2, 0.5), ("c1", 1, 0.75)),
        "q1": mined((2, 0.25), ("a1", 1, 0.5)),
    }
    selection = select_pairs(TRIPLETS, IMAGES, queries, 1, per_query=1, limit=None)
    assert chosen(selection) == [("q3", "c1"), ("q1", "a1")]


def test_file_order_is_the_earlier_selection_failure_or_not():
    selection = select_pairs(
        TRIPLETS, IMAGES, mined_queries(), 2, per_query=2, limit=None, selection="file_order"
    )
    assert chosen(selection) == [
        ("q1", "a1"), ("q2", "b1"), ("q3", "c1"), ("q4", "d1"), ("q1", "a2"), ("q3", "c2"), ("q4", "d2"),
    ]  # fmt: skip
    capped = select_pairs(TRIPLETS, IMAGES, mined_queries(), 1, 1, 2, selection="file_order")
    assert [p.source_pairid for p in capped.pairs] == ["q1", "q2"]  # the first queries of the file


def test_random_images_go_to_the_same_failing_queries():
    hard = select_pairs(TRIPLETS, IMAGES, mined_queries(), 1, per_query=1, limit=None)
    drawn = select_pairs(TRIPLETS, IMAGES, mined_queries(), 1, 1, None, random_seed=7)
    assert [p.pairid for p in drawn.pairs] == [p.pairid for p in hard.pairs]
    for pair in drawn.pairs:
        assert pair.negative not in (pair.reference, pair.original_target)


def test_random_negatives_have_no_failures():
    unranked = {"q1": MinedQuery([MinedNegative("a1", None, None)])}
    selection = select_pairs(TRIPLETS, IMAGES, unranked, 1, 1, None)
    assert (selection.pairs, selection.failures) == ([], 0)


def test_pairs_refuse_queries_missing_from_the_split():
    with pytest.raises(ValueError, match="not in the training split"):
        select_pairs(TRIPLETS[:1], IMAGES, mined_queries(), 1, 1, None)


def test_pairs_digest_follows_the_requests_not_the_paths():
    pairs = select_pairs(TRIPLETS, IMAGES, mined_queries(), 1, 1, None).pairs
    moved = {name: "/elsewhere" + path for name, path in IMAGES.items()}
    same = select_pairs(TRIPLETS, moved, mined_queries(), 1, 1, None).pairs
    fewer = select_pairs(TRIPLETS, IMAGES, mined_queries(), 1, 1, 2).pairs
    assert digest(pair_rows(pairs)) == digest(pair_rows(same)) != digest(pair_rows(fewer))


# ---------------------------------------------------------------- clean-up


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("Make the dog black. Then add a cat.", "Make the dog black."),
        ("make the dog black\nand some other line", "make the dog black"),
        ("New modification text: make the dog black", "make the dog black"),
        ('Sure! Here is the new modification text: "make the dog black"', "make the dog black"),
        ("**Answer:** make the dog black", "make the dog black"),
        ("Modification text:\n  make the dog black", "make the dog black"),
        ("- make the dog black", "make the dog black"),
        ("1. make the dog black", "make the dog black"),
        ("“Make the dog black.” It is now black.", "Make the dog black."),
        ("'make the dog black", "make the dog black"),
        ("\x1fmake the \ufffd dog  black", "make the dog black"),
        ("Final text: show two cats", "show two cats"),
        ("make it say 'hello' on the sign", "make it say 'hello' on the sign"),
    ],
)
def test_clean_text(raw, expected):
    assert clean_text(raw)[0] == expected


def test_clean_text_says_whether_the_text_ended():
    assert clean_text("make the dog black.")[1]
    assert clean_text("make the dog black\nmore")[1]
    assert not clean_text("make the dog black and")[1]


@pytest.mark.parametrize(
    ("raw", "finished", "reason"),
    [
        (None, True, "not_describable"),
        ("", True, "empty"),
        ('  ""  ', True, "empty"),
        ("...", True, "empty"),
        ("Answer:", True, "empty"),
        ("make the dog black and put", False, "truncated"),
        ("make the dog black and put", True, None),
        ("make the dog black. And then", False, None),
        ("In the second image the dog is black.", True, "mentions_images"),
        ("The first image shows a dog.", True, "mentions_images"),
        ("Replace the dog of the left image by a cat", True, "mentions_images"),
        ("Make the dogs in both images black", True, "mentions_images"),
        ("put the dog on the right side of the sofa", True, None),
        (" ".join(["word"] * (MIN_WORD_LIMIT + 1)), True, "too_long"),
        (" ".join(["word"] * MIN_WORD_LIMIT), True, None),
        ("Make the dog brown and put it on grass.", True, "copies_original"),
        ('"make the dog brown, and put it on grass"', True, "copies_original"),
        ("make the dog white and put it on sand", True, None),
    ],
)
def test_each_rejection_rule(raw, finished, reason):
    assert judge(raw, ORIGINAL, "direct", finished).reason == reason


def test_length_limit_grows_with_a_long_original():
    long_original = " ".join(["word"] * 20)
    assert judge(" ".join(["other"] * 50), long_original, "direct", True).reason is None
    assert judge(" ".join(["other"] * 61), long_original, "direct", True).reason == "too_long"


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("The target dog is black.\nFinal text: make the dog black", "make the dog black"),
        ('The dog is black.\nfinal text: "make the dog black."', "make the dog black."),
        ("Final text: draft\nFinal text: make the dog black", "make the dog black"),
        ("It differs.\nFinal text:\nmake the dog black\nbecause", "make the dog black"),
    ],
)
def test_cot_parser(raw, expected):
    assert judge(raw, ORIGINAL, "cot", True) == judge(expected, ORIGINAL, "direct", True)
    assert judge(raw, ORIGINAL, "cot", True).text == expected


def test_cot_without_marker_is_rejected():
    assert final_text("make the dog black") is None
    assert judge("make the dog black", ORIGINAL, "cot", True).reason == "no_final_marker"
    assert judge("Final text:   ", ORIGINAL, "cot", True).reason == "empty"


def test_filter_counts_every_reason_and_rejects_duplicates_per_reference():
    pairs = [pair(f"p{i}", reference="ref" if i < 4 else "other") for i in range(6)]
    texts = {
        "p0": "make the dog black",
        "p1": "Make the dog black.",  # same text, same reference
        "p2": "the second image is darker",
        "p3": None,
        "p4": "make the dog black",  # same text, another reference
        "p5": "make the dog",
    }
    generations = {k: Generation(text=v, finished=k != "p5") for k, v in texts.items()}
    result = filter_generations(pairs, generations, "direct")
    assert [(p.pairid, text) for p, text in result.kept] == [
        ("p0", "make the dog black"),
        ("p4", "make the dog black"),
    ]
    assert {r.pair.pairid: r.reason for r in result.rejected} == {
        "p1": "duplicate",
        "p2": "mentions_images",
        "p3": "not_describable",
        "p5": "truncated",
    }
    assert {r.reason for r in result.rejected} <= set(REJECTION_REASONS)
    assert len(result.rejected) + len(result.kept) == len(pairs)


# ---------------------------------------------------------------- consistency


@pytest.mark.parametrize(
    ("new_yes", "original_yes", "keep", "reason"),
    [
        (0.9, 0.1, True, None),
        (0.9, 0.8, False, "consistency_false_negative"),
        (0.2, 0.1, False, "consistency_new_text_no"),
        (0.2, 0.9, False, "consistency_false_negative"),
        (0.5, 0.5, False, "consistency_new_text_no"),
    ],
)
def test_consistency_verdicts(new_yes, original_yes, keep, reason):
    decision = verdict(new_yes, original_yes)
    assert (decision.keep, decision.reason) == (keep, reason)


def test_consistency_keeps_and_drops_the_right_samples():
    kept = [
        (pair("a", negative="n1", source="q1"), "text a"),
        (pair("b", negative="n2", source="q1"), "text b"),
        (pair("c", negative="n3", source="q2"), "text c"),
        (pair("d", negative="n4", source="q1"), "text d"),
    ]
    answers = {"a": (0.8, 0.1), "b": (0.9, 0.7), "c": (0.3, 0.2), "d": (0.1, 0.6)}
    result = apply_answers(kept, answers)
    assert [p.pairid for p, _ in result.kept] == ["a"]
    assert [(r.pair.pairid, r.reason) for r in result.rejected] == [
        ("b", "consistency_false_negative"),
        ("c", "consistency_new_text_no"),
        ("d", "consistency_false_negative"),
    ]
    assert false_negatives(result.rejected) == {"q1": ["n2", "n4"]}


def test_yes_probability_reads_yes_against_no():
    log_p = torch.log(torch.tensor([[0.1, 0.3, 0.1, 0.4, 0.1], [0.6, 0.05, 0.05, 0.1, 0.2]]))
    probability = yes_probability(log_p + 7.0, yes_ids=[1, 2], no_ids=[3])
    assert probability.tolist() == pytest.approx([0.4 / 0.8, 0.1 / 0.2])
    assert math.isclose(yes_probability(torch.zeros(1, 4), [0], [1]).item(), 0.5)


class _OneTokenTokenizer:
    def encode(self, text, add_special_tokens=False):
        return [7]


def test_answer_tokens_must_differ(tiny_qwen):
    from transformers import AutoTokenizer

    yes, no = answer_token_ids(
        AutoTokenizer.from_pretrained(tiny_qwen), ("yes", "Yes"), ("no", "No")
    )
    assert yes and no and not set(yes) & set(no)
    with pytest.raises(ValueError, match="cannot tell the answers apart"):
        answer_token_ids(_OneTokenTokenizer(), ("yes",), ("no",))


# ---------------------------------------------------------------- filter diagnostics


def test_filter_precision_and_recall_on_a_hand_built_case():
    """Eight texts, three wrong (w1-w3). Clean-up removes w1 and r1; the consistency
    filter then sees six (two wrong), removes w2 and r2 and r3; verify removes nothing."""
    ids = ["w1", "w2", "w3", "r1", "r2", "r3", "r4", "r5"]
    pairs = {i: pair(i) for i in ids}
    generations = {
        i: Generation(text="t", finished=True, simulation=Simulation(
            correct=i.startswith("r"), error=None, differences=1, named=1))
        for i in ids
    }  # fmt: skip
    decisions = Decisions(generations)

    def step(name: str, removed: list[str]) -> None:
        kept = [(p, "t") for p, _ in (decisions.kept if decisions.applied else [(pairs[i], "t") for i in ids])
                if p.pairid not in removed]  # fmt: skip
        decisions.apply(FilterResult(kept, [Rejection(pairs[i], "t", name) for i in removed]), name)

    step("clean-up rules", ["w1", "r1"])
    step("consistency filter", ["w2", "r2", "r3"])
    step("verify_augmented", [])
    assert dump(decisions.filter_diagnostics()) == {
        "clean-up rules": {"wrong_in": 3, "right_in": 5, "wrong_removed": 1, "right_removed": 1,
                           "precision": 0.5, "recall": 1 / 3},
        "consistency filter": {"wrong_in": 2, "right_in": 4, "wrong_removed": 1, "right_removed": 2,
                               "precision": 1 / 3, "recall": 0.5},
        "verify_augmented": {"wrong_in": 1, "right_in": 2, "wrong_removed": 0, "right_removed": 0,
                             "precision": None, "recall": 0.0},
    }  # fmt: skip
    generations["r5"] = Generation(text="t", finished=True)  # a real captioner's: nothing to score against
    assert decisions.filter_diagnostics() is None
