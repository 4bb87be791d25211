"""How many DataLoader workers, and how many batches each prepares ahead, fit this node.

A worker hands each batch it collates to the main process through shared memory
(`/dev/shm`): with `--dataloader_num_workers W` and a prefetch factor F, up to W x F
batches sit there at once, and each worker builds its next one in its own memory beside
them. Every process of the node does the same. A container's shared memory is often 64 MB
(Docker's default), where one batch of float32 pixel values of the CIRR preset (0.9 GB) was
enough for "Bus error" at the first batch; `pack` now sends uint8 pixels (one eighth of
that), and the workers are chosen here from one batch measured as it is collated
(`batch_bytes`), the free shared memory and the available host memory, shared by the
node's processes (LOCAL_WORLD_SIZE). `check_shared_memory` refuses, before any work, a
node where not even one worker with one batch ahead fits, with one line saying what to do.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass

import psutil
import torch

logger = logging.getLogger(__name__)

SHM_PATH = "/dev/shm"
# Of the free shared memory and available host memory a process's share allows, the part
# its loader's batches may take (the rest: other users, the pinned-memory copies, slack
# for batches larger than the one measured).
SHM_FRACTION = 0.5
HOST_FRACTION = 0.25
MIB = 2**20


def batch_bytes(batch: object) -> int:
    """Bytes of every tensor in a collated batch (nested dicts, lists, tuples)."""
    if isinstance(batch, torch.Tensor):
        return batch.nbytes
    if isinstance(batch, Mapping):
        return sum(batch_bytes(value) for value in batch.values())
    if isinstance(batch, (list, tuple)):
        return sum(batch_bytes(value) for value in batch)
    return 0


def shm_free_bytes(path: str = SHM_PATH) -> int | None:
    """Free bytes of the shared-memory filesystem (None where there is none)."""
    try:
        stat = os.statvfs(path)
    except OSError:
        return None
    return stat.f_bavail * stat.f_frsize


def processes_on_node() -> int:
    """This node's processes (torchrun and accelerate set LOCAL_WORLD_SIZE)."""
    return max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1")))


@dataclass(frozen=True)
class LoaderPlan:
    """The workers and prefetch factor a loader runs with, and the figures behind them."""

    workers: int
    prefetch: int
    batch_bytes: int
    shm_budget: int | None
    host_budget: int

    def line(self, requested: int, requested_prefetch: int) -> str:
        shm = "no /dev/shm" if self.shm_budget is None else f"{self.shm_budget / MIB:,.0f} MiB of /dev/shm"
        return (
            f"DataLoader: {self.workers} worker(s), prefetch {self.prefetch} (asked: "
            f"{requested}, prefetch {requested_prefetch}): a batch is {self.batch_bytes / MIB:,.1f} "
            f"MiB, this process may use {shm} and {self.host_budget / MIB:,.0f} MiB of host memory"
        )


def budgets(shm_free: int | None, host_available: int, processes: int) -> tuple[int | None, int]:
    """This process's share of free shared memory and available host memory for batches."""
    shm = None if shm_free is None else int(SHM_FRACTION * shm_free / processes)
    return shm, int(HOST_FRACTION * host_available / processes)


def fits(workers: int, prefetch: int, size: int, shm_budget: int | None, host_budget: int) -> bool:
    """W x F batches in shared memory, and W x (F + 1) in host memory (each worker builds
    its next batch beside those it has handed over)."""
    in_shm = workers * prefetch * size
    return (shm_budget is None or in_shm <= shm_budget) and workers * (prefetch + 1) * size <= host_budget


def choose_loader(
    workers: int,
    prefetch: int | None,
    size: int,
    shm_free: int | None,
    host_available: int,
    processes: int,
) -> LoaderPlan:
    """The most of `workers` and `prefetch` (None: DataLoader's default, 2) that fit: the
    prefetch comes down to 1 first, then the workers; none (the main process collates,
    no shared memory) when not even one fits."""
    prefetch = 2 if prefetch is None else prefetch
    shm_budget, host_budget = budgets(shm_free, host_available, processes)
    chosen_workers, chosen_prefetch = workers, prefetch
    while chosen_workers > 0 and not fits(chosen_workers, chosen_prefetch, size, shm_budget, host_budget):
        if chosen_prefetch > 1:
            chosen_prefetch -= 1
        else:
            chosen_workers -= 1
    return LoaderPlan(chosen_workers, chosen_prefetch, size, shm_budget, host_budget)


def fit_loader(workers: int, prefetch: int | None, first_batch: object) -> LoaderPlan:
    """`choose_loader` for a batch collated in this process, on this node's free shared
    memory and available host memory; logs the choice when it is not what was asked."""
    plan = choose_loader(
        workers,
        prefetch,
        batch_bytes(first_batch),
        shm_free_bytes(),
        psutil.virtual_memory().available,
        processes_on_node(),
    )
    asked_prefetch = 2 if prefetch is None else prefetch
    if (plan.workers, plan.prefetch) != (workers, asked_prefetch):
        logger.warning(plan.line(workers, asked_prefetch))
    return plan


def shared_memory_refusal(
    workers: int, prefetch: int | None, size: int, shm_free: int | None, processes: int
) -> str | None:
    """The one line when not even one worker with one batch ahead fits this process's share
    of the free shared memory (None: it fits, or there is no worker or no /dev/shm)."""
    if workers < 1 or shm_free is None:
        return None
    shm_budget, _ = budgets(shm_free, 0, processes)
    if size <= shm_budget:
        return None
    wanted = workers * (2 if prefetch is None else prefetch) * size * processes / SHM_FRACTION
    return (
        f"{SHM_PATH} has {shm_free / MIB:,.0f} MiB free for {processes} process(es) on this node, "
        f"but each DataLoader worker passes batches of about {size / MIB:,.0f} MiB through it "
        f"(--dataloader_num_workers {workers}): give the container more shared memory (docker run "
        f"--shm-size={-(-wanted // 2**30):.0f}g, or a larger {SHM_PATH}) or pass "
        "--dataloader_num_workers 0"
    )
