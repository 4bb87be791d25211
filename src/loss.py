"""The contrastive loss, in one place.

InfoNCE over q . c / tau. The candidates of every query are all positives of the global
batch plus all mined hard negatives of the batch; a candidate that is the same image as
the query's own positive (another query with the same target) is masked out rather than
counted as a negative. Two optional terms for ReCALL's refinement regime:

- the group term contrasts each query only with the positives of the queries that share
  its reference image (`--group_loss_weight`, with `--group_by_reference`);
- the triplet term asks each query to score its positive at least `margin` above each of
  its own triplet negatives: its mined hard negatives and the positives of the other
  queries of its reference group (a new text's target and the original target of the same
  reference are each other's), as a mean hinge (`--triplet_loss_weight`,
  `--triplet_margin`; ReCALL: 0.2 triplet beside 0.8 InfoNCE, margin 0.05).

The embeddings are L2-normalised, so q . c is the cosine similarity the margin is read in.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass
class ContrastiveBatch:
    """Embeddings and ids of one (global) contrastive batch.

    query: (B, d); positive: (B, d), row i is query i's target; negative: (N, d), any
    number of hard negatives. positive_ids / negative_ids: image ids of those rows, used
    to mask duplicates of a query's own target. group_ids: (B,) reference image ids.
    query_ids: (B,) ids of the queries (their dataset index: unique over processes);
    negative_owners: (N,) the query id each hard negative was drawn for (the triplet term).
    """

    query: torch.Tensor
    positive: torch.Tensor
    negative: torch.Tensor
    positive_ids: torch.Tensor
    negative_ids: torch.Tensor
    group_ids: torch.Tensor
    query_ids: torch.Tensor | None = None
    negative_owners: torch.Tensor | None = None


def infonce_loss(batch: ContrastiveBatch, temperature: float) -> torch.Tensor:
    """Mean cross-entropy of each query against all positives and all hard negatives."""
    candidates = torch.cat([batch.positive, batch.negative], dim=0)
    candidate_ids = torch.cat([batch.positive_ids, batch.negative_ids], dim=0)
    logits = batch.query @ candidates.T / temperature
    labels = torch.arange(batch.query.shape[0], device=logits.device)
    duplicate = candidate_ids[None, :] == batch.positive_ids[:, None]
    duplicate[labels, labels] = False
    logits = logits.masked_fill(duplicate, float("-inf"))
    return F.cross_entropy(logits, labels)


def group_loss(batch: ContrastiveBatch, temperature: float) -> torch.Tensor:
    """Cross-entropy of each query against the positives of its own reference group.

    Only queries whose group holds at least two distinct targets contribute; with none,
    the term is zero (and keeps the graph so backward stays uniform).
    """
    logits = batch.query @ batch.positive.T / temperature
    labels = torch.arange(batch.query.shape[0], device=logits.device)
    same_group = batch.group_ids[:, None] == batch.group_ids[None, :]
    duplicate = batch.positive_ids[None, :] == batch.positive_ids[:, None]
    duplicate[labels, labels] = False
    keep = same_group & ~duplicate
    contributes = keep.sum(dim=1) > 1
    if not contributes.any():
        return logits.sum() * 0.0
    logits = logits.masked_fill(~keep, float("-inf"))
    return F.cross_entropy(logits[contributes], labels[contributes])


def triplet_loss(batch: ContrastiveBatch, margin: float) -> torch.Tensor:
    """Mean of max(0, margin - q.p + q.n) over every query and each of its triplet
    negatives n: its own hard negatives, and the positives of the other queries of its
    reference group; an image equal to the query's positive is never one. With none in
    the batch, the term is zero (and keeps the graph)."""
    if batch.query_ids is None or batch.negative_owners is None:
        raise ValueError("the triplet term needs query_ids and negative_owners in the batch")
    positive_score = (batch.query * batch.positive).sum(dim=1, keepdim=True)
    scores = batch.query @ torch.cat([batch.positive, batch.negative], dim=0).T
    same_group = batch.group_ids[:, None] == batch.group_ids[None, :]
    own = batch.negative_owners[None, :] == batch.query_ids[:, None]
    candidate_ids = torch.cat([batch.positive_ids, batch.negative_ids], dim=0)
    negatives = torch.cat([same_group, own], dim=1) & (candidate_ids[None, :] != batch.positive_ids[:, None])
    if not negatives.any():
        return scores.sum() * 0.0
    hinge = torch.clamp(margin - positive_score + scores, min=0.0)
    return hinge[negatives].mean()


def contrastive_loss(
    batch: ContrastiveBatch,
    temperature: float,
    group_loss_weight: float = 0.0,
    triplet_loss_weight: float = 0.0,
    triplet_margin: float = 0.0,
) -> torch.Tensor:
    """InfoNCE, plus the weighted group and triplet terms where their weights are set."""
    loss = infonce_loss(batch, temperature)
    if group_loss_weight > 0:
        loss = loss + group_loss_weight * group_loss(batch, temperature)
    if triplet_loss_weight > 0:
        loss = loss + triplet_loss_weight * triplet_loss(batch, triplet_margin)
    return loss
