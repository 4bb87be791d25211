"""CIRR / FashionIQ metrics, the CIRR test submission, and whether queries need both
modalities (src/retrieval/metrics.py).

The gallery embeddings are the identity, so a query embedding is its row of scores (and
an image-only query, the reference's own gallery row, scores its reference 1 and every
other image 0: ties, ranked in gallery order).
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from src.artifacts import Evaluation, QueryRanking
from src.data.records import Split, Triplet
from src.report.table import format_modality_table, format_table
from src.retrieval.encode import EncodedSplit
from src.retrieval.evaluate import split_modalities, split_rankings
from src.retrieval.metrics import (
    cirr_metrics,
    cirr_test_submission,
    fashioniq_metrics,
    modality_metrics,
)


def scores_row(names: list[str], scores: dict[str, float], default: float = 0.0) -> list[float]:
    return [scores.get(name, default) for name in names]


def cirr_case() -> tuple[np.ndarray, np.ndarray, list[str], list[Triplet]]:
    """Three queries with target ranks 1, 4, 7 globally and 1, 2, 3 in their groups."""
    names = [f"a{i}" for i in range(8)]
    group1, group2 = names[:4], names[4:]
    triplets = [
        Triplet("1", "a0", "c", target="a1", group=group1),
        Triplet("2", "a4", "c", target="a5", group=group2),
        Triplet("3", "a2", "c", target="a3", group=group1),
    ]
    queries = [
        # The reference scores highest; without it the target is first.
        scores_row(names, {"a0": 1.0, "a1": 0.9}, default=0.1),
        # Global: a0, a1, a6 ahead of the target (rank 4); in the group only a6 (rank 2).
        scores_row(names, {"a4": 1.0, "a0": 0.95, "a1": 0.9, "a6": 0.85, "a5": 0.8}),
        # Ties: a0, a1, a3 all score 0.5 and the lower indices rank first.
        scores_row(names, {"a2": 0.9, "a0": 0.5, "a1": 0.5, "a3": 0.5}, default=0.6),
    ]
    return np.array(queries, dtype=np.float32), np.eye(8, dtype=np.float32), names, triplets


def test_cirr_metrics_on_a_hand_built_case():
    queries, gallery, names, triplets = cirr_case()
    metrics = cirr_metrics(queries, gallery, names, triplets, chunk_size=2)
    expected = {
        "recall@1": 100 / 3,
        "recall@5": 200 / 3,
        "recall@10": 100.0,
        "recall@50": 100.0,  # k clipped to the 7 eligible images
        "recall_subset@1": 100 / 3,
        "recall_subset@2": 200 / 3,
        "recall_subset@3": 100.0,
        "avg": 50.0,
    }
    assert metrics == pytest.approx(expected)
    assert list(metrics) == list(expected)
    torch_metrics = cirr_metrics(
        torch.from_numpy(queries), torch.from_numpy(gallery), names, triplets
    )
    assert torch_metrics == pytest.approx(expected)


def test_cirr_reference_is_removed_even_when_it_scores_highest():
    names = ["r", "t", "x"]
    triplets = [Triplet("7", "r", "c", target="t", group=names)]
    queries = np.array([[1.0, 0.5, 0.4]], dtype=np.float32)
    metrics = cirr_metrics(queries, np.eye(3, dtype=np.float32), names, triplets)
    assert metrics["recall@1"] == 100.0
    assert metrics["recall_subset@1"] == 100.0


def test_cirr_target_equal_to_reference_is_a_miss():
    names = ["r", "t", "x"]
    triplets = [
        Triplet("1", "r", "c", target="r", group=names),
        Triplet("2", "r", "c", target="t", group=names),
    ]
    queries = np.array([[1.0, 0.5, 0.4], [1.0, 0.5, 0.4]], dtype=np.float32)
    metrics = cirr_metrics(queries, np.eye(3, dtype=np.float32), names, triplets)
    assert metrics["recall@50"] == 50.0
    assert metrics["recall_subset@3"] == 50.0


def test_cirr_metrics_require_labels():
    names = ["r", "t"]
    with pytest.raises(ValueError, match="no target"):
        cirr_metrics(
            np.eye(2),
            np.eye(2),
            names,
            [Triplet("1", "r", "c", group=names), Triplet("2", "t", "c", group=names)],
        )


def fashioniq_case() -> tuple[np.ndarray, np.ndarray, list[str], list[Triplet], dict]:
    """Target ranks: dress 1, 11, 60; shirt 10, 50; toptee 51 (60 images per category)."""
    categories = {cat: [f"{cat}{j:02d}" for j in range(60)] for cat in ("dress", "shirt", "toptee")}
    names = sorted(name for members in categories.values() for name in members)
    wanted = [
        ("dress", 1),
        ("dress", 11),
        ("dress", 60),
        ("shirt", 10),
        ("shirt", 50),
        ("toptee", 51),
    ]
    rng = np.random.default_rng(0)
    queries, triplets = [], []
    for i, (cat, rank) in enumerate(wanted):
        members = list(rng.permutation(categories[cat]))
        target, reference, ahead = members[0], members[1], members[1:rank]
        # Other categories score highest: they must not be ranked. The reference (in
        # `ahead` when rank > 1) is not removed in FashionIQ.
        scores = {name: 2.0 for name in names if not name.startswith(cat)}
        scores.update({name: 1.0 for name in ahead})
        scores[target] = 0.5
        queries.append(scores_row(names, scores))
        triplets.append(Triplet(str(i), reference, "c", target=target, category=cat))
    categories = {cat: list(rng.permutation(members)) for cat, members in categories.items()}
    gallery = np.eye(len(names), dtype=np.float32)
    return np.array(queries, dtype=np.float32), gallery, names, triplets, categories


def test_fashioniq_metrics_average_over_categories():
    queries, gallery, names, triplets, categories = fashioniq_case()
    metrics = fashioniq_metrics(queries, gallery, names, triplets, categories, chunk_size=1)
    expected = {
        "dress_recall@10": 100 / 3,
        "dress_recall@50": 200 / 3,
        "shirt_recall@10": 50.0,
        "shirt_recall@50": 100.0,
        "toptee_recall@10": 0.0,
        "toptee_recall@50": 0.0,
        "average_recall@10": 250 / 9,
        "average_recall@50": 500 / 9,
        "average": 375 / 9,
    }
    assert metrics == pytest.approx(expected)
    assert set(metrics) == set(expected)


def test_fashioniq_rejects_a_target_outside_its_category():
    queries, gallery, names, triplets, categories = fashioniq_case()
    triplets[0].target = categories["shirt"][0]
    with pytest.raises(ValueError, match="not in the dress gallery"):
        fashioniq_metrics(queries, gallery, names, triplets, categories)


def submission_case(num_images: int) -> tuple[np.ndarray, np.ndarray, list[str], list[Triplet]]:
    """Random scores, the reference always highest, groups of six consecutive images."""
    rng = np.random.default_rng(num_images)
    names = [f"test1-{i}-img" for i in range(num_images)]
    triplets, queries = [], []
    for i in range(20):
        start = 6 * rng.integers(0, num_images // 6)
        group = names[start : start + 6]
        reference = group[rng.integers(0, 6)]
        scores = rng.random(num_images).astype(np.float32)
        scores[names.index(reference)] = 2.0
        queries.append(scores)
        triplets.append(Triplet(str(1000 + i), reference, "c", group=group))
    return np.array(queries), np.eye(num_images, dtype=np.float32), names, triplets


def brute_ranking(scores: np.ndarray, names: list[str], allowed: set[str]) -> list[str]:
    order = np.lexsort((np.arange(len(scores)), -scores))
    return [names[j] for j in order if names[j] in allowed]


@pytest.mark.parametrize("num_images", [120, 30])
def test_cirr_test_submission_format(num_images):
    queries, gallery, names, triplets = submission_case(num_images)
    recall, subset = cirr_test_submission(queries, gallery, names, triplets, chunk_size=7)
    assert (recall["version"], recall["metric"]) == ("rc2", "recall")
    assert (subset["version"], subset["metric"]) == ("rc2", "recall_subset")
    pairids = [t.pairid for t in triplets]
    assert set(recall) - {"version", "metric"} == set(pairids)
    assert set(subset) - {"version", "metric"} == set(pairids)
    for query, t in zip(queries, triplets, strict=True):
        top = recall[t.pairid]
        assert len(top) == min(50, num_images - 1)
        assert t.reference not in top
        assert top == brute_ranking(query, names, set(names) - {t.reference})[: len(top)]
        assert len(subset[t.pairid]) == 3
        assert t.reference not in subset[t.pairid]
        assert subset[t.pairid] == brute_ranking(query, names, set(t.group) - {t.reference})[:3]


def test_modality_metrics_on_hand_given_ranks():
    """Six queries' ranks (None: not retrievable): solved by one modality at K when the
    image-only or the text-only rank is at most K; composed recall on the others."""
    composed = [1, 3, 12, None, 2, 60]
    image = [1, 20, 5, None, 40, 2]
    text = [7, 2, 30, 11, None, 70]
    metrics = modality_metrics(composed, image, text, (1, 5, 10, 50))
    expected = {
        "queries": 6,
        "image_only_recall@1": 100 / 6, "image_only_recall@5": 50.0,
        "image_only_recall@10": 50.0, "image_only_recall@50": 500 / 6,
        "text_only_recall@1": 0.0, "text_only_recall@5": 100 / 6,
        "text_only_recall@10": 200 / 6, "text_only_recall@50": 400 / 6,
        "composed_recall@1": 100 / 6, "composed_recall@5": 50.0,
        "composed_recall@10": 50.0, "composed_recall@50": 400 / 6,
        # @1: only query 0 (image); @5 and @10: 0, 1, 2, 5; @50: every query
        "solved_by_one_modality@1": 100 / 6, "solved_by_one_modality@5": 400 / 6,
        "solved_by_one_modality@10": 400 / 6, "solved_by_one_modality@50": 100.0,
        "need_both_queries@1": 5, "need_both_queries@5": 2,
        "need_both_queries@10": 2, "need_both_queries@50": 0,
        # @1: composed ranks 3, 12, -, 2, 60; @5 and @10: queries 3 (-) and 4 (2)
        "need_both_recall@1": 0.0, "need_both_recall@5": 50.0,
        "need_both_recall@10": 50.0, "need_both_recall@50": None,
    }  # fmt: skip
    assert metrics == pytest.approx(expected)
    assert list(metrics) == [
        "queries",
        *(f"{name}@{k}" for name in ("image_only_recall", "text_only_recall", "composed_recall",
          "solved_by_one_modality", "need_both_queries", "need_both_recall") for k in (1, 5, 10, 50)),
    ]  # fmt: skip
    assert all(isinstance(metrics[f"need_both_queries@{k}"], int) for k in (1, 5, 10, 50))
    inf = float("inf")
    as_arrays = modality_metrics(
        np.array([1, 3, 12, inf, 2, 60.0]), np.array([1, 20, 5, inf, 40, 2.0]),
        np.array([7, 2, 30, 11, inf, 70.0]), (1, 5, 10, 50),
    )  # fmt: skip
    assert as_arrays == pytest.approx(expected)
    with pytest.raises(ValueError, match="3 composed, 2 image-only"):
        modality_metrics([1, 2, 3], [1, 2], [1, 2, 3], (1,))


def cirr_modality_case() -> tuple[Split, EncodedSplit]:
    """Eight images a0..a7, three queries. Image-only (ties after the excluded reference,
    in gallery order): A a0 -> a1 rank 1, B a4 -> a5 rank 5 (a0..a3 ahead), C a1 -> a7
    rank 7. Text-only: A 7 (its target lowest), B 1, C 2 (a6 ahead). Composed: A 2, B 4,
    C 1. The reference scores highest in every text and composed row: it must be excluded."""
    names = [f"a{i}" for i in range(8)]
    triplets = [
        Triplet("A", "a0", "c", target="a1", group=names[:4]),
        Triplet("B", "a4", "c", target="a5", group=names[4:]),
        Triplet("C", "a1", "c", target="a7", group=names),
    ]
    texts = [
        scores_row(names, {"a0": 2.0, "a1": 0.1}, default=0.5),
        scores_row(names, {"a4": 2.0, "a5": 0.9}),
        scores_row(names, {"a1": 2.0, "a6": 0.9, "a7": 0.8}),
    ]
    composed = [
        scores_row(names, {"a0": 2.0, "a3": 0.9, "a1": 0.8}),
        scores_row(names, {"a4": 2.0, "a0": 0.9, "a1": 0.9, "a2": 0.9, "a5": 0.8}),
        scores_row(names, {"a1": 2.0, "a7": 0.9}),
    ]
    split = Split("val", triplets, {name: f"/images/{name}.png" for name in names})
    encoded = EncodedSplit(
        names, np.eye(8, dtype=np.float32), triplets,
        np.array(composed, dtype=np.float32), np.array(texts, dtype=np.float32),
    )  # fmt: skip
    return split, encoded


def test_cirr_image_only_and_text_only_rankings_on_a_hand_built_case():
    split, encoded = cirr_modality_case()
    block, ranks = split_modalities(encoded, split, "cirr")
    assert ranks == {
        "A": {"image_rank": 1, "text_rank": 7},
        "B": {"image_rank": 5, "text_rank": 1},
        "C": {"image_rank": 7, "text_rank": 2},
    }
    # composed ranks as the official metrics and the per-query rankings have them
    composed = {p: r["target_rank"] for p, r in split_rankings(encoded, split, "cirr").items()}
    assert composed == {"A": 2, "B": 4, "C": 1}
    assert cirr_metrics(encoded.queries, encoded.gallery, encoded.gallery_names, encoded.triplets)[
        "recall@1"
    ] == pytest.approx(block["composed_recall@1"])
    expected = {
        "queries": 3,
        "image_only_recall@1": 100 / 3, "text_only_recall@1": 100 / 3,
        "composed_recall@1": 100 / 3,
        "solved_by_one_modality@1": 200 / 3,  # A by its image, B by its text
        "need_both_queries@1": 1, "need_both_recall@1": 100.0,  # C, composed rank 1
        "image_only_recall@5": 200 / 3, "text_only_recall@5": 200 / 3,
        "composed_recall@5": 100.0,
        "solved_by_one_modality@5": 100.0, "need_both_queries@5": 0, "need_both_recall@5": None,
    }  # fmt: skip
    for k in (10, 50):  # 7 eligible images: every target within the top 7
        expected |= {
            f"image_only_recall@{k}": 100.0, f"text_only_recall@{k}": 100.0,
            f"composed_recall@{k}": 100.0, f"solved_by_one_modality@{k}": 100.0,
            f"need_both_queries@{k}": 0, f"need_both_recall@{k}": None,
        }  # fmt: skip
    assert block == pytest.approx(expected)


def test_fashioniq_image_only_and_text_only_rank_within_the_category_keeping_the_reference():
    """Twelve dresses d00..d11, twelve shirts s00..s11. Q1 d05 -> d11: image-only 12 (the
    reference itself first, as FashionIQ does not remove it, then d00..d10), text-only 12,
    composed 1; Q2 s00 -> s01: image-only 2, text-only 12, composed 11. The other
    category's images score highest in the text and composed rows: they are not ranked."""
    categories = {
        "dress": [f"d{j:02d}" for j in range(12)][::-1],
        "shirt": [f"s{j:02d}" for j in range(12)],
    }
    names = sorted(categories["dress"] + categories["shirt"])
    shirts = {name: 2.0 for name in categories["shirt"]}
    dresses = {name: 2.0 for name in categories["dress"]}
    triplets = [
        Triplet("Q1", "d05", "c", target="d11", category="dress"),
        Triplet("Q2", "s00", "c", target="s01", category="shirt"),
    ]
    texts = [
        scores_row(names, shirts | {"d11": 0.5}, default=0.6),
        scores_row(names, dresses | {"s01": 0.1}, default=0.5),
    ]
    composed = [
        scores_row(names, shirts | {"d11": 0.9}),
        scores_row(names, dresses | {f"s{j:02d}": 0.9 for j in range(2, 12)} | {"s01": 0.8}),
    ]
    split = Split("val", triplets, {n: f"/images/{n}.png" for n in names}, categories)
    encoded = EncodedSplit(
        names, np.eye(24, dtype=np.float32), triplets,
        np.array(composed, dtype=np.float32), np.array(texts, dtype=np.float32),
    )  # fmt: skip
    block, ranks = split_modalities(encoded, split, "fashioniq")
    assert ranks == {
        "Q1": {"image_rank": 12, "text_rank": 12},
        "Q2": {"image_rank": 2, "text_rank": 12},
    }
    assert block == pytest.approx({
        "queries": 2,
        "image_only_recall@10": 50.0, "image_only_recall@50": 100.0,
        "text_only_recall@10": 0.0, "text_only_recall@50": 100.0,
        "composed_recall@10": 50.0, "composed_recall@50": 100.0,
        "solved_by_one_modality@10": 50.0, "solved_by_one_modality@50": 100.0,  # Q2 by its image
        "need_both_queries@10": 1, "need_both_queries@50": 0,
        "need_both_recall@10": 100.0, "need_both_recall@50": None,  # Q1, composed rank 1
    })  # fmt: skip
    official = fashioniq_metrics(encoded.queries, encoded.gallery, names, triplets, categories)
    assert official["dress_recall@10"] == 100.0 and official["shirt_recall@10"] == 0.0


def test_split_modalities_needs_the_text_only_queries():
    split, encoded = cirr_modality_case()
    encoded.text_queries = None
    with pytest.raises(ValueError, match="text-only queries were not encoded"):
        split_modalities(encoded, split, "cirr")


def test_the_evaluation_file_round_trip_and_a_file_written_before_the_modality_rankings(tmp_path):
    split, encoded = cirr_modality_case()
    block, ranks = split_modalities(encoded, split, "cirr")
    rankings = split_rankings(encoded, split, "cirr")
    queries = {p: QueryRanking(**rankings[p], **ranks[p]) for p in rankings}
    evaluation = Evaluation({"rankings": ["composed", "image_only", "text_only"]},
                            {"recall@1": 100 / 3}, queries, modalities=block)  # fmt: skip
    evaluation.write(tmp_path / "evaluation_val_iter_0.json")
    raw = json.loads((tmp_path / "evaluation_val_iter_0.json").read_text())
    assert raw["queries"]["C"] == {"target_rank": 1, "top": ["a7", "a0", "a2", "a3", "a4"],
                                   "image_rank": 7, "text_rank": 2}  # fmt: skip
    assert raw["modalities"]["need_both_recall@1"] == 100.0
    assert raw["modalities"]["need_both_recall@5"] is None
    assert Evaluation.read(tmp_path / "evaluation_val_iter_0.json") == evaluation

    # as written before these rankings: no block, no image or text rank; read, not refused
    del raw["modalities"]
    for query in raw["queries"].values():
        del query["image_rank"], query["text_rank"]
    (tmp_path / "old.json").write_text(json.dumps(raw))
    old = Evaluation.read(tmp_path / "old.json")
    assert old.modalities is None and old.metrics == evaluation.metrics
    assert old.queries["C"] == QueryRanking(1, ["a7", "a0", "a2", "a3", "a4"], None, None)

    # the table under the metric table: 1 and 10 of CIRR's Ks, "-" for the old file
    metrics = {"iter_0": {"recall@1": 100 / 3}, "iter_1": {"recall@1": 50.0}}
    assert format_table(metrics) == (
        "iter  recall@1\n--------------\n   0     33.33\n   1     50.00"
    )  # the main table as before
    table = format_modality_table({0: old.modalities, 1: block}).splitlines()
    header = ["iter", "one@1", "one@10", "both_R@1", "both_R@10", "both_n@1", "both_n@10",
              "image_R@1", "image_R@10", "text_R@1", "text_R@10"]  # fmt: skip
    assert table[0].split() == header
    assert table[2].split() == ["0"] + ["-"] * 10
    assert table[3].split() == ["1", "66.67", "100.00", "100.00", "-", "1", "0",
                                "33.33", "100.00", "33.33", "100.00"]  # fmt: skip
    assert table[4].startswith("a row of -: not in that round's evaluation file")
    assert table[5].startswith("one@K: % of queries")
    assert format_modality_table({0: None}) == ""
    fashioniq = {"need_both_recall@10": 1.0, "need_both_recall@50": None}
    assert format_modality_table({0: fashioniq}).split()[1:3] == ["one@10", "one@50"]
