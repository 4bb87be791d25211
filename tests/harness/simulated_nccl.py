"""NCCL's device rule, simulated on a CPU-only machine (installed by sitecustomize.py).

NCCL serves only the process's GPU: a collective on a CPU tensor fails with "No backend
type associated with device type cpu". Gloo serves the CPU, so on a machine without a GPU
that mistake cannot show. With CIR_SIMULATED_NCCL=1 set for a process started by a test,
the process runs as if its collectives went through NCCL:

- `collective_device()` (src/distributed.py) returns `SERVED`, one `torch.device("cpu")`
  object that stands for this process's GPU (the tensors really live on the CPU, for gloo);
  every other CPU device, and no device at all, means the CPU.
- In the checked modules (src/distributed.py, the one module that runs collectives, and any
  a test adds with `check_module`) a tensor is marked as on the CPU when it is made without
  a device or with a CPU device other than `SERVED` (the factories, `torch.from_numpy`,
  `torch.frombuffer`), made `*_like` from a CPU tensor without a device, or moved with
  `.to(cpu)` / `.cpu()`; `.to(SERVED)` moves it to the served device. A view of a marked
  tensor is marked through its base.
- Every tensor collective of torch.distributed refuses a marked tensor with NCCL's error;
  the object collectives refuse a CPU `device=` (under NCCL they place their buffers
  there). What the object collectives do without a device (the current CUDA device, which
  accelerate sets from LOCAL_RANK) cannot be simulated here.
- With CIR_SIMULATED_NCCL_REPORT=DIR, each process writes DIR/<pid>.json at exit: its rank
  and how many collectives the harness checked and refused, so a test can show it ran.

Tensors made elsewhere (the model's embeddings, which under NCCL live on the GPU) pass, so
correct code runs unchanged; a CPU tensor handed to a collective fails as it would on a
GPU node.
"""

from __future__ import annotations

import atexit
import functools
import json
import os
import sys
import types
import weakref

import torch
import torch.distributed as dist

COLLECTIVES = ("all_reduce", "all_gather", "all_gather_into_tensor", "broadcast", "reduce",
               "reduce_scatter", "reduce_scatter_tensor", "all_to_all", "all_to_all_single",
               "gather", "scatter", "send", "recv", "isend", "irecv")  # fmt: skip
# name -> the position of its `device` argument (None: it takes none)
OBJECT_COLLECTIVES = {"all_gather_object": None, "gather_object": None, "scatter_object_list": None,
                      "broadcast_object_list": 3, "send_object_list": 3, "recv_object_list": 3}  # fmt: skip
FACTORIES = ("tensor", "as_tensor", "zeros", "ones", "empty", "full", "arange", "rand", "randn",
             "randint", "eye", "linspace")  # fmt: skip
LIKE = ("zeros_like", "ones_like", "empty_like", "full_like", "rand_like", "randn_like", "randint_like")
HOST_SOURCES = ("from_numpy", "frombuffer")
NCCL_ERROR = "No backend type associated with device type cpu"

SERVED = torch.device("cpu")  # stands for this process's GPU: only collective_device() hands it out
CHECKED: set[str] = set()  # modules whose tensors are followed
COUNTS = {"tensor_collectives": 0, "object_collectives": 0, "refused": 0}
# id -> weak reference of each tensor marked as on the CPU (a WeakSet would compare
# tensors with ==, which is elementwise)
_on_cpu: dict[int, weakref.ref] = {}


def _cpu_device(device: object) -> bool:
    """Whether a `device=` argument means the CPU (None does: torch's default device)."""
    if device is None:
        return True
    if device is SERVED:
        return False
    if isinstance(device, torch.Tensor):
        return on_cpu(device)
    try:
        return torch.device(device).type == "cpu"
    except (TypeError, RuntimeError):
        return False


def _marked(tensor: torch.Tensor) -> bool:
    held = _on_cpu.get(id(tensor))
    return held is not None and held() is tensor


def on_cpu(tensor: torch.Tensor) -> bool:
    """Whether a tensor (or the tensor it views) is marked as on the CPU."""
    return _marked(tensor) or (tensor._base is not None and _marked(tensor._base))


def _mark(tensor: object, cpu: bool) -> object:
    if isinstance(tensor, torch.Tensor):
        key = id(tensor)
        if cpu:
            _on_cpu[key] = weakref.ref(tensor, lambda _, key=key: _on_cpu.pop(key, None))
        elif _marked(tensor):
            del _on_cpu[key]
    return tensor


def _refuse(name: str, what: str) -> None:
    COUNTS["refused"] += 1
    raise RuntimeError(f"{NCCL_ERROR} (simulated NCCL: torch.distributed.{name} got {what})")


def _checked_collective(name: str, collective):
    @functools.wraps(collective)
    def checked(*args, **kwargs):
        COUNTS["tensor_collectives"] += 1
        tensors = [a for a in (*args, *kwargs.values()) if isinstance(a, torch.Tensor)]
        for value in (*args, *kwargs.values()):
            if isinstance(value, (list, tuple)):
                tensors += [t for t in value if isinstance(t, torch.Tensor)]
        if any(on_cpu(t) for t in tensors):
            _refuse(name, "a tensor on the CPU")
        return collective(*args, **kwargs)

    return checked


def _checked_object_collective(name: str, collective, position: int | None):
    @functools.wraps(collective)
    def checked(*args, **kwargs):
        COUNTS["object_collectives"] += 1
        device = kwargs.get("device", args[position] if position is not None and len(args) > position else None)
        if position is not None and device is not None and _cpu_device(device):
            _refuse(name, f"device={device!r}")
        return collective(*args, **kwargs)

    return checked


def _factory(name: str):
    factory = getattr(torch, name)

    @functools.wraps(factory)
    def make(*args, device=None, **kwargs):
        return _mark(factory(*args, device=device, **kwargs), _cpu_device(device))

    return make


def _like(name: str):
    factory = getattr(torch, name)

    @functools.wraps(factory)
    def make(like, *args, device=None, **kwargs):
        cpu = on_cpu(like) if device is None else _cpu_device(device)
        return _mark(factory(like, *args, device=device, **kwargs), cpu)

    return make


def _host_source(name: str):
    source = getattr(torch, name)

    @functools.wraps(source)
    def make(*args, **kwargs):
        return _mark(source(*args, **kwargs), True)

    return make


def _target(args: tuple, kwargs: dict) -> object:
    """What `Tensor.to(...)` moves to: a device, a tensor (its device), or None (dtype only)."""
    if "device" in kwargs:
        return kwargs["device"]
    for value in args:
        if isinstance(value, (torch.device, str, int, torch.Tensor)):
            return value
    return None


def _moving(method, to_cpu: bool):
    @functools.wraps(method)
    def moved(self, *args, **kwargs):
        result = method(self, *args, **kwargs)
        if sys._getframe(1).f_globals.get("__name__") not in CHECKED:
            return result
        if to_cpu:
            return _mark(result, True)
        target = _target(args, kwargs)
        if target is None:  # a dtype change: stays where it was
            return _mark(result, on_cpu(self))
        return _mark(result, _cpu_device(target))

    return moved


def _shim() -> types.ModuleType:
    """`torch` as the checked modules see it: the same, with marking factories."""
    shim = types.ModuleType("torch")
    shim.__getattr__ = lambda attribute: getattr(torch, attribute)  # type: ignore[attr-defined]
    for name in FACTORIES:
        setattr(shim, name, _factory(name))
    for name in LIKE:
        setattr(shim, name, _like(name))
    for name in HOST_SOURCES:
        setattr(shim, name, _host_source(name))
    return shim


def check_module(module: types.ModuleType) -> None:
    """Follow the tensors `module` makes and moves (its `torch` becomes the shim)."""
    CHECKED.add(module.__name__)
    module.torch = _shim()


def _report() -> None:
    directory = os.environ.get("CIR_SIMULATED_NCCL_REPORT")
    if directory:
        record = {"rank": os.environ.get("RANK"), "pid": os.getpid(), **COUNTS}
        with open(os.path.join(directory, f"{os.getpid()}.json"), "w") as file:
            json.dump(record, file)


def install() -> None:
    import src.distributed

    for name in COLLECTIVES:
        if hasattr(dist, name):
            setattr(dist, name, _checked_collective(name, getattr(dist, name)))
    for name, position in OBJECT_COLLECTIVES.items():
        setattr(dist, name, _checked_object_collective(name, getattr(dist, name), position))
    torch.Tensor.to = _moving(torch.Tensor.to, to_cpu=False)
    torch.Tensor.cpu = _moving(torch.Tensor.cpu, to_cpu=True)
    real_collective_device = src.distributed.collective_device

    @functools.wraps(real_collective_device)
    def collective_device() -> torch.device:
        device = real_collective_device()
        return SERVED if device.type == "cpu" else device

    src.distributed.collective_device = collective_device
    check_module(src.distributed)
    atexit.register(_report)
