"""Official CIRR and FashionIQ retrieval metrics, in percent (0-100), and CIRR test submissions.

CIRR (as the CIRR evaluation server and CLIP4Cir's ``validate.py`` compute it): each
query's reference image is removed from its ranking; Recall@1/5/10/50 rank the whole
split gallery, Recall_subset@1/2/3 rank only the query's image group
(``img_set.members``) minus the reference, and "avg" is (Recall@5 + Recall_subset@1) / 2.

FashionIQ: each category's queries rank that category's gallery, without removing the
reference; R@10 and R@50 per category, their means over categories, and the mean of those.

Whether a model composes (``modality_metrics``; the CIRCUS audit of CIR benchmarks, 2026,
found that many queries are solved by the image alone or the text alone): each query is
also ranked two more ways, with the same embedder, the same gallery and the same
exclusions as the composed ranking (CIRR: the whole gallery minus the reference;
FashionIQ: the query's category gallery):

- image-only: the query is the reference image's own gallery embedding (its
  representation as a candidate, ``reference_queries``);
- text-only: the query is the modification text in the query instruction without the
  image (``src/model/prompts.py``: ``text_only_query_text``).

A query is solved by one modality at K when the image-only or the text-only ranking puts
its target in the top K; the others "need both" at K. Per K: image-only and text-only
recall, the share of queries solved by one modality, and the composed recall on the
queries that need both, with their count; the composed recall of all queries beside them.
All are pooled over the split's queries (FashionIQ's categories together, not the mean of
categories of the official metric), in percent.

The rankings come from ``search.py`` (exact, chunked; ties go to the lower gallery index).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from src.data.records import Triplet
from src.retrieval.search import Matrix, search_topk, target_ranks

CIRR_RECALL_KS = (1, 5, 10, 50)
CIRR_SUBSET_KS = (1, 2, 3)
FASHIONIQ_KS = (10, 50)


def _name_index(gallery_names: Sequence[str], gallery_emb: Matrix) -> dict[str, int]:
    if len(gallery_names) != len(gallery_emb):
        raise ValueError(
            f"{len(gallery_names)} gallery names for {len(gallery_emb)} gallery embeddings"
        )
    index = {name: i for i, name in enumerate(gallery_names)}
    if len(index) != len(gallery_names):
        raise ValueError("gallery_names holds duplicate names")
    return index


def _check_queries(query_emb: Matrix, triplets: Sequence[Triplet]) -> None:
    if not triplets:
        raise ValueError("no triplets to evaluate")
    if len(query_emb) != len(triplets):
        raise ValueError(f"{len(query_emb)} query embeddings for {len(triplets)} triplets")


def _target_index(index: dict[str, int], triplet: Triplet) -> int:
    if triplet.target is None:
        raise ValueError(f"triplet {triplet.pairid} has no target (unlabelled split?)")
    if triplet.target not in index:
        raise ValueError(
            f"target {triplet.target!r} of triplet {triplet.pairid} is not in the gallery"
        )
    return index[triplet.target]


def _reference_exclusion(index: dict[str, int], triplets: Sequence[Triplet]) -> list[list[int]]:
    """Each query's reference image as a one-item exclusion list (empty if not in the gallery)."""
    return [[index[t.reference]] if t.reference in index else [] for t in triplets]


def _group_candidates(index: dict[str, int], triplets: Sequence[Triplet]) -> list[list[int]]:
    """Each query's image group (``img_set.members``) minus its reference, as gallery indices."""
    candidates = []
    for t in triplets:
        if t.group is None:
            raise ValueError(f"triplet {t.pairid} has no group (img_set.members)")
        unknown = [name for name in t.group if name not in index]
        if unknown:
            raise ValueError(
                f"group member {unknown[0]!r} of triplet {t.pairid} is not in the gallery"
            )
        candidates.append(sorted({index[name] for name in t.group if name != t.reference}))
    return candidates


def _rows(x: Matrix, rows: np.ndarray) -> Matrix:
    return x[torch.from_numpy(rows)] if isinstance(x, torch.Tensor) else x[rows]


def _ranks_where(
    query_emb: Matrix,
    gallery_emb: Matrix,
    targets: np.ndarray,
    retrievable: np.ndarray,
    *,
    exclude: list[list[int]] | None = None,
    candidates: list[list[int]] | None = None,
    chunk_size: int,
    device: str | torch.device | None,
) -> np.ndarray:
    """Target ranks (float) of the retrievable queries; inf (never retrieved) for the rest."""
    ranks = np.full(len(targets), np.inf)
    rows = np.flatnonzero(retrievable)
    if len(rows):
        ranks[rows], _ = target_ranks(
            _rows(query_emb, rows),
            gallery_emb,
            targets[rows],
            exclude=None if exclude is None else [exclude[i] for i in rows],
            candidates=None if candidates is None else [candidates[i] for i in rows],
            chunk_size=chunk_size,
            device=device,
        )
    return ranks


def _recall(ranks: np.ndarray, k: int) -> float:
    return float(np.mean(ranks <= k) * 100.0)


def cirr_metrics(
    query_emb: Matrix,
    gallery_emb: Matrix,
    gallery_names: list[str],
    triplets: list[Triplet],
    *,
    chunk_size: int = 1024,
    device: str | torch.device | None = None,
) -> dict[str, float]:
    """CIRR validation metrics, in percent.

    Query i of ``query_emb`` is ``triplets[i]``; row j of ``gallery_emb`` is
    ``gallery_names[j]``. The reference image is removed from each query's ranking, so a
    target equal to its reference counts as a miss; so does a target outside its group for
    the subset recalls. Recall@k for a k at or beyond the number of eligible images (small
    galleries) is computed with k clipped to that number: every retrievable target counts.

    Returns:
        {"recall@1", "recall@5", "recall@10", "recall@50", "recall_subset@1",
        "recall_subset@2", "recall_subset@3", "avg"}.
    """
    index = _name_index(gallery_names, gallery_emb)
    _check_queries(query_emb, triplets)
    targets = np.array([_target_index(index, t) for t in triplets], dtype=np.int64)
    references = _reference_exclusion(index, triplets)
    groups = _group_candidates(index, triplets)
    search = {"chunk_size": chunk_size, "device": device}
    not_reference = np.array([t.target != t.reference for t in triplets], dtype=bool)
    in_group = np.array(
        [target in group for target, group in zip(targets, groups, strict=True)], dtype=bool
    )
    ranks = _ranks_where(
        query_emb, gallery_emb, targets, not_reference, exclude=references, **search
    )
    subset_ranks = _ranks_where(
        query_emb, gallery_emb, targets, in_group, candidates=groups, **search
    )
    metrics = {f"recall@{k}": _recall(ranks, k) for k in CIRR_RECALL_KS}
    metrics.update({f"recall_subset@{k}": _recall(subset_ranks, k) for k in CIRR_SUBSET_KS})
    metrics["avg"] = (metrics["recall@5"] + metrics["recall_subset@1"]) / 2
    return metrics


def fashioniq_metrics(
    query_emb: Matrix,
    gallery_emb: Matrix,
    gallery_names: list[str],
    triplets: list[Triplet],
    categories: dict[str, list[str]],
    *,
    chunk_size: int = 1024,
    device: str | torch.device | None = None,
) -> dict[str, float]:
    """FashionIQ validation metrics, in percent.

    The queries of category ``cat`` (``triplet.category``) rank the images named in
    ``categories[cat]`` (ties in gallery order); the reference is not removed. Categories
    without queries are skipped (absent from the result and the averages).

    Returns:
        {"{cat}_recall@10", "{cat}_recall@50" for each category with queries,
        "average_recall@10", "average_recall@50", "average"}.
    """
    index = _name_index(gallery_names, gallery_emb)
    _check_queries(query_emb, triplets)
    unknown = [t for t in triplets if t.category not in categories]
    if unknown:
        raise ValueError(
            f"triplet {unknown[0].pairid} has category {unknown[0].category!r}, "
            f"not one of {sorted(categories)}"
        )
    metrics: dict[str, float] = {}
    evaluated = []
    for cat, names in categories.items():
        rows = np.array([i for i, t in enumerate(triplets) if t.category == cat], dtype=np.int64)
        if not len(rows):
            continue
        missing = [name for name in names if name not in index]
        if missing:
            raise ValueError(f"{cat} gallery image {missing[0]!r} is not in gallery_names")
        members = np.array(sorted({index[name] for name in names}), dtype=np.int64)
        column = {int(member): j for j, member in enumerate(members)}
        targets = []
        for i in rows:
            target = _target_index(index, triplets[i])
            if target not in column:
                raise ValueError(
                    f"target {triplets[i].target!r} of triplet {triplets[i].pairid} "
                    f"is not in the {cat} gallery"
                )
            targets.append(column[target])
        ranks, _ = target_ranks(
            _rows(query_emb, rows),
            _rows(gallery_emb, members),
            targets,
            chunk_size=chunk_size,
            device=device,
        )
        for k in FASHIONIQ_KS:
            metrics[f"{cat}_recall@{k}"] = _recall(ranks, k)
        evaluated.append(cat)
    if not evaluated:
        raise ValueError("no triplet belongs to any of the given categories")
    for k in FASHIONIQ_KS:
        metrics[f"average_recall@{k}"] = float(
            np.mean([metrics[f"{cat}_recall@{k}"] for cat in evaluated])
        )
    metrics["average"] = (metrics["average_recall@10"] + metrics["average_recall@50"]) / 2
    return metrics


def cirr_test_submission(
    query_emb: Matrix,
    gallery_emb: Matrix,
    gallery_names: list[str],
    triplets: list[Triplet],
    *,
    chunk_size: int = 1024,
    device: str | torch.device | None = None,
) -> tuple[dict, dict]:
    """The two CIRR test1 submission dicts for the evaluation server.

    Returns:
        ``({"version": "rc2", "metric": "recall", pairid: [top-50 names]},
        {"version": "rc2", "metric": "recall_subset", pairid: [top-3 names]})`` with
        pairids as strings. The reference image is never listed; the subset lists rank the
        query's group minus its reference. Lists are shorter where fewer images are
        eligible (a gallery under 51 images, a group under 4).
    """
    index = _name_index(gallery_names, gallery_emb)
    _check_queries(query_emb, triplets)
    pairids = [str(t.pairid) for t in triplets]
    if len(set(pairids)) != len(pairids):
        raise ValueError("triplets hold duplicate pairids")
    references = _reference_exclusion(index, triplets)
    groups = _group_candidates(index, triplets)
    search = {"chunk_size": chunk_size, "device": device}
    eligible = min((len(gallery_names) - len(r) for r in references), default=0)
    k = min(CIRR_RECALL_KS[-1], eligible)
    top_names: list[list[str]] = [[] for _ in triplets]
    if k:
        _, top = search_topk(query_emb, gallery_emb, k, exclude=references, **search)
        top_names = [[gallery_names[j] for j in row] for row in top]

    # Subsets are searched in batches of equal list length (one batch for CIRR's groups of 6).
    subset_names: list[list[str]] = [[] for _ in triplets]
    lengths = np.array([min(CIRR_SUBSET_KS[-1], len(group)) for group in groups], dtype=np.int64)
    for length in np.unique(lengths[lengths > 0]):
        rows = np.flatnonzero(lengths == length)
        _, top = search_topk(
            _rows(query_emb, rows),
            gallery_emb,
            int(length),
            candidates=[groups[i] for i in rows],
            **search,
        )
        for i, row in zip(rows, top, strict=True):
            subset_names[i] = [gallery_names[j] for j in row]

    recall: dict[str, str | list[str]] = {"version": "rc2", "metric": "recall"}
    subset: dict[str, str | list[str]] = {"version": "rc2", "metric": "recall_subset"}
    recall.update(zip(pairids, top_names, strict=True))
    subset.update(zip(pairids, subset_names, strict=True))
    return recall, subset


def _ranking_parts(
    index: dict[str, int],
    triplets: Sequence[Triplet],
    categories: dict[str, list[str]] | None,
) -> list[tuple[np.ndarray, np.ndarray, list[list[int]] | None]]:
    """(query rows, gallery indices ranked, per-row exclusions or None) of each part of a
    split's ranking: CIRR one part, the whole gallery minus each reference; FashionIQ
    (`categories` given) one part per category, its gallery, nothing excluded."""
    if categories:
        return [
            (np.array([i for i, t in enumerate(triplets) if t.category == cat], dtype=np.int64),
             np.array(sorted({index[name] for name in names}), dtype=np.int64), None)
            for cat, names in categories.items()
        ]  # fmt: skip
    return [
        (
            np.arange(len(triplets)),
            np.arange(len(index)),
            _reference_exclusion(index, triplets),
        )
    ]


def _part_target_ranks(
    query_emb: Matrix,
    gallery: Matrix,
    index: dict[str, int],
    triplets: Sequence[Triplet],
    part: tuple[np.ndarray, np.ndarray, list[list[int]] | None],
    search: dict,
) -> np.ndarray:
    """Target ranks (float; inf: cannot be retrieved) of a part's queries; `query_emb`
    holds the part's rows, `gallery` its gallery rows."""
    rows, members, exclude = part
    column = {int(m): j for j, m in enumerate(members)}
    targets = np.array(
        [column.get(index.get(triplets[i].target, -1), -1) for i in rows], dtype=np.int64
    )
    retrievable = targets >= 0
    if exclude is not None:
        retrievable &= np.array([triplets[i].target != triplets[i].reference for i in rows])
    return _ranks_where(query_emb, gallery, targets, retrievable, exclude=exclude, **search)


def query_rankings(
    query_emb: Matrix,
    gallery_emb: Matrix,
    gallery_names: list[str],
    triplets: list[Triplet],
    categories: dict[str, list[str]] | None = None,
    k: int = 5,
    *,
    chunk_size: int = 1024,
    device: str | torch.device | None = None,
) -> dict[str, dict]:
    """Per query: the target's rank (1-based; None where it cannot be retrieved) and the
    top-k gallery names, ranked as the metrics rank them: CIRR over the whole gallery
    without the reference, FashionIQ (`categories` given) over the query's category."""
    index = _name_index(gallery_names, gallery_emb)
    _check_queries(query_emb, triplets)
    search = {"chunk_size": chunk_size, "device": device}
    rankings: dict[str, dict] = {}
    for part in _ranking_parts(index, triplets, categories):
        rows, members, exclude = part
        if not len(rows):
            continue
        gallery, queries = _rows(gallery_emb, members), _rows(query_emb, rows)
        depth = min(k, len(members) - (1 if exclude is not None else 0))
        _, top = search_topk(queries, gallery, depth, exclude=exclude, **search)
        ranks = _part_target_ranks(queries, gallery, index, triplets, part, search)
        for position, i in enumerate(rows):
            rank = ranks[position]
            rankings[str(triplets[i].pairid)] = {
                "target_rank": None if np.isinf(rank) else int(rank),
                "top": [gallery_names[members[j]] for j in top[position]],
            }
    return rankings


def split_target_ranks(
    query_emb: Matrix,
    gallery_emb: Matrix,
    gallery_names: list[str],
    triplets: list[Triplet],
    categories: dict[str, list[str]] | None = None,
    *,
    chunk_size: int = 1024,
    device: str | torch.device | None = None,
) -> np.ndarray:
    """Each query's target rank (1-based, float; inf where it cannot be retrieved), ranked
    as `query_rankings` and the metrics rank: CIRR over the whole gallery without the
    reference, FashionIQ (`categories` given) over the query's category. `query_emb` may
    be any query embeddings of `triplets` (composed, image-only, text-only)."""
    index = _name_index(gallery_names, gallery_emb)
    _check_queries(query_emb, triplets)
    search = {"chunk_size": chunk_size, "device": device}
    ranks = np.full(len(triplets), np.inf)
    for part in _ranking_parts(index, triplets, categories):
        rows, members = part[0], part[1]
        if len(rows):
            ranks[rows] = _part_target_ranks(
                _rows(query_emb, rows), _rows(gallery_emb, members), index, triplets, part, search
            )
    return ranks


def reference_queries(
    gallery_emb: Matrix, gallery_names: list[str], triplets: list[Triplet]
) -> Matrix:
    """The image-only queries: each query's reference image's own gallery embedding."""
    index = _name_index(gallery_names, gallery_emb)
    missing = [t for t in triplets if t.reference not in index]
    if missing:
        raise ValueError(
            f"reference {missing[0].reference!r} of triplet {missing[0].pairid} is not in the "
            "gallery: its image-only query is its gallery embedding"
        )
    return _rows(gallery_emb, np.array([index[t.reference] for t in triplets], dtype=np.int64))


def _rank_array(ranks: Sequence[float | int | None] | np.ndarray) -> np.ndarray:
    return np.array([np.inf if r is None else r for r in ranks], dtype=float).reshape(-1)


def modality_metrics(
    composed_ranks: Sequence[float | int | None] | np.ndarray,
    image_ranks: Sequence[float | int | None] | np.ndarray,
    text_ranks: Sequence[float | int | None] | np.ndarray,
    ks: Sequence[int],
) -> dict[str, float | int | None]:
    """Whether the queries need both modalities, from each query's target rank under the
    composed, the image-only and the text-only ranking (1-based; None or inf: the target
    cannot be retrieved, a miss at every K). Recalls and shares in percent, pooled over
    the queries.

    A query is solved by one modality at K when its image-only or its text-only rank is
    at most K; it needs both at K otherwise.

    Returns:
        {"queries": number of queries, then for each k of `ks`:
        "image_only_recall@k", "text_only_recall@k", "composed_recall@k" (every query),
        "solved_by_one_modality@k" (percent of the queries), "need_both_queries@k" (their
        count), "need_both_recall@k" (composed recall on them; None when none needs both)}.
    """
    composed, image, text = (_rank_array(r) for r in (composed_ranks, image_ranks, text_ranks))
    if not (len(composed) == len(image) == len(text)):
        raise ValueError(
            f"{len(composed)} composed, {len(image)} image-only and {len(text)} text-only ranks"
        )
    if not len(composed):
        raise ValueError("no queries to evaluate")
    need_both = {k: (image > k) & (text > k) for k in ks}
    result: dict[str, float | int | None] = {"queries": len(composed)}
    result.update({f"image_only_recall@{k}": _recall(image, k) for k in ks})
    result.update({f"text_only_recall@{k}": _recall(text, k) for k in ks})
    result.update({f"composed_recall@{k}": _recall(composed, k) for k in ks})
    result.update(
        {f"solved_by_one_modality@{k}": float(np.mean(~need_both[k]) * 100.0) for k in ks}
    )
    result.update({f"need_both_queries@{k}": int(need_both[k].sum()) for k in ks})
    for k in ks:
        rest = composed[need_both[k]]
        result[f"need_both_recall@{k}"] = _recall(rest, k) if len(rest) else None
    return result
