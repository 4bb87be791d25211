"""Hard-negative mining by real retrieval.

For each query: the target's rank and score, and the top `--hard_negative_k` gallery
images that are not positives. Never a negative: the reference image, the target, a
`target_soft` entry with a positive score. The flags (`MiningArguments`), with what they
are for:

- `--mine_scope all` (the default) mines every query; `failures` only queries whose target
  is not ranked first (the original design's choice: fewer pairs to caption, and fewer
  queries with a negative).
- `--hard_negative_margin`: drop candidates scoring above margin x the target's score
  (positive-aware filtering against false negatives; 0.95 to 0.99 is a common choice once
  the model is decent; leave unset early on, when target scores are low and noisy).
- `--hard_negative_skip_top`: skip the first ranks, another guard against unlabelled
  positives.
- `--negative_source random` draws negatives uniformly from the gallery under the same
  exclusions: the baseline that says how much of a gain is due to *hard* negatives.

The statistics (target rank histogram, train recall, how many candidates each filter
removed, score distributions) are printed as a summary: if most candidates are removed by
the margin filter, lower it; if targets already rank first for nearly every query, mine
every query or train longer before mining.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import numpy as np

from src.arguments import MiningArguments
from src.artifacts import MinedNegative, MinedQuery
from src.data.records import Triplet
from src.faults import fault_point
from src.records import MiningStats, ScoreDistribution
from src.retrieval.search import search_topk, target_ranks

RANK_BINS = ((1, 1), (2, 5), (6, 10), (11, 50), (51, 100), (101, None))


def _positives(triplet: Triplet) -> set[str]:
    return {triplet.target} | {name for name, score in triplet.target_soft.items() if score > 0}


def _histogram(ranks: np.ndarray) -> dict[str, int]:
    histogram = {}
    for low, high in RANK_BINS:
        label = f"{low}" if low == high else (f"{low}-{high}" if high else f">{low - 1}")
        upper = high if high is not None else np.inf
        histogram[label] = int(((ranks >= low) & (ranks <= upper)).sum())
    return histogram


@dataclass
class Mined:
    """What mining gives: its statistics, and per mined query its negatives."""

    stats: MiningStats
    queries: dict[str, MinedQuery]


def _mined(queries: dict[str, dict]) -> dict[str, MinedQuery]:
    return {
        pairid: MinedQuery(
            [MinedNegative(**n) for n in query["negatives"]],
            query.get("target_rank"),
            query.get("target_score"),
        )
        for pairid, query in queries.items()
    }


def _distribution(values: list[float]) -> ScoreDistribution:
    if not values:
        return ScoreDistribution(count=0)
    array = np.asarray(values, dtype=np.float64)
    p5, p25, p50, p75, p95 = (float(v) for v in np.quantile(array, [0.05, 0.25, 0.5, 0.75, 0.95]))
    return ScoreDistribution(
        count=int(array.size), mean=float(array.mean()), std=float(array.std()),
        p5=p5, p25=p25, p50=p50, p75=p75, p95=p95,
    )  # fmt: skip


def mine_hard_negatives(
    query_emb: np.ndarray,
    gallery_emb: np.ndarray,
    gallery_names: list[str],
    triplets: list[Triplet],
    options: MiningArguments,
    seed: int = 0,
    chunk_size: int = 1024,
    device: str | None = None,
) -> Mined:
    """Mine negatives for every query (`seed`: the random baseline's draws).

    Row i of `query_emb` is `triplets[i]`. `queries` maps pairid to the target's rank and
    score and the kept negatives (image, score, rank), for mined queries only.
    """
    index = {name: i for i, name in enumerate(gallery_names)}
    missing = [t.pairid for t in triplets if t.target not in index or t.reference not in index]
    if missing:
        raise ValueError(
            f"reference or target of {len(missing)} queries not in the gallery: {missing[:5]}"
        )
    # The reference is never a candidate, except for a (degenerate) query whose target it is.
    references = [[index[t.reference]] if t.reference != t.target else [] for t in triplets]
    ranks, target_scores = target_ranks(
        query_emb,
        gallery_emb,
        [index[t.target] for t in triplets],
        exclude=references,
        chunk_size=chunk_size,
        device=device,
    )
    chosen = [i for i in range(len(triplets)) if options.mine_scope == "all" or ranks[i] > 1]
    removed = {
        "reference": sum(1 for t in triplets if t.reference != t.target),
        "target": 0,
        "soft_positive": 0,
        "skip_top": 0,
        "margin": 0,
    }
    if options.negative_source == "random":
        queries = _random_negatives(triplets, chosen, gallery_names, options.hard_negative_k, seed)
    else:
        queries = _mined_negatives(
            query_emb,
            gallery_emb,
            gallery_names,
            triplets,
            chosen,
            target_scores,
            options,
            removed,
            chunk_size,
            device,
        )
    for i in chosen:
        queries[triplets[i].pairid].update(
            target_rank=int(ranks[i]), target_score=float(target_scores[i])
        )
    negative_scores = [
        n["score"] for q in queries.values() for n in q["negatives"] if n["score"] is not None
    ]
    stats = MiningStats(
        **_counts(len(triplets), len(chosen), queries),
        train_recall_at_1=float((ranks <= 1).mean() * 100) if len(ranks) else 0.0,
        train_recall_at_5=float((ranks <= 5).mean() * 100) if len(ranks) else 0.0,
        target_rank_histogram=_histogram(ranks),
        removed_by_filter=removed,
        target_scores=_distribution([float(s) for s in target_scores]),
        negative_scores=_distribution(negative_scores),
    )
    return Mined(stats, _mined(queries))


def random_negatives(triplets: list[Triplet], gallery_names: list[str], k: int, seed: int) -> Mined:
    """The random baseline over every query (`--negative_source random`, `--mine_scope all`):
    no ranking is needed to choose the queries, so nothing is encoded; the statistics have
    no recall."""
    queries = _random_negatives(triplets, range(len(triplets)), gallery_names, k, seed)
    stats = MiningStats(
        **_counts(len(triplets), len(triplets), queries),
        train_recall_at_1=None,
        train_recall_at_5=None,
        target_rank_histogram={},
        removed_by_filter={},
        target_scores=ScoreDistribution(count=0),
        negative_scores=ScoreDistribution(count=0),
    )
    return Mined(stats, _mined(queries))


def _counts(num_queries: int, num_mined: int, queries: dict) -> dict:
    return {
        "num_queries": num_queries,
        "num_mined": num_mined,
        "num_negatives": sum(len(q["negatives"]) for q in queries.values()),
        "queries_without_negatives": sum(1 for q in queries.values() if not q["negatives"]),
    }


def _mined_negatives(
    query_emb,
    gallery_emb,
    gallery_names,
    triplets,
    chosen,
    target_scores,
    options,
    removed,
    chunk_size,
    device,
) -> dict[str, dict]:
    """Walk each chosen query's ranking, filtering, until k negatives are kept.

    The window of ranks searched grows (doubling) for the queries that still lack negatives,
    so a query whose top ranks are all filtered out still gets k when the gallery has them.
    """
    index = {name: i for i, name in enumerate(gallery_names)}
    queries = {triplets[i].pairid: {"negatives": []} for i in chosen}
    eligible = len(gallery_names) - 1
    pending = list(chosen)
    k, skip_top = options.hard_negative_k, options.hard_negative_skip_top
    margin = options.hard_negative_margin
    window = min(eligible, k + skip_top + 8)
    walked = {i: 0 for i in chosen}
    skipped = {i: 0 for i in chosen}
    while pending:
        scores, indices = search_topk(
            query_emb[pending],
            gallery_emb,
            window,
            exclude=[[index[triplets[i].reference]] for i in pending],
            chunk_size=chunk_size,
            device=device,
        )
        still = []
        for row, i in enumerate(pending):
            fault_point("mining", len(chosen) - len(pending) + row)
            triplet, kept = triplets[i], queries[triplets[i].pairid]["negatives"]
            positives = _positives(triplet)
            for rank in range(walked[i], window):
                if len(kept) == k:
                    break
                name, score = gallery_names[indices[row, rank]], float(scores[row, rank])
                if name == triplet.target:
                    removed["target"] += 1
                elif name in positives:
                    removed["soft_positive"] += 1
                elif skipped[i] < skip_top:
                    skipped[i] += 1
                    removed["skip_top"] += 1
                elif margin is not None and score > margin * float(target_scores[i]):
                    removed["margin"] += 1
                else:
                    kept.append({"image": name, "score": score, "rank": rank + 1})
                walked[i] = rank + 1
            if len(kept) < k and window < eligible:
                still.append(i)
        pending = still
        window = min(eligible, window * 2)
    return queries


def _random_negatives(triplets, chosen, gallery_names, k, seed) -> dict[str, dict]:
    """The baseline: k gallery images drawn uniformly per query, under the same exclusions."""
    rng = random.Random(seed)
    gallery = set(gallery_names)
    queries = {}
    for i in chosen:
        triplet = triplets[i]
        forbidden = (_positives(triplet) | {triplet.reference}) & gallery
        wanted = min(k, len(gallery) - len(forbidden))
        drawn: list[str] = []
        while len(drawn) < wanted:
            name = gallery_names[rng.randrange(len(gallery_names))]
            if name not in forbidden and name not in drawn:
                drawn.append(name)
        queries[triplet.pairid] = {
            "negatives": [{"image": n, "score": None, "rank": None} for n in drawn]
        }
    return queries
