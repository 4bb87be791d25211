"""Benchmark exact top-k search against one plain matrix product of the same size (CPU).

    python -m benchmarks.bench_search [--num_queries 20000 --num_gallery 20000 --dim 1536
        --k 50 --chunk_size 256 1024 --repeats 3 --output benchmarks/results/search.json]

Random L2-normalised float32 embeddings (seeded). Three methods, every call in its own
fresh process with the embeddings already in memory, the methods taken in turn:

- matmul: ``queries @ gallery.T`` in torch, the whole (Q, G) score matrix at once;
- search_torch: ``search_topk(..., backend="torch", device="cpu")`` for each chunk size;
- search_faiss: ``search_topk(..., backend="faiss")``.

Time: best wall-clock of ``--repeats`` calls, and best process CPU time (all threads),
which other programs competing for the cores disturb less. Memory: the process's peak resident set
(Linux VmHWM, reset through /proc/self/clear_refs just before the call) minus its
resident set at that moment, i.e. the extra memory a call needs at its peak, in MiB (the
largest over the repeats).
The target is search_torch / matmul <= 1.3. The JSON also records the fraction of queries
whose faiss top-k equals torch's and the largest score difference between them.
"""

from __future__ import annotations

import dataclasses
import inspect
import json
import multiprocessing as mp
import os
import platform
import time
from pathlib import Path

import numpy as np
import torch

from benchmarks import parse_options
from src.arguments import check_flags, flag
from src.retrieval.search import search_topk

TARGET_RATIO = 1.3
DEFAULT_CHUNK = inspect.signature(search_topk).parameters["chunk_size"].default


@dataclasses.dataclass
class SearchOptions:
    num_queries: int = flag(20000, "Random query embeddings.", at_least=1)
    num_gallery: int = flag(20000, "Random gallery embeddings.", at_least=1)
    dim: int = flag(1536, "Embedding dimension.", at_least=1)
    k: int = flag(50, "Neighbours each query keeps.", at_least=1)
    chunk_size: list[int] | None = flag(
        None, f"One or more chunk sizes for search_torch (default: search_topk's, {DEFAULT_CHUNK}).", at_least=1
    )
    repeats: int = flag(3, "Timed calls per method; best kept.", at_least=1)
    seed: int = flag(0, "Seed of the random embeddings.")
    output: str = flag("benchmarks/results/search.json", "The JSON's path.", results=False)

    def __post_init__(self) -> None:
        check_flags(self)


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


def measure(args: SearchOptions, method: str, chunk_size: int) -> dict:
    """Time one call of ``method`` in this (fresh) process and its peak extra memory."""
    rng = np.random.default_rng(args.seed)
    queries = _embeddings(args.num_queries, args.dim, rng)
    gallery = _embeddings(args.num_gallery, args.dim, rng)
    q, g = torch.from_numpy(queries), torch.from_numpy(gallery)

    def call(num_queries: int) -> tuple[np.ndarray, np.ndarray] | None:
        if method == "matmul":
            _ = q[:num_queries] @ g.T
            return None
        return search_topk(
            queries[:num_queries],
            gallery,
            args.k,
            chunk_size=chunk_size,
            device="cpu",
            backend=method.removeprefix("search_"),
        )

    call(8)  # warm-up: thread pools, lazy initialisation
    base_kib = _status_kib("VmRSS")
    with open("/proc/self/clear_refs", "w") as clear_refs:
        clear_refs.write("5")  # resets VmHWM to the current RSS
    start, start_cpu = time.perf_counter(), time.process_time()
    found = call(args.num_queries)
    seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - start_cpu
    return {
        "seconds": seconds,
        "cpu_seconds": cpu_seconds,
        "peak_extra_mib": (_status_kib("VmHWM") - base_kib) / 1024,
        "found": found,
    }


def in_fresh_process(args: SearchOptions, method: str, chunk_size: int) -> dict:
    with mp.get_context("spawn").Pool(1) as pool:
        return pool.apply(measure, (args, method, chunk_size))


def main(argv: list[str] | None = None) -> None:
    args = parse_options(SearchOptions, argv, __doc__.split("\n")[0])
    chunk_sizes = args.chunk_size or [DEFAULT_CHUNK]

    import faiss

    methods = [("matmul", 0)]
    methods += [("search_torch", chunk_size) for chunk_size in chunk_sizes]
    methods += [("search_faiss", chunk_sizes[0])]
    runs: dict[tuple[str, int], dict] = {
        m: {"times_s": [], "cpu_times_s": [], "peak_extra_mib": 0.0} for m in methods
    }
    found = {}
    # Round-robin, so that a drifting machine load affects every method alike.
    for _ in range(args.repeats):
        for method, chunk_size in methods:
            call = in_fresh_process(args, method, chunk_size)
            run = runs[method, chunk_size]
            run["times_s"].append(call["seconds"])
            run["cpu_times_s"].append(call["cpu_seconds"])
            run["peak_extra_mib"] = max(run["peak_extra_mib"], call["peak_extra_mib"])
            found[method] = call["found"]
    for run in runs.values():
        run["best_s"], run["best_cpu_s"] = min(run["times_s"]), min(run["cpu_times_s"])
    matmul = runs["matmul", 0]
    for (method, _), run in runs.items():
        if method != "matmul":
            run["ratio_to_matmul"] = run["best_s"] / matmul["best_s"]
            run["cpu_ratio_to_matmul"] = run["best_cpu_s"] / matmul["best_cpu_s"]
    torch_runs = {str(c): runs["search_torch", c] for c in chunk_sizes}
    faiss_run = runs["search_faiss", chunk_sizes[0]]
    (torch_scores, torch_indices), (faiss_scores, faiss_indices) = (
        found["search_torch"],
        found["search_faiss"],
    )
    # Both are exact, but faiss and torch round the dot products differently (~1e-7), which
    # can swap two near-tied neighbours.
    faiss_run["rows_identical_to_torch"] = float(
        np.mean((faiss_indices == torch_indices).all(axis=1))
    )
    faiss_run["max_abs_score_diff_to_torch"] = float(np.abs(faiss_scores - torch_scores).max())

    default_run = torch_runs.get(str(DEFAULT_CHUNK))
    result = {
        "config": {
            key: value for key, value in dataclasses.asdict(args).items() if key not in ("output", "chunk_size")
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
            "time: best wall-clock (and best process CPU time, all threads) of `repeats` "
            "calls, each in a fresh process with the embeddings loaded, methods in turn; "
            "peak_extra_mib: peak RSS during a call minus RSS before it (VmHWM reset via "
            "/proc/self/clear_refs), largest over the calls"
        ),
        "matmul": matmul,
        "search_torch": torch_runs,
        "search_faiss": faiss_run,
        "target_ratio": TARGET_RATIO,
        "default_chunk_size": DEFAULT_CHUNK,
        "default_meets_target": None
        if default_run is None
        else {
            "wall": default_run["ratio_to_matmul"] <= TARGET_RATIO,
            "cpu": default_run["cpu_ratio_to_matmul"] <= TARGET_RATIO,
        },
    }
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
