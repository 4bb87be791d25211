"""NCCL's device rule, simulated on a CPU-only machine (installed by sitecustomize.py).

NCCL serves only the process's GPU: a collective on a tensor made without a device (which
lands on the CPU) fails with "No backend type associated with device type cpu". Gloo
serves the CPU, so on a machine without a GPU that mistake cannot show. With
CIR_SIMULATED_NCCL=1 set for a process started by a test:

- inside src/distributed.py (the one module that runs collectives), a tensor made without
  an explicit `device=` is a `DefaultDeviceTensor`: it stands for a tensor on the default
  device, which NCCL would not serve; so is anything computed from it, until `.to(device)`
  moves it (then it is a plain tensor, as if on the served device);
- every collective of torch.distributed refuses a `DefaultDeviceTensor` with NCCL's error.

Tensors made elsewhere (the model's embeddings, which under NCCL live on the GPU) and
tensors placed with `device=collective_device()` pass, so correct code runs unchanged.
"""

from __future__ import annotations

import functools
import types

import torch
import torch.distributed as dist

COLLECTIVES = ("all_reduce", "all_gather", "all_gather_into_tensor", "broadcast", "reduce",
               "reduce_scatter", "reduce_scatter_tensor", "all_to_all", "gather", "scatter")  # fmt: skip
FACTORIES = ("tensor", "as_tensor", "zeros", "ones", "empty", "full", "arange")


class DefaultDeviceTensor(torch.Tensor):
    """A tensor on the default device, which the simulated backend does not serve."""

    def to(self, *args, **kwargs):
        result = super().to(*args, **kwargs)
        moved = "device" in kwargs or any(isinstance(a, (torch.device, str, int)) for a in args)
        return result.as_subclass(torch.Tensor) if moved else result


def _refuse_default_device(name: str, collective):
    @functools.wraps(collective)
    def checked(*args, **kwargs):
        tensors = [a for a in (*args, *kwargs.values()) if isinstance(a, torch.Tensor)]
        tensors += [t for a in args if isinstance(a, list) for t in a if isinstance(t, torch.Tensor)]
        if any(isinstance(t, DefaultDeviceTensor) for t in tensors):
            raise RuntimeError(
                f"No backend type associated with device type cpu (simulated NCCL: "
                f"torch.distributed.{name} got a tensor made without a device)"
            )
        return collective(*args, **kwargs)

    return checked


def _placing_factory(name: str):
    factory = getattr(torch, name)

    @functools.wraps(factory)
    def make(*args, device=None, **kwargs):
        result = factory(*args, device=device, **kwargs)
        return result if device is not None else result.as_subclass(DefaultDeviceTensor)

    return make


def install() -> None:
    import src.distributed

    for name in COLLECTIVES:
        setattr(dist, name, _refuse_default_device(name, getattr(dist, name)))
    shim = types.ModuleType("torch")
    shim.__getattr__ = lambda attribute: getattr(torch, attribute)  # type: ignore[attr-defined]
    for name in FACTORIES:
        setattr(shim, name, _placing_factory(name))
    src.distributed.torch = shim
