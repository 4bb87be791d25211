"""The training dataset of one round: triplets, their mined hard negatives, their images.

`for_round` assembles a round's data in one place: the split's original triplets, the
augmented triplets of the round's pool (each with its source query's original target as
its hard negative, since the new text no longer describes that image), and the mined
negatives, less those the consistency check flagged as likely false negatives.
`mine_hard_negatives` mines for the dataset's own triplets by real retrieval with a
checkpoint's embeddings (through the embedding cache) and the miner of
src/retrieval/mining.py; nothing runs a model inside `__getitem__`.

Each item is a query (reference image + modification text), its positive (target image)
and `num_hard_negatives` images drawn from the query's mined list. The draw is a seeded
permutation of the list per query, read as a window that moves every epoch, so each
epoch shows the next negatives of the list rather than the same ones again.

Images are read through `self.images` (`ModelImages.load_for_model`): the decoded
originals by default; `use_images` (train_round does) serves them from the image store at
the embedder's pixel budget (src/data/image_store.py), with identical pixel values.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import TYPE_CHECKING

from torch.utils.data import Dataset

from src.data.image_store import ModelImages
from src.data.records import Split, Triplet
from src.retrieval import mining

if TYPE_CHECKING:
    from src.arguments import MiningArguments
    from src.artifacts import AugmentedSamples, HardNegatives
    from src.retrieval.checkpoint_encoding import CheckpointEncoder


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
        self.hard_negatives = hard_negatives or {}
        self.num_hard_negatives = num_hard_negatives
        self.image_ids = {name: i for i, name in enumerate(sorted(split.images))}
        self.epoch = 0
        self.images = ModelImages()
        self._negative_orders = {
            t.pairid: random.Random(f"{seed}:{t.pairid}").sample(
                self.hard_negatives.get(t.pairid, []), len(self.hard_negatives.get(t.pairid, []))
            )
            for t in triplets
        }

    @classmethod
    def for_round(
        cls,
        split: Split,
        mined: HardNegatives | None = None,
        augmented: Sequence[tuple[int, AugmentedSamples]] = (),
        num_hard_negatives: int = 0,
        seed: int = 0,
    ) -> ComposedRetrievalDataset:
        """A round's data: `split`'s triplets plus the augmented ones, with their negatives.

        `mined` is the hard-negative file the round trains with (None in round 0);
        `augmented` the (round, augmented-sample file) pairs of the round's pool, the
        round's own last: its consistency check's false negatives are dropped from the
        mined lists. Only the triplets are read from the new samples (their provenance,
        check scores and a simulated captioner's records are not).
        """
        triplets = list(split.triplets)
        negatives = mined.negative_images() if mined is not None else {}
        if augmented:
            for pairid, images in augmented[-1][1].false_negatives.items():
                negatives[pairid] = [n for n in negatives.get(pairid, []) if n not in images]
        for iteration, payload in augmented:
            for sample in payload.samples:
                triplets.append(
                    Triplet(
                        pairid=sample.pairid,
                        reference=sample.reference,
                        caption=sample.caption,
                        target=sample.target,
                        source=f"augmented:{iteration}",
                    )
                )
                negatives[sample.pairid] = [sample.original_target]
        return cls(split, triplets, negatives, num_hard_negatives, seed)

    def mine_hard_negatives(
        self, encoder: CheckpointEncoder, instruction_set: str, options: MiningArguments, seed: int
    ) -> mining.Mined:
        """Mine negatives for this dataset's triplets by retrieval over its split's gallery
        (src/retrieval/mining.py). Random negatives
        for every query need no ranking, so nothing is encoded.
        """
        if options.negative_source == "random" and options.mine_scope == "all":
            names = self.split.gallery_names()
            return mining.random_negatives(self.triplets, names, options.hard_negative_k, seed)
        encoded = encoder.encode_split(self.split, self.triplets, instruction_set)
        return mining.mine_hard_negatives(
            encoded.queries, encoded.gallery, encoded.gallery_names, encoded.triplets, options, seed
        )

    def use_images(self, images: ModelImages) -> None:
        """Read images through `images` (e.g. from the image store at the model's budget)."""
        self.images = images

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.triplets)

    def counts(self) -> dict[str, int]:
        """How many triplets are original, augmented, and have hard negatives."""
        original = sum(t.source == "original" for t in self.triplets)
        return {
            "original": original,
            "augmented": len(self.triplets) - original,
            "with_hard_negatives": sum(1 for t in self.triplets if self.hard_negatives.get(t.pairid)),
        }

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
        images, load = self.split.images, self.images.load_for_model
        return {
            "pairid": triplet.pairid,
            "caption": triplet.caption,
            "reference": load(images[triplet.reference]),
            "target": load(images[triplet.target]),
            "negatives": [load(images[name]) for name in negatives],
            "target_id": self.image_ids[triplet.target],
            "negative_ids": [self.image_ids[name] for name in negatives],
            "group_id": self.group_of(index),
            "query_id": index,
        }
