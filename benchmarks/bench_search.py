"""Benchmark exact top-k search against one plain matrix product of the same size (CPU).

    python benchmarks/bench_search.py [--num_queries 20000 --num_gallery 20000 --dim 1536
        --k 50 --chunk_size 256 1024 --repeats 3 --output benchmarks/results/search.json]

Random L2-normalised float32 embeddings (seeded). Three methods, each in its own fresh
process with the embeddings already in memory:

- matmul: ``queries @ gallery.T`` in torch, the whole (Q, G) score matrix at once;
- search_torch: ``search_topk(..., backend="torch", device="cpu")`` for each chunk size;
- search_faiss: ``search_topk(..., backend="faiss")``.

Time: best wall-clock of ``--repeats`` calls. Memory: the process's peak resident set
(Linux VmHWM, reset through /proc/self/clear_refs just before the first call) minus its
resident set at that moment, i.e. the extra memory a call needs at its peak, in MiB.
The target is search_torch / matmul <= 1.3. The JSON also records the fraction of queries
whose faiss top-k equals torch's and the largest score difference between them.
"""

from __future__ import annotations

import argparse
import inspect
import json
import multiprocessing as mp
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

TARGET_RATIO = 1.3


def _status_kib(field: str) -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{field} missing from /proc/self/status")


def _embeddings(num: int, dim: int, rng: np.random.Generator) -> np.ndarray:
    x = rng.standard_normal((num, dim), dtype=np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x


def measure(args: argparse.Namespace, method: str, chunk_size: int) -> dict:
    """Run one method ``args.repeats`` times in this (fresh) process; time and peak memory."""
    import torch

    from src.retrieval.search import search_topk

    rng = np.random.default_rng(args.seed)
    queries = _embeddings(args.num_queries, args.dim, rng)
    gallery = _embeddings(args.num_gallery, args.dim, rng)
    if method == "matmul":
        q, g = torch.from_numpy(queries), torch.from_numpy(gallery)

        def call() -> tuple[np.ndarray, np.ndarray] | None:
            _ = q @ g.T
            return None
    else:
        backend = method.removeprefix("search_")

        def call() -> tuple[np.ndarray, np.ndarray] | None:
            return search_topk(
                queries, gallery, args.k, chunk_size=chunk_size, device="cpu", backend=backend
            )

    base_kib = _status_kib("VmRSS")
    with open("/proc/self/clear_refs", "w") as clear_refs:
        clear_refs.write("5")  # resets VmHWM to the current RSS
    times = []
    for _ in range(args.repeats):
        start = time.perf_counter()
        found = call()
        times.append(time.perf_counter() - start)
    return {
        "best_s": min(times),
        "times_s": times,
        "peak_extra_mib": (_status_kib("VmHWM") - base_kib) / 1024,
        "found": found,
    }


def in_fresh_process(args: argparse.Namespace, method: str, chunk_size: int = 0) -> dict:
    with mp.get_context("spawn").Pool(1) as pool:
        return pool.apply(measure, (args, method, chunk_size))


def main() -> None:
    from src.retrieval.search import search_topk

    default_chunk = inspect.signature(search_topk).parameters["chunk_size"].default
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--num_queries", type=int, default=20000)
    parser.add_argument("--num_gallery", type=int, default=20000)
    parser.add_argument("--dim", type=int, default=1536)
    parser.add_argument("--k", type=int, default=50)
    parser.add_argument(
        "--chunk_size",
        type=int,
        nargs="+",
        default=[default_chunk],
        help=f"one or more chunk sizes for search_torch (default: search_topk's, {default_chunk})",
    )
    parser.add_argument("--repeats", type=int, default=3, help="timed calls per method; best kept")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output", type=Path, default=Path("benchmarks/results/search.json"))
    args = parser.parse_args()

    import faiss
    import torch

    matmul = in_fresh_process(args, "matmul")
    matmul.pop("found")
    torch_runs = {}
    for chunk_size in args.chunk_size:
        run = in_fresh_process(args, "search_torch", chunk_size)
        torch_scores, torch_indices = run.pop("found")
        run["ratio_to_matmul"] = run["best_s"] / matmul["best_s"]
        torch_runs[str(chunk_size)] = run
    faiss_run = in_fresh_process(args, "search_faiss", args.chunk_size[0])
    faiss_run["ratio_to_matmul"] = faiss_run["best_s"] / matmul["best_s"]
    faiss_scores, faiss_indices = faiss_run.pop("found")
    # Both are exact, but faiss and torch round the dot products differently (~1e-7), which
    # can swap two near-tied neighbours.
    faiss_run["rows_identical_to_torch"] = float(
        np.mean((faiss_indices == torch_indices).all(axis=1))
    )
    faiss_run["max_abs_score_diff_to_torch"] = float(np.abs(faiss_scores - torch_scores).max())

    default_run = torch_runs.get(str(default_chunk))
    result = {
        "config": {
            key: value for key, value in vars(args).items() if key not in ("output", "chunk_size")
        },
        "machine": {
            "cpu_count": os.cpu_count(),
            "torch_threads": torch.get_num_threads(),
            "faiss_threads": faiss.omp_get_max_threads(),
            "torch": torch.__version__,
            "faiss": faiss.__version__,
            "python": platform.python_version(),
        },
        "measured": (
            "time: best wall-clock of `repeats` calls; peak_extra_mib: peak RSS during the calls "
            "minus RSS before them (VmHWM reset via /proc/self/clear_refs), each method in a "
            "fresh process with the embeddings already loaded"
        ),
        "matmul": matmul,
        "search_torch": torch_runs,
        "search_faiss": faiss_run,
        "target_ratio": TARGET_RATIO,
        "default_chunk_size": default_chunk,
        "default_meets_target": (
            None if default_run is None else default_run["ratio_to_matmul"] <= TARGET_RATIO
        ),
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
