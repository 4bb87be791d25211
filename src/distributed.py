"""Every cross-process operation of the project, and the process group's life.

Under torchrun or accelerate the process group is set up by `TrainingArguments.device`
(through accelerate's PartialState); `process_group()` wraps an entry point so that it is
torn down on every exit path (success, user error, exception): without that, gloo's
threads can abort the interpreter at exit ("terminate called without an active
exception"). When one rank fails, torchrun stops the others with SIGTERM and kills them
30 s later (its grace period), so no rank waits for a dead peer longer than that.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
import torch.distributed as dist


def initialized() -> bool:
    return dist.is_available() and dist.is_initialized()


def world_size() -> int:
    return dist.get_world_size() if initialized() else 1


def rank() -> int:
    return dist.get_rank() if initialized() else 0


def is_main() -> bool:
    return rank() == 0


def barrier() -> None:
    """Wait for every process (no-op with one)."""
    if world_size() > 1:
        dist.barrier()


@contextlib.contextmanager
def process_group() -> Iterator[None]:
    """Run a block, then tear the process group down whatever happened."""
    try:
        yield
    finally:
        if initialized():
            dist.destroy_process_group()


@contextlib.contextmanager
def main_process_first() -> Iterator[None]:
    """Rank 0 runs the block first (e.g. a build other ranks then reuse); the others after it."""
    if not is_main():
        barrier()
    try:
        yield
    finally:
        if is_main():
            barrier()


def gather_objects(local: object) -> list:
    """Every process's `local`, in rank order (picklable objects)."""
    if world_size() == 1:
        return [local]
    parts = [None] * world_size()
    dist.all_gather_object(parts, local)
    return parts


def merge_dicts(local: dict) -> dict:
    """The union of every process's dict (the same on every process)."""
    return {key: value for part in gather_objects(local) for key, value in part.items()}


def any_process(flag: bool) -> bool:
    """True on every process if `flag` is true on any (a collective: call it on all)."""
    if world_size() == 1:
        return flag
    value = torch.tensor([1 if flag else 0])
    dist.all_reduce(value, op=dist.ReduceOp.MAX)
    return bool(value.item())


def broadcast_object(value: object) -> object:
    """Rank 0's `value`, on every process."""
    if world_size() == 1:
        return value
    holder = [value]
    dist.broadcast_object_list(holder, src=0)
    return holder[0]


def gather_with_local_grad(tensor: torch.Tensor) -> torch.Tensor:
    """Concatenate `tensor` from every process (rank order), rows may differ in number.

    Other processes' rows carry no gradient; this process's rows keep theirs. Every
    process then computes the same global loss, and DDP averages gradients over the
    processes, so the local rows' gradient is scaled by the world size here to turn that
    average into the gradient of the global loss (the loss value itself stays unscaled).
    """
    world = world_size()
    if world == 1:
        return tensor
    local_rows = torch.tensor([tensor.shape[0]], device=tensor.device)
    all_rows = [torch.zeros_like(local_rows) for _ in range(world)]
    dist.all_gather(all_rows, local_rows)
    max_rows = int(max(r.item() for r in all_rows))
    padded = torch.zeros((max_rows, *tensor.shape[1:]), dtype=tensor.dtype, device=tensor.device)
    padded[: tensor.shape[0]] = tensor.detach()
    gathered = [torch.zeros_like(padded) for _ in range(world)]
    dist.all_gather(gathered, padded)
    if tensor.requires_grad:
        tensor = tensor * 1.0
        tensor.register_hook(lambda grad: grad * world)
    parts = [g[: int(r.item())] for g, r in zip(gathered, all_rows, strict=True)]
    parts[rank()] = tensor
    return torch.cat(parts, dim=0)
