"""The training dataset of one round: triplets, their mined hard negatives, their images.

Each item is a query (reference image + modification text), its positive (target image)
and `num_hard_negatives` images drawn from the query's mined list. The draw is a seeded
permutation of the list per query, read as a window that moves every epoch, so each
epoch shows the next negatives of the list rather than the same ones again.
"""

from __future__ import annotations

import random

from torch.utils.data import Dataset

from src.data.images import load_image
from src.data.records import Split, Triplet


class ComposedRetrievalDataset(Dataset):
    def __init__(
        self,
        split: Split,
        triplets: list[Triplet],
        hard_negatives: dict[str, list[str]] | None = None,
        num_hard_negatives: int = 0,
        seed: int = 0,
    ):
        missing = [t.pairid for t in triplets if t.target is None]
        if missing:
            raise ValueError(
                f"split {split.name!r} has no target for {len(missing)} triplets "
                f"(first: {missing[:5]}); training needs a labelled split"
            )
        self.split = split
        self.triplets = triplets
        self.num_hard_negatives = num_hard_negatives
        self.image_ids = {name: i for i, name in enumerate(sorted(split.images))}
        self.epoch = 0
        hard_negatives = hard_negatives or {}
        self._negative_orders = {
            t.pairid: random.Random(f"{seed}:{t.pairid}").sample(
                hard_negatives.get(t.pairid, []), len(hard_negatives.get(t.pairid, []))
            )
            for t in triplets
        }

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.triplets)

    def negatives_of(self, index: int) -> list[str]:
        """This epoch's hard negatives of triplet `index` (empty if it has none mined)."""
        order = self._negative_orders[self.triplets[index].pairid]
        if not order or self.num_hard_negatives == 0:
            return []
        start = self.epoch * self.num_hard_negatives
        return [order[(start + j) % len(order)] for j in range(self.num_hard_negatives)]

    def group_of(self, index: int) -> int:
        """The group of a triplet: the id of its reference image."""
        return self.image_ids[self.triplets[index].reference]

    def __getitem__(self, index: int) -> dict:
        triplet = self.triplets[index]
        negatives = self.negatives_of(index)
        images = self.split.images
        return {
            "pairid": triplet.pairid,
            "caption": triplet.caption,
            "reference": load_image(images[triplet.reference]),
            "target": load_image(images[triplet.target]),
            "negatives": [load_image(images[name]) for name in negatives],
            "target_id": self.image_ids[triplet.target],
            "negative_ids": [self.image_ids[name] for name in negatives],
            "group_id": self.group_of(index),
        }
