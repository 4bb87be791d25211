"""Deliberate CPU-tensor collectives in a process under the simulated NCCL harness.

Run by tests/test_distributed.py as `torchrun --nproc_per_node 2` with CIR_SIMULATED_NCCL=1:
this module is checked as src/distributed.py is (`simulated_nccl.check_module`), each
mistake is tried on every rank in the same order, and each rank writes which collectives
the harness refused to OUTPUT.rank<r>.json. A mistake that slipped through would run (gloo
takes it) and show as "ran".
"""

import json
import sys

import numpy as np
import simulated_nccl
import torch
import torch.distributed as dist

import src.distributed as distributed

simulated_nccl.check_module(sys.modules[__name__])  # `torch` here is now the harness's
output = sys.argv[1]
dist.init_process_group("gloo")
served = distributed.collective_device()

MISTAKES = {
    "no device": lambda: dist.all_reduce(torch.tensor([1.0])),
    'device="cpu"': lambda: dist.all_reduce(torch.tensor([1.0], device="cpu")),
    "torch.device('cpu')": lambda: dist.all_reduce(torch.ones(1, device=torch.device("cpu"))),
    "torch.from_numpy": lambda: dist.all_reduce(torch.from_numpy(np.ones(1))),
    "zeros_like of a CPU tensor": lambda: dist.all_reduce(torch.zeros_like(torch.from_numpy(np.ones(1)))),
    '.to("cpu")': lambda: dist.all_reduce(torch.ones(1, device=served).to("cpu")),
    ".cpu()": lambda: dist.all_reduce(torch.ones(1, device=served).cpu()),
    "a view of a CPU tensor": lambda: dist.all_reduce(torch.ones(4)[:2]),
    "all_gather into CPU tensors": lambda: dist.all_gather(
        [torch.zeros(1) for _ in range(2)], torch.ones(1, device=served)
    ),
    'broadcast_object_list(device="cpu")': lambda: dist.broadcast_object_list([1], src=0, device=torch.device("cpu")),
}
CORRECT = {
    "on collective_device()": lambda: dist.all_reduce(torch.ones(1, device=served)),
    "moved there": lambda: dist.all_reduce(torch.from_numpy(np.ones(1)).to(served)),
    "zeros_like of a served tensor": lambda: dist.all_reduce(torch.zeros_like(torch.ones(1, device=served))),
    "an object collective": lambda: dist.broadcast_object_list([1], src=0),
}


def outcome(attempt) -> str:
    try:
        attempt()
    except RuntimeError as error:
        return "refused" if simulated_nccl.NCCL_ERROR in str(error) else f"failed: {error}"
    return "ran"


results = {name: outcome(attempt) for name, attempt in {**MISTAKES, **CORRECT}.items()}
with open(f"{output}.rank{dist.get_rank()}.json", "w") as file:
    json.dump({"mistakes": list(MISTAKES), "results": results}, file)
dist.destroy_process_group()
