"""The contrastive loss against a hand computation on fixed embeddings."""

import math

import pytest
import torch

from src.loss import ContrastiveBatch, contrastive_loss, group_loss, infonce_loss, triplet_loss


def unit(*values):
    v = torch.tensor(values, dtype=torch.float32)
    return v / v.norm()


def make_batch(negatives=True):
    query = torch.stack([unit(1, 0), unit(0, 1)])
    positive = torch.stack([unit(1, 1), unit(0, 1)])
    negative = torch.stack([unit(1, 0)]) if negatives else torch.zeros(0, 2)
    return ContrastiveBatch(
        query=query,
        positive=positive,
        negative=negative,
        positive_ids=torch.tensor([10, 11]),
        negative_ids=torch.tensor([12]) if negatives else torch.zeros(0, dtype=torch.long),
        group_ids=torch.tensor([0, 0]),
    )


def hand_ce(scores, label, tau):
    logits = [s / tau for s in scores]
    return -logits[label] + math.log(sum(math.exp(x) for x in logits))


@pytest.mark.parametrize("negatives", [False, True])
def test_infonce_matches_hand_computation(negatives):
    tau, r = 0.5, 1 / math.sqrt(2)
    # query 0 = (1,0): positives (r, r) and (0,1) -> scores r, 0; negative (1,0) -> 1
    # query 1 = (0,1): scores r, 1; negative 0
    q0 = [r, 0.0] + ([1.0] if negatives else [])
    q1 = [r, 1.0] + ([0.0] if negatives else [])
    expected = (hand_ce(q0, 0, tau) + hand_ce(q1, 1, tau)) / 2
    loss = infonce_loss(make_batch(negatives), tau)
    assert loss.item() == pytest.approx(expected, rel=1e-6)


def test_duplicate_positive_is_masked_not_a_negative():
    batch = make_batch(negatives=False)
    batch.positive_ids = torch.tensor([10, 10])
    tau = 0.5
    # each query sees only its own positive: loss = 0
    assert infonce_loss(batch, tau).item() == pytest.approx(0.0, abs=1e-7)


def test_group_term_uses_only_same_group_positives():
    batch = make_batch(negatives=True)
    tau, r = 0.5, 1 / math.sqrt(2)
    expected = (hand_ce([r, 0.0], 0, tau) + hand_ce([r, 1.0], 1, tau)) / 2
    assert group_loss(batch, tau).item() == pytest.approx(expected, rel=1e-6)
    batch.group_ids = torch.tensor([0, 1])
    assert group_loss(batch, tau).item() == 0.0
    total = contrastive_loss(make_batch(True), tau, group_loss_weight=0.5)
    assert total.item() == pytest.approx(
        infonce_loss(make_batch(True), tau).item() + 0.5 * expected, rel=1e-6
    )


def triplet_batch() -> ContrastiveBatch:
    """Three queries; 0 and 1 share a reference (group 0), 2 is alone. Query 0 owns the
    first hard negative, query 2 the second; the second is the same image as query 0's
    positive (never a negative of query 0, but one of query 2's)."""
    query = torch.stack([unit(1, 0), unit(0, 1), unit(1, 1)])
    positive = torch.stack([unit(1, 1), unit(0, 1), unit(1, 0)])
    negative = torch.stack([unit(1, 0), unit(1, 1)])
    return ContrastiveBatch(
        query=query,
        positive=positive,
        negative=negative,
        positive_ids=torch.tensor([10, 11, 12]),
        negative_ids=torch.tensor([13, 10]),
        group_ids=torch.tensor([0, 0, 5]),
        query_ids=torch.tensor([7, 8, 9]),
        negative_owners=torch.tensor([7, 9]),
    )


def test_triplet_term_matches_hand_computation():
    margin, r = 0.2, 1 / math.sqrt(2)
    # query 0: positive (r,r) -> r; own negative (1,0) -> 1; group positive (0,1) -> 0
    # query 1: positive (0,1) -> 1; group positive (r,r) -> r
    # query 2: positive (1,0) -> r; own negative (r,r) -> 1 (image 10, not its positive)
    hinges = [margin - r + 1, max(0.0, margin - r + 0), max(0.0, margin - 1 + r), margin - r + 1]
    expected = sum(hinges) / len(hinges)
    assert triplet_loss(triplet_batch(), margin).item() == pytest.approx(expected, rel=1e-6)


def test_triplet_term_is_zero_without_triplet_negatives_and_keeps_the_graph():
    batch = make_batch(negatives=False)
    batch.group_ids = torch.tensor([0, 1])
    batch.query_ids, batch.negative_owners = torch.tensor([0, 1]), torch.zeros(0, dtype=torch.long)
    batch.query.requires_grad_(True)
    loss = triplet_loss(batch, 0.5)
    assert loss.item() == 0.0 and loss.requires_grad


def test_triplet_weight_adds_the_term():
    tau, margin, weight = 0.5, 0.2, 0.25
    plain = contrastive_loss(triplet_batch(), tau).item()
    total = contrastive_loss(triplet_batch(), tau, triplet_loss_weight=weight, triplet_margin=margin)
    expected = plain + weight * triplet_loss(triplet_batch(), margin).item()
    assert total.item() == pytest.approx(expected, rel=1e-6)
