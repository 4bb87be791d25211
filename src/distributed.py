"""Cross-process helpers: gathering embeddings with local gradients kept."""

from __future__ import annotations

import torch
import torch.distributed as dist


def world_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def rank() -> int:
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


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


def barrier() -> None:
    """Wait for every process (no-op with one)."""
    if world_size() > 1:
        dist.barrier()
