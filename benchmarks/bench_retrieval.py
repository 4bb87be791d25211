"""Retrieval speed: the encoding pipeline and exact search.

(a) Encoding throughput of `encode_rows` (DataLoader workers load and preprocess images
    while the model runs; a tqdm bar) against a bare loop of the model's forward over
    already-preprocessed tensors of the same batches (target: at least 0.90 of the bare
    loop's items/s). Gallery images and composed queries of the synthetic benchmark, tiny
    Qwen2-VL. The overlap can only hide preprocessing on a core the forward does not use:
    run it once with the defaults and once with `--torch_threads 1 --workers 1`.
(b) Search over 20,000 queries and 20,000 gallery embeddings of dimension 1,536 against
    the single matrix product of the same sizes in the same run (target: at most 1.3 times
    the matrix product), with peak memory: benchmarks/bench_search.py, run from here.

    python -m benchmarks.bench_retrieval --output benchmarks/results/retrieval.json
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from benchmarks import parse_options
from src.arguments import DataArguments, EncodeArguments, check_flags, flag, flag_of
from src.data.loading import load_split
from src.model.encoder import build_encoder
from src.offline.synthetic.benchmark import build_synthetic_benchmark
from src.offline.tiny import build_tiny_checkpoint
from src.retrieval.encode import (
    EncodingRows,
    PackRows,
    RowDataset,
    encode_rows,
    gallery_rows,
    query_rows,
)


@dataclasses.dataclass
class RetrievalOptions:
    output: str = flag("benchmarks/results/retrieval.json", "The JSON's path.", results=False)
    image_size: int = flag_of(DataArguments, "image_size", default=112)
    num_images: int = flag(1200, "Validation gallery size.", at_least=6)
    batch_size: int = flag_of(EncodeArguments, "encode_batch_size")
    workers: int = flag(2, "DataLoader workers of the encoding pipeline.", at_least=0)
    torch_threads: int | None = flag(
        None,
        "Threads of the model's forward (default: torch's); with 2 cores, 1 thread and 1 "
        "worker leaves the worker a core of its own.",
        at_least=1,
    )
    repeats: int = flag(3, "Timed runs of each arm, the arms alternating.", at_least=1)
    skip_search: bool = flag(False, "Only the encoding part.")

    def __post_init__(self) -> None:
        check_flags(self)


def bare_forward_items_per_second(encoder, rows: EncodingRows, batch_size: int) -> float:
    """The model's forward alone, over batches preprocessed beforehand (not timed)."""
    pack = PackRows(encoder.processor, encoder.backbone)
    dataset = RowDataset(rows, list(range(len(rows.names))))
    batches = [
        pack([dataset[i] for i in range(start, min(start + batch_size, len(dataset)))])[1]
        for start in range(0, len(dataset), batch_size)
    ]
    encoder.eval()
    start = time.perf_counter()
    with torch.no_grad():
        for batch in batches:
            encoder(**batch)
    return len(rows.names) / (time.perf_counter() - start)


def pipeline_items_per_second(encoder, rows: EncodingRows, batch_size: int, workers: int) -> float:
    start = time.perf_counter()
    encode_rows(encoder, rows, batch_size=batch_size, num_workers=workers)
    return len(rows.names) / (time.perf_counter() - start)


def encoding_benchmark(args: RetrievalOptions, workdir: Path) -> dict:
    model_dir = build_tiny_checkpoint("qwen2_vl", workdir / "tiny", image_size=args.image_size)
    bench = build_synthetic_benchmark(
        workdir / "bench", num_train_images=60, num_val_images=args.num_images, num_test_images=6,
        image_size=args.image_size,
    )  # fmt: skip
    split = load_split("cirr", bench, "val")
    encoder = build_encoder(model_dir, dtype="float32")
    kinds = {
        "gallery": gallery_rows(split, encoder.backbone.image_token),
        "queries": query_rows(split, split.triplets, encoder.backbone.image_token, "cirr"),
    }
    results = {}
    for kind, rows in kinds.items():
        pipeline_items_per_second(encoder, rows, args.batch_size, args.workers)  # warm-up
        bare, pipeline = [], []
        for _ in range(args.repeats):  # alternate so that drift affects both alike
            bare.append(bare_forward_items_per_second(encoder, rows, args.batch_size))
            pipeline.append(pipeline_items_per_second(encoder, rows, args.batch_size, args.workers))
        results[kind] = {
            "items": len(rows.names),
            "bare_forward_items_per_s": max(bare),
            "pipeline_items_per_s": max(pipeline),
            "ratio_pipeline_over_bare": max(pipeline) / max(bare),
        }
    return {
        "image_size": args.image_size,
        "batch_size": args.batch_size,
        "dataloader_workers": args.workers,
        "torch_threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "measured": "items/s, best of --repeats; the bare loop excludes image loading and preprocessing",
        "target_ratio_at_least": 0.90,
        **results,
    }


def main(argv: list[str] | None = None) -> None:
    args = parse_options(RetrievalOptions, argv, __doc__.split("\n\n")[0])
    if args.torch_threads:
        torch.set_num_threads(args.torch_threads)
    with tempfile.TemporaryDirectory() as workdir:
        result = {"encoding": encoding_benchmark(args, Path(workdir))}
        if not args.skip_search:
            search_json = Path(workdir) / "search.json"
            subprocess.run(
                [sys.executable, "-m", "benchmarks.bench_search", "--output", str(search_json)],
                check=True,
                cwd=Path(__file__).resolve().parents[1],
            )
            result["search"] = json.loads(search_json.read_text())
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output).write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
