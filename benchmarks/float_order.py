"""Which settings change the float order of training on this machine? Bits, not opinions.

    python -m benchmarks.float_order      # -> benchmarks/results/float_order.json

Trains a two-layer MLP (384 -> 1,536 -> 384, AdamW, 50 steps, fixed seed and data) in a
fresh process per setting and compares the final weights bit for bit with the baseline
(one thread, no variable set): a setting that changes nothing gives the same digest. The
ablations once varied float order per replicate with `MKL_CBWR=AVX2`; this is the
measurement that showed it changes nothing here (docs/results.md, "How far numbers move").
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import subprocess
import sys
from pathlib import Path

SETTINGS = {
    "baseline (1 thread)": ({}, 1),
    "MKL_CBWR=AVX2": ({"MKL_CBWR": "AVX2"}, 1),
    "MKL_CBWR=COMPATIBLE": ({"MKL_CBWR": "COMPATIBLE"}, 1),
    "ONEDNN_MAX_CPU_ISA=AVX2": ({"ONEDNN_MAX_CPU_ISA": "AVX2"}, 1),
    "2 threads": ({}, 2),
    "baseline again": ({}, 1),
}
VARIABLES = ("MKL_CBWR", "ONEDNN_MAX_CPU_ISA")


def train_digest(threads: int) -> str:
    """The SHA-256 of the MLP's weights after 50 AdamW steps (run in its own process)."""
    import torch

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(384, 1536), torch.nn.GELU(), torch.nn.Linear(1536, 384))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    data = torch.randn(256, 384, generator=torch.Generator().manual_seed(1))
    for _ in range(50):
        optimizer.zero_grad()
        loss = (model(data) - data.roll(1, dims=1)).pow(2).mean()
        loss.backward()
        optimizer.step()
    weights = b"".join(p.detach().numpy().tobytes() for p in model.parameters())
    return hashlib.sha256(weights).hexdigest()


def run(environment: dict[str, str], threads: int) -> str:
    env = {k: v for k, v in os.environ.items() if k not in VARIABLES} | environment
    code = f"from benchmarks.float_order import train_digest; print(train_digest({threads}))"
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    return done.stdout.strip().splitlines()[-1]


def main() -> dict:
    import torch

    digests = {name: run(environment, threads) for name, (environment, threads) in SETTINGS.items()}
    baseline = digests["baseline (1 thread)"]
    payload = {
        "command": "python -m benchmarks.float_order",
        "machine": {"cpu": platform.processor() or platform.machine(), "torch": torch.__version__,
                    "cpu_capability": torch.backends.cpu.get_cpu_capability()},  # fmt: skip
        "digests": digests,
        "changes_the_bits": {name: digest != baseline for name, digest in digests.items()},
    }
    output = Path("benchmarks/results/float_order.json")
    output.write_text(json.dumps(payload, indent=1))
    print(json.dumps(payload["changes_the_bits"], indent=1))
    return payload


if __name__ == "__main__":
    main()
