"""Batches that keep every reference group whole (ReCALL's grouped contrastive refinement).

Queries that share a reference image (an original triplet and the augmented triplets made
from its hard negatives) land in the same batch, so the loss contrasts texts that differ
on the same image. Each epoch the groups are shuffled and dealt, largest-first is not
needed, into a fixed number of batches by always filling the emptiest one; batch sizes
therefore vary a little around the requested size, the number of batches per epoch is
fixed, and every sample appears exactly once. With several processes, accelerate hands
whole batches to processes, so a group never spans two processes.
"""

from __future__ import annotations

import heapq
import math
import random
from collections import defaultdict
from collections.abc import Iterator, Sequence

from torch.utils.data import Sampler


class GroupedBatchSampler(Sampler[list[int]]):
    def __init__(self, group_ids: Sequence[int], batch_size: int, seed: int = 0):
        groups: dict[int, list[int]] = defaultdict(list)
        for index, group in enumerate(group_ids):
            groups[group].append(index)
        self.groups = list(groups.values())
        # Batch sizes vary around `batch_size`; None tells accelerate's BatchSamplerShard so,
        # which otherwise drops every batch whose size differs from its `batch_size`.
        self.batch_size = None
        self.seed = seed
        self.epoch = 0
        self.num_batches = max(1, math.ceil(len(group_ids) / batch_size))

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def batches(self) -> list[list[int]]:
        rng = random.Random(f"{self.seed}:{self.epoch}")
        groups = list(self.groups)
        rng.shuffle(groups)
        heap = [(0, b) for b in range(self.num_batches)]
        batches: list[list[int]] = [[] for _ in range(self.num_batches)]
        for group in groups:
            size, b = heapq.heappop(heap)
            batches[b].extend(group)
            heapq.heappush(heap, (size + len(group), b))
        rng.shuffle(batches)
        return [batch for batch in batches if batch]

    def __iter__(self) -> Iterator[list[int]]:
        yield from self.batches()

    def __len__(self) -> int:
        return self.num_batches
