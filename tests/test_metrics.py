"""CIRR / FashionIQ metrics and the CIRR test submission (src/retrieval/metrics.py).

The gallery embeddings are the identity, so a query embedding is its row of scores.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from src.data.records import Triplet
from src.retrieval.metrics import cirr_metrics, cirr_test_submission, fashioniq_metrics


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
