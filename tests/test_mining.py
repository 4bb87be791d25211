"""Mining keeps and drops exactly the right candidates on hand-built scores."""

import json

import numpy as np
import pytest

from src.data.records import Triplet
from src.retrieval.mining import MiningOptions, mine_hard_negatives, random_negatives

NAMES = ["ref", "tgt", "soft", "n1", "n2", "n3", "n4", "n5"]


def scores_query(scores: dict[str, float]) -> tuple[np.ndarray, np.ndarray]:
    """Gallery rows are one-hot, so a query's scores are its coordinates."""
    gallery = np.eye(len(NAMES), dtype=np.float32)
    query = np.array([[scores.get(n, 0.0) for n in NAMES]], dtype=np.float32)
    return query, gallery


TRIPLET = Triplet(
    "7", "ref", "add a circle", "tgt", target_soft={"tgt": 1.0, "soft": 0.5, "n1": -1.0}
)
# reference highest, then n1 > soft > tgt > n2 > n3 > n4 > n5
SCORES = {
    "ref": 1.0,
    "n1": 0.9,
    "soft": 0.8,
    "tgt": 0.7,
    "n2": 0.6,
    "n3": 0.5,
    "n4": 0.4,
    "n5": 0.3,
}


def mine(**options):
    query, gallery = scores_query(SCORES)
    return mine_hard_negatives(query, gallery, NAMES, [TRIPLET], MiningOptions(**options))


def kept(result):
    return [n["image"] for n in result["queries"]["7"]["negatives"]]


def test_reference_target_and_soft_positives_are_never_negatives():
    result = mine(k=4)
    assert kept(result) == ["n1", "n2", "n3", "n4"]
    query = result["queries"]["7"]
    assert query["target_rank"] == 3 and query["target_score"] == pytest.approx(0.7)
    assert result["stats"]["removed_by_filter"]["soft_positive"] == 1
    assert result["stats"]["removed_by_filter"]["target"] == 1


def test_margin_drops_candidates_scoring_above_margin_times_target():
    result = mine(k=2, margin=1.0)
    assert kept(result) == ["n2", "n3"]
    assert result["stats"]["removed_by_filter"]["margin"] == 1


def test_skip_top_skips_the_first_eligible_ranks():
    assert kept(mine(k=2, skip_top=2)) == ["n3", "n4"]


def test_failures_scope_skips_queries_ranked_first():
    query, gallery = scores_query({"tgt": 1.0, "n1": 0.5})
    result = mine_hard_negatives(query, gallery, NAMES, [TRIPLET], MiningOptions(k=2))
    assert result["queries"] == {} and result["stats"]["num_mined"] == 0
    result = mine_hard_negatives(query, gallery, NAMES, [TRIPLET], MiningOptions(k=2, scope="all"))
    assert kept(result) == ["n1", "n2"]


def test_random_source_is_seeded_and_respects_exclusions():
    first, second = mine(k=3, source="random", seed=5), mine(k=3, source="random", seed=5)
    assert kept(first) == kept(second)
    assert not set(kept(first)) & {"ref", "tgt", "soft"}


def test_random_negatives_of_every_query_need_no_embeddings_and_match_the_ranked_path():
    options = MiningOptions(k=3, scope="all", source="random", seed=5)
    unranked = random_negatives([TRIPLET], NAMES, options)
    assert kept(unranked) == kept(mine(k=3, scope="all", source="random", seed=5))
    assert unranked["stats"]["num_mined"] == 1 and unranked["stats"]["num_negatives"] == 3
    assert unranked["stats"]["train_recall@1"] is None


def test_stats_report_rank_histogram_and_recall():
    stats = mine(k=1)["stats"]
    assert stats["target_rank_histogram"]["2-5"] == 1
    assert stats["train_recall@1"] == 0.0 and stats["train_recall@5"] == 100.0


def test_mined_file_round_trips_into_the_next_rounds_negatives(tmp_path):
    from src.experiment_io import read_json, write_json_atomic

    result = mine(k=2)
    path = tmp_path / "hard_negatives_iter_0.json"
    write_json_atomic(
        path,
        {
            "meta": {"options": result["options"]},
            "stats": result["stats"],
            "queries": result["queries"],
        },
    )
    loaded = read_json(path)
    assert loaded["queries"] == result["queries"] and loaded["stats"] == result["stats"]


def test_triplet_round_trip():
    assert Triplet.from_dict(json.loads(json.dumps(TRIPLET.to_dict()))) == TRIPLET


def test_a_query_whose_target_is_its_reference_is_mined_without_error():
    degenerate = Triplet("8", "tgt", "keep it", "tgt")
    query, gallery = scores_query(SCORES)
    result = mine_hard_negatives(
        query, gallery, NAMES, [degenerate], MiningOptions(k=2, scope="all")
    )
    assert "tgt" not in kept_of(result, "8") and len(kept_of(result, "8")) == 2


def kept_of(result, pairid):
    return [n["image"] for n in result["queries"][pairid]["negatives"]]
