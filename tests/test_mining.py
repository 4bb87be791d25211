"""Mining keeps and drops exactly the right candidates on hand-built scores."""

import json

import numpy as np
import pytest

from src.arguments import MiningArguments
from src.data.records import Triplet
from src.retrieval.mining import mine_hard_negatives, random_negatives

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


def mine(seed=0, **flags):
    query, gallery = scores_query(SCORES)
    return mine_hard_negatives(query, gallery, NAMES, [TRIPLET], MiningArguments(**flags), seed)


def kept(result):
    return [n.image for n in result.queries["7"].negatives]


def test_reference_target_and_soft_positives_are_never_negatives():
    result = mine(hard_negative_k=4)
    assert kept(result) == ["n1", "n2", "n3", "n4"]
    query = result.queries["7"]
    assert query.target_rank == 3 and query.target_score == pytest.approx(0.7)
    assert result.stats.removed_by_filter["soft_positive"] == 1
    assert result.stats.removed_by_filter["target"] == 1


def test_margin_drops_candidates_scoring_above_margin_times_target():
    result = mine(hard_negative_k=2, hard_negative_margin=1.0)
    assert kept(result) == ["n2", "n3"]
    assert result.stats.removed_by_filter["margin"] == 1


def test_skip_top_skips_the_first_eligible_ranks():
    assert kept(mine(hard_negative_k=2, hard_negative_skip_top=2)) == ["n3", "n4"]


def test_failures_scope_skips_queries_ranked_first():
    query, gallery = scores_query({"tgt": 1.0, "n1": 0.5})
    failures = MiningArguments(hard_negative_k=2, mine_scope="failures")
    result = mine_hard_negatives(query, gallery, NAMES, [TRIPLET], failures)
    assert result.queries == {} and result.stats.num_mined == 0
    every = MiningArguments(hard_negative_k=2, mine_scope="all")
    result = mine_hard_negatives(query, gallery, NAMES, [TRIPLET], every)
    assert kept(result) == ["n1", "n2"]


def test_random_source_is_seeded_and_respects_exclusions():
    first = mine(hard_negative_k=3, negative_source="random", seed=5)
    second = mine(hard_negative_k=3, negative_source="random", seed=5)
    assert kept(first) == kept(second)
    assert not set(kept(first)) & {"ref", "tgt", "soft"}


def test_random_negatives_of_every_query_need_no_embeddings_and_match_the_ranked_path():
    unranked = random_negatives([TRIPLET], NAMES, k=3, seed=5)
    assert kept(unranked) == kept(mine(hard_negative_k=3, negative_source="random", seed=5))
    assert unranked.stats.num_mined == 1 and unranked.stats.num_negatives == 3
    assert unranked.stats.train_recall_at_1 is None


def test_stats_report_rank_histogram_and_recall():
    stats = mine(hard_negative_k=1).stats
    assert stats.target_rank_histogram["2-5"] == 1
    assert stats.train_recall_at_1 == 0.0 and stats.train_recall_at_5 == 100.0
    # written under the keys earlier files have
    assert stats.to_json()["train_recall@1"] == 0.0 and "train_recall_at_1" not in stats.to_json()


def test_mined_file_round_trips_into_the_next_rounds_negatives(tmp_path):
    from src.artifacts import HardNegatives

    result = mine(hard_negative_k=2)
    path = tmp_path / "hard_negatives_iter_0.json"
    HardNegatives({"seed": 0}, result.stats, result.queries).write(path)
    loaded = HardNegatives.read(path)
    assert loaded.queries == result.queries and loaded.stats == result.stats
    assert loaded.negative_images() == {"7": ["n1", "n2"]}


def test_triplet_round_trip():
    assert Triplet.from_dict(json.loads(json.dumps(TRIPLET.to_dict()))) == TRIPLET


def test_a_query_whose_target_is_its_reference_is_mined_without_error():
    degenerate = Triplet("8", "tgt", "keep it", "tgt")
    query, gallery = scores_query(SCORES)
    result = mine_hard_negatives(
        query, gallery, NAMES, [degenerate], MiningArguments(hard_negative_k=2, mine_scope="all")
    )
    assert "tgt" not in kept_of(result, "8") and len(kept_of(result, "8")) == 2


def kept_of(result, pairid):
    return [n.image for n in result.queries[pairid].negatives]
