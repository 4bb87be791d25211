"""Exact chunked top-k search and target ranks (src/retrieval/search.py)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from src.retrieval.search import search_topk, target_ranks

BACKENDS = ["torch", "faiss"]


def scores_as_embeddings(scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Queries and gallery whose inner products are exactly ``scores`` (Q, G)."""
    scores = np.asarray(scores, dtype=np.float32)
    return scores, np.eye(scores.shape[1], dtype=np.float32)


def brute_order(scores: np.ndarray, excluded=(), candidates=None) -> list[int]:
    """Gallery indices by (score desc, index asc), without excluded / non-candidates."""
    allowed = set(range(len(scores))) if candidates is None else set(candidates)
    allowed -= set(int(x) for x in excluded)
    order = np.lexsort((np.arange(len(scores)), -scores))
    return [int(j) for j in order if j in allowed]


def tied_data(num_q: int, num_g: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Small-integer embeddings: exact scores with many ties."""
    rng = np.random.default_rng(seed)
    q = rng.integers(0, 3, (num_q, 4)).astype(np.float32)
    g = rng.integers(0, 3, (num_g, 4)).astype(np.float32)
    return q, g


def random_exclusions(num_q: int, num_g: int, most: int, seed: int) -> list[list[int]]:
    rng = np.random.default_rng(seed)
    return [
        rng.choice(num_g, rng.integers(0, most + 1), replace=False).tolist() for _ in range(num_q)
    ]


@pytest.mark.parametrize("backend", BACKENDS)
def test_ties_go_to_the_lower_gallery_index_including_at_the_k_boundary(backend):
    q, g = scores_as_embeddings([[0.5, 0.9, 0.9, 0.2, 0.9, 0.7], [0.9, 0.1, 0.9, 0.5, 0.3, 0.3]])
    _, top = search_topk(q, g, 2, backend=backend)
    assert top.tolist() == [[1, 2], [0, 2]]
    scores, top = search_topk(q, g, 4, backend=backend)
    assert top.tolist() == [[1, 2, 4, 5], [0, 2, 3, 4]]
    expected = np.array([[0.9, 0.9, 0.9, 0.7], [0.9, 0.9, 0.5, 0.3]], dtype=np.float32)
    np.testing.assert_array_equal(scores, expected)
    assert scores.dtype == np.float32 and top.dtype == np.int64


@pytest.mark.parametrize("backend", BACKENDS)
def test_excluded_items_are_never_returned(backend):
    q, g = scores_as_embeddings([[0.5, 0.9, 0.9, 0.2, 0.9], [1.0, 0.1, 0.2, 0.3, 0.4]])
    _, top = search_topk(q, g, 2, exclude=[[1], [0, 4]], backend=backend)
    assert top.tolist() == [[2, 4], [3, 2]]


@pytest.mark.parametrize("backend", BACKENDS)
def test_k_larger_than_the_eligible_items_raises(backend):
    q, g = scores_as_embeddings([[0.1, 0.2, 0.3], [0.3, 0.2, 0.1]])
    search_topk(q, g, 3, backend=backend)
    with pytest.raises(ValueError, match="k=4"):
        search_topk(q, g, 4, backend=backend)
    with pytest.raises(ValueError, match="query 1 has only 2 eligible"):
        search_topk(q, g, 3, exclude=[[], [2, 2]], backend=backend)
    with pytest.raises(ValueError, match="k must be >= 1"):
        search_topk(q, g, 0, backend=backend)


def test_bad_exclusion_indices_raise():
    q, g = scores_as_embeddings([[0.1, 0.2, 0.3]])
    with pytest.raises(ValueError, match="outside"):
        search_topk(q, g, 1, exclude=[[3]])
    with pytest.raises(ValueError, match="entries for 1 queries"):
        search_topk(q, g, 1, exclude=[[0], [1]])


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("k", [1, 5, 17, 36])
def test_matches_brute_force_on_tied_scores(backend, k):
    q, g = tied_data(40, 40, seed=k)
    exclude = random_exclusions(40, 40, most=4, seed=k)
    scores = q @ g.T
    got_scores, got = search_topk(q, g, k, exclude=exclude, chunk_size=7, backend=backend)
    for i in range(40):
        expected = brute_order(scores[i], exclude[i])[:k]
        assert got[i].tolist() == expected
        np.testing.assert_array_equal(got_scores[i], scores[i, expected])


@pytest.mark.parametrize("backend", BACKENDS)
def test_chunked_search_equals_unchunked(backend):
    num_q = 23
    q, g = tied_data(num_q, 60, seed=1)
    exclude = random_exclusions(num_q, 60, most=3, seed=2)
    full = search_topk(q, g, 10, exclude=exclude, chunk_size=num_q, backend=backend)
    for chunk_size in (1, 7, num_q, 1000):
        got = search_topk(q, g, 10, exclude=exclude, chunk_size=chunk_size, backend=backend)
        np.testing.assert_array_equal(got[0], full[0])
        np.testing.assert_array_equal(got[1], full[1])

    rng = np.random.default_rng(3)
    q, g = rng.standard_normal((num_q, 16)), rng.standard_normal((200, 16))
    full = search_topk(q, g, 10, chunk_size=num_q, backend=backend)
    for chunk_size in (1, 7):
        scores, top = search_topk(q, g, 10, chunk_size=chunk_size, backend=backend)
        np.testing.assert_array_equal(top, full[1])
        np.testing.assert_allclose(scores, full[0], rtol=1e-5, atol=1e-6)


def test_faiss_equals_torch_on_random_data():
    rng = np.random.default_rng(0)
    q = rng.standard_normal((300, 32)).astype(np.float32)
    g = rng.standard_normal((1000, 32)).astype(np.float32)
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    g /= np.linalg.norm(g, axis=1, keepdims=True)
    exclude = random_exclusions(300, 1000, most=5, seed=1)
    torch_scores, torch_top = search_topk(q, g, 20, exclude=exclude, chunk_size=64)
    faiss_scores, faiss_top = search_topk(q, g, 20, exclude=exclude, backend="faiss")
    np.testing.assert_array_equal(faiss_top, torch_top)
    np.testing.assert_allclose(faiss_scores, torch_scores, rtol=1e-5, atol=1e-6)


def test_torch_and_numpy_inputs_agree():
    q, g = tied_data(10, 30, seed=4)
    expected = search_topk(q, g, 5, device="cpu")
    got = search_topk(torch.from_numpy(q).double(), torch.from_numpy(g), 5, device="cpu")
    np.testing.assert_array_equal(got[0], expected[0])
    np.testing.assert_array_equal(got[1], expected[1])


def test_candidates_restrict_the_ranking():
    q, g = tied_data(30, 40, seed=5)
    rng = np.random.default_rng(6)
    candidates = [rng.choice(40, 8, replace=False).tolist() for _ in range(30)]
    exclude = [c[:2] for c in candidates]
    scores = q @ g.T
    _, top = search_topk(q, g, 3, exclude=exclude, candidates=candidates, chunk_size=7)
    for i in range(30):
        assert top[i].tolist() == brute_order(scores[i], exclude[i], candidates[i])[:3]
    with pytest.raises(ValueError, match="only 6 candidates"):
        search_topk(q, g, 7, exclude=exclude, candidates=candidates)


def test_target_ranks_agree_with_brute_force():
    q, g = tied_data(50, 40, seed=7)
    rng = np.random.default_rng(8)
    targets = rng.integers(0, 40, 50)
    exclude = [
        [j for j in e if j != t]
        for e, t in zip(random_exclusions(50, 40, most=5, seed=9), targets, strict=True)
    ]
    scores = q @ g.T
    for chunk_size in (1, 7, 50):
        ranks, target_scores = target_ranks(q, g, targets, exclude=exclude, chunk_size=chunk_size)
        for i in range(50):
            assert ranks[i] == brute_order(scores[i], exclude[i]).index(targets[i]) + 1
        np.testing.assert_array_equal(target_scores, scores[np.arange(50), targets])
    assert ranks.dtype == np.int64


def test_target_ranks_within_candidates():
    q, g = tied_data(30, 40, seed=10)
    rng = np.random.default_rng(11)
    candidates = [rng.choice(40, 6, replace=False).tolist() for _ in range(30)]
    targets = [c[0] for c in candidates]
    ranks, _ = target_ranks(q, g, targets, candidates=candidates, chunk_size=4)
    scores = q @ g.T
    for i in range(30):
        assert ranks[i] == brute_order(scores[i], (), candidates[i]).index(targets[i]) + 1


def test_target_rank_counts_equal_scores_at_lower_indices_first():
    q, g = scores_as_embeddings([[0.9, 0.5, 0.5, 0.5, 0.7]])
    assert target_ranks(q, g, [2])[0].tolist() == [4]
    assert target_ranks(q, g, [2], exclude=[[0, 1]])[0].tolist() == [2]


def test_target_ranks_rejects_an_excluded_target():
    q, g = scores_as_embeddings([[0.9, 0.5, 0.5]])
    with pytest.raises(ValueError, match="is excluded"):
        target_ranks(q, g, [1], exclude=[[1]])
    with pytest.raises(ValueError, match="not among its candidates"):
        target_ranks(q, g, [1], candidates=[[0, 2]])
