"""The contrastive loss, in one place.

InfoNCE over q . c / tau. The candidates of every query are all positives of the global
batch plus all mined hard negatives of the batch; a candidate that is the same image as
the query's own positive (another query with the same target) is masked out rather than
counted as a negative. The optional group term contrasts each query only with the
positives of the queries that share its reference image (ReCALL's grouped refinement).
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
    """

    query: torch.Tensor
    positive: torch.Tensor
    negative: torch.Tensor
    positive_ids: torch.Tensor
    negative_ids: torch.Tensor
    group_ids: torch.Tensor


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


def contrastive_loss(
    batch: ContrastiveBatch, temperature: float, group_loss_weight: float = 0.0
) -> torch.Tensor:
    loss = infonce_loss(batch, temperature)
    if group_loss_weight > 0:
        loss = loss + group_loss_weight * group_loss(batch, temperature)
    return loss
