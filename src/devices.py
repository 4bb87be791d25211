"""Which device a process runs on, by one name rule: its dense bf16 peak and the throughputs
measured on it.

`device_key` turns the name the driver reports (torch.cuda.get_device_name) into the
model the data sheets and our measurements are filed under: an H100 is an SXM, PCIe or NVL
card, whose peaks differ, and names such as "NVIDIA H100 80GB HBM3" say which only
indirectly. An unknown name gets no key: no peak (no MFU) and no time estimate, said so.

Measured throughputs live in `throughput.json` beside this module (written by
benchmarks/gpu_check.py and benchmarks/real_shape_check.py, read by --plan), keyed by the
architecture's signature and the device key.
"""

from __future__ import annotations

import gc
import json
import re
from pathlib import Path

import psutil
import torch
from accelerate.utils.memory import clear_device_cache

THROUGHPUT_FILE = Path(__file__).with_name("throughput.json")

# (pattern over the reported name, key), first match wins: the more specific first.
_KEYS = (
    (r"H100.*NVL", "H100 NVL"),
    (r"H100.*PCIE", "H100 PCIe"),
    (r"H100", "H100 SXM"),  # "NVIDIA H100 80GB HBM3" is the SXM card
    (r"GH200", "GH200"),  # before H200, which its name contains
    (r"H200.*NVL", "H200 NVL"),
    (r"H200", "H200"),  # "NVIDIA H200" is the SXM card
    (r"H800.*PCIE", "H800 PCIe"),
    (r"H800", "H800 SXM"),
    (r"A100", "A100"),
    (r"A800", "A800"),
    (r"L40S", "L40S"),
    (r"\bL40\b", "L40"),
    (r"\bL4\b", "L4"),
    (r"A6000", "RTX A6000"),
    (r"\bA10\b", "A10"),
    (r"4090", "RTX 4090"),
)
# Dense bf16 tensor-core peaks (TFLOPS, without sparsity), from the vendors' data sheets.
PEAK_BF16_TFLOPS = {
    "H100 SXM": 989.4,
    "H100 PCIe": 756.5,
    "H100 NVL": 835.5,
    "H200": 989.4,
    "H200 NVL": 835.5,
    "GH200": 989.4,
    "H800 SXM": 989.4,
    "H800 PCIe": 756.5,
    "A100": 312.0,
    "A800": 312.0,
    "L40S": 362.1,
    "L40": 181.0,
    "L4": 121.0,
    "RTX A6000": 154.8,
    "A10": 125.0,
    "RTX 4090": 165.2,
}


# bfloat16 tensor cores: compute capability 8.0 (Ampere) and later. Earlier cards (V100 7.0,
# T4 7.5) run bfloat16 only through emulation, slower than float32, although
# torch.cuda.is_bf16_supported() says True there (its `including_emulation` default).
BF16_COMPUTE_CAPABILITY = (8, 0)


def bf16_capable(device: torch.device | str | None = None) -> bool:
    """Whether `device` (default: the current CUDA device) runs bfloat16 natively.

    Ask with the process's own device, after it is set (`torch.cuda.set_device`, done by
    accelerate from LOCAL_RANK): asking earlier, with no device, queries GPU 0 from every
    process. A CPU device, or no GPU at all: False.
    """
    if not torch.cuda.is_available():
        return False
    device = torch.device(device) if device is not None else torch.device("cuda", torch.cuda.current_device())
    if device.type != "cuda":
        return False
    return tuple(torch.cuda.get_device_capability(device)) >= BF16_COMPUTE_CAPABILITY


def device_name() -> str:
    """The name this process's device reports ("cpu" without a GPU)."""
    return torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"


def device_key(name: str) -> str | None:
    """The device model `name` is filed under; "cpu" for the CPU; None when unknown."""
    if name == "cpu":
        return "cpu"
    for pattern, key in _KEYS:
        if re.search(pattern, name, re.IGNORECASE):
            return key
    return None


def peak_bf16_tflops(name: str) -> float | None:
    """The dense bf16 peak of the device called `name` (None: unknown, so no MFU)."""
    key = device_key(name)
    return PEAK_BF16_TFLOPS.get(key) if key else None


def measured_throughput(signature: str, name: str) -> dict[str, float]:
    """Rates measured for an architecture on a device ({} when none was)."""
    key = device_key(name)
    if key is None or not THROUGHPUT_FILE.is_file():
        return {}
    return json.loads(THROUGHPUT_FILE.read_text()).get(signature, {}).get(key, {})


def record_throughput(signature: str, name: str, rates: dict[str, float], source: str) -> None:
    """File measured rates (`*_per_s`) under the architecture and the device (benchmarks)."""
    key = device_key(name)
    if key is None:
        return
    table = json.loads(THROUGHPUT_FILE.read_text()) if THROUGHPUT_FILE.is_file() else {}
    entry = table.setdefault(signature, {}).setdefault(key, {})
    entry.update(rates)
    entry["source"] = source
    THROUGHPUT_FILE.write_text(json.dumps(table, indent=1, sort_keys=True) + "\n")


def freeze_long_lived_objects() -> None:
    """Keep every object alive now out of later garbage collections (`gc.freeze`).

    Called where a process starts its work, when what is alive is mostly imported modules
    (half a million objects once torch and transformers are in). The stages collect garbage
    after each step (`release_device_memory`), so that a dropped model's reference cycles
    are gone before the next model loads; each full collection walked those long-lived
    objects again, about 0.25 s per collection on this project's 2-core machine, and a job
    collects after every stage. Frozen objects are still freed by reference counting; only
    the cycle collector skips them, so garbage is collected first.
    """
    gc.collect()
    gc.freeze()


def release_device_memory() -> None:
    """Collect unreachable objects (reference cycles included) and return the allocator's
    cached blocks to the device (accelerate's `clear_device_cache`)."""
    clear_device_cache(garbage_collection=True)


def memory_line() -> str:
    """What this process holds now: on a GPU, allocated / reserved / peak allocated since the
    last reset of the peak; on a CPU, the resident set."""
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        device = torch.cuda.current_device()
        gib = [torch.cuda.memory_allocated(device), torch.cuda.memory_reserved(device),
               torch.cuda.max_memory_allocated(device)]  # fmt: skip
        return "cuda:{} allocated {:.2f} GiB, reserved {:.2f} GiB, peak {:.2f} GiB".format(
            device, *(value / 2**30 for value in gib)
        )
    return f"cpu resident {psutil.Process().memory_info().rss / 2**30:.2f} GiB"
