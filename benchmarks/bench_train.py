"""Training speed and memory of IterativeTrainer.

(a) Step time of IterativeTrainer against a bare PyTorch loop doing the same forward,
    loss, backward and AdamW step on the same model and the same batch (target: at most
    1.10 times the bare loop). Both take a batch that is already collated, so the figure
    is the Trainer's own overhead.
(b) Peak memory of one cached (GradCache) step at contrastive batch 32, 128 and 512 with
    mini-batch 32 (target: the 512 run's peak at most 1.3 times the 32 run's). On a GPU this
    is torch.cuda.max_memory_allocated; on the CPU, the growth of the process's resident
    memory during the step over its level just before (sampled every millisecond), each
    size in a fresh process. Without GradCache the 512 step is shown for comparison.

    python -m benchmarks.bench_train --output benchmarks/results/train.json
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil
import torch
from PIL import Image
from transformers import TrainerCallback

from benchmarks import listed_integers, parse_options
from src.arguments import (
    DataArguments,
    IterativeTrainingArguments,
    check_flags,
    default_training_arguments,
    flag,
    flag_of,
)
from src.data.collator import ContrastiveCollator
from src.loss import ContrastiveBatch, contrastive_loss
from src.model.encoder import build_encoder
from src.offline.tiny import build_tiny_checkpoint
from src.trainer_iterative import IterativeTrainer

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")


def synchronize() -> None:
    """Wait for the GPU's queued work: every timer reads the clock after this, at both ends."""
    if DEVICE.type == "cuda":
        torch.cuda.synchronize()


def features(batch_size: int, num_negatives: int, image_size: int) -> list[dict]:
    """Distinct synthetic images: one reference, one target and the negatives per query."""

    def image(i: int) -> Image.Image:
        return Image.new(
            "RGB", (image_size, image_size), ((37 * i) % 256, (91 * i) % 256, (53 * i) % 256)
        )

    items = []
    for q in range(batch_size):
        base = q * (2 + num_negatives)
        items.append(
            {
                "reference": image(base),
                "caption": f"add a small red circle at the top left {q % 7}",
                "target": image(base + 1),
                "negatives": [image(base + 2 + j) for j in range(num_negatives)],
                "target_id": base + 1,
                "negative_ids": [base + 2 + j for j in range(num_negatives)],
                "group_id": base,
                "query_id": q,
            }
        )
    return items


class _StepTimer(TrainerCallback):
    def __init__(self):
        self.times: list[float] = []

    def on_step_begin(self, args, state, control, **kwargs):
        synchronize()
        self.start = time.perf_counter()

    def on_step_end(self, args, state, control, **kwargs):
        synchronize()
        self.times.append(time.perf_counter() - self.start)


def bare_loop_step_times(model_dir: Path, batch: dict, steps: int, lr: float) -> list[float]:
    torch.manual_seed(0)
    encoder = build_encoder(model_dir, dtype="float32").to(DEVICE).train()
    optimizer = torch.optim.AdamW([p for p in encoder.parameters() if p.requires_grad], lr=lr)
    inputs = {
        "query_chunks": [c.to(DEVICE) for c in batch["query_chunks"]],
        "candidate_chunks": [c.to(DEVICE) for c in batch["candidate_chunks"]],
        **{k: batch[k].to(DEVICE) for k in ("positive_ids", "negative_ids", "group_ids")},
    }
    times = []
    for _ in range(steps):
        synchronize()
        start = time.perf_counter()
        queries = torch.cat([encoder(**c) for c in inputs["query_chunks"]])
        candidates = torch.cat([encoder(**c) for c in inputs["candidate_chunks"]])
        n = inputs["positive_ids"].shape[0]
        loss = contrastive_loss(
            ContrastiveBatch(
                queries,
                candidates[:n],
                candidates[n:],
                inputs["positive_ids"],
                inputs["negative_ids"],
                inputs["group_ids"],
            ),
            temperature=0.02,
        )
        loss.backward()
        torch.nn.utils.clip_grad_norm_(encoder.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad()
        synchronize()
        times.append(time.perf_counter() - start)
    return times


def trainer_step_times(
    model_dir: Path, batch: dict, steps: int, lr: float, grad_cache: bool = False
) -> list[float]:
    torch.manual_seed(0)
    encoder = build_encoder(model_dir, dtype="float32")
    timer = _StepTimer()
    with tempfile.TemporaryDirectory() as output:
        args = IterativeTrainingArguments(
            output_dir=output,
            report_to="none",
            remove_unused_columns=False,
            per_device_train_batch_size=1,
            max_steps=steps,
            learning_rate=lr,
            lr_scheduler_type="constant",
            save_strategy="no",
            logging_strategy="no",
            dataloader_num_workers=0,
            dataloader_pin_memory=False,
            disable_tqdm=True,
            use_cpu=DEVICE.type == "cpu",
            temperature=0.02,
            grad_cache=grad_cache,
        )
        trainer = IterativeTrainer(
            model=encoder,
            args=args,
            train_dataset=list(range(steps)),
            data_collator=lambda _: batch,
            callbacks=[timer],
        )
        trainer.train()
    return timer.times


def peak_memory_of_step(
    model_dir: Path, batch_size: int, mini_batch: int, grad_cache: bool, image_size: int
) -> dict:
    """One cached (or plain) training step; the peak memory it adds over what was there before."""
    torch.manual_seed(0)
    encoder = build_encoder(model_dir, dtype="float32")
    collator = ContrastiveCollator(
        encoder.processor, encoder.backbone, chunk_size=mini_batch if grad_cache else None
    )
    batch = collator(features(batch_size, 1, image_size))
    process = psutil.Process()
    before = process.memory_info().rss
    peak = [before]
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            peak[0] = max(peak[0], process.memory_info().rss)
            time.sleep(0.001)

    if DEVICE.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    trainer_step_times(model_dir, batch, steps=1, lr=1e-4, grad_cache=grad_cache)
    done.set()
    sampler.join()
    result = {"contrastive_batch": batch_size, "mini_batch": mini_batch if grad_cache else None}
    if DEVICE.type == "cuda":
        result["peak_gpu_bytes"] = torch.cuda.max_memory_allocated()
    result["peak_rss_growth_bytes"] = peak[0] - before
    return result


@dataclasses.dataclass
class TrainOptions:
    output: str = flag("benchmarks/results/train.json", "The JSON's path.", results=False)
    image_size: int = flag_of(DataArguments, "image_size", default=112)
    batch_size: int = flag_of(
        IterativeTrainingArguments, "batch_size", default=default_training_arguments()["per_device_train_batch_size"]
    )
    steps: int = flag(20, "Timed steps of each arm per run (two runs each, alternating).", at_least=1)
    warmup: int = flag(3, "Steps before the timed ones.", at_least=0)
    memory_sizes: str = flag("32,128,512", "Comma-separated contrastive batches of (b); the largest also without GradCache.")
    mini_batch: int = flag_of(IterativeTrainingArguments, "gc_mini_batch_size")
    # (b)'s child process: one step at SIZE:CACHED (1: GradCache) on the model in _model_dir
    _memory_probe: str | None = flag(None, argparse.SUPPRESS, results=False)
    _model_dir: str | None = flag(None, argparse.SUPPRESS, results=False)

    def __post_init__(self) -> None:
        check_flags(self)
        listed_integers("memory_sizes", self.memory_sizes, at_least=1)


def main(argv: list[str] | None = None) -> None:
    args = parse_options(TrainOptions, argv, __doc__.split("\n\n")[0])

    if args._memory_probe:
        size, cached = args._memory_probe.split(":")
        result = peak_memory_of_step(
            Path(args._model_dir), int(size), args.mini_batch, cached == "1", args.image_size
        )
        print(json.dumps(result))
        return

    with tempfile.TemporaryDirectory() as workdir:
        model_dir = build_tiny_checkpoint(
            "qwen2_vl", Path(workdir) / "tiny", image_size=args.image_size
        )
        encoder = build_encoder(model_dir, dtype="float32")
        batch = ContrastiveCollator(encoder.processor, encoder.backbone)(
            features(args.batch_size, 1, args.image_size)
        )
        total = args.warmup + args.steps
        bare, trainer = [], []
        for _ in range(2):  # alternate to spread any drift of the machine over both
            bare += bare_loop_step_times(model_dir, batch, total, 1e-4)[args.warmup :]
            trainer += trainer_step_times(model_dir, batch, total, 1e-4)[args.warmup :]
        memory = []
        memory_sizes = listed_integers("memory_sizes", args.memory_sizes, at_least=1)
        for size in memory_sizes:
            for cached in ("1",) + (("0",) if size == max(memory_sizes) else ()):
                completed = subprocess.run(
                    [sys.executable, "-m", "benchmarks.bench_train", "--_memory_probe", f"{size}:{cached}",
                     "--_model_dir", str(model_dir), "--mini_batch", str(args.mini_batch),
                     "--image_size", str(args.image_size)],
                    capture_output=True, text=True, check=True, cwd=Path(__file__).resolve().parents[1],
                )  # fmt: skip
                memory.append(
                    json.loads(completed.stdout.strip().splitlines()[-1])
                    | {"grad_cache": cached == "1"}
                )
    cached_runs = {m["contrastive_batch"]: m for m in memory if m["grad_cache"]}
    key = "peak_gpu_bytes" if DEVICE.type == "cuda" else "peak_rss_growth_bytes"
    sizes = sorted(cached_runs)
    result = {
        "device": str(DEVICE),
        "torch_threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "image_size": args.image_size,
        "batch_size": args.batch_size,
        "hard_negatives_per_query": 1,
        "step_time": {
            "bare_loop_median_s": statistics.median(bare),
            "trainer_median_s": statistics.median(trainer),
            "ratio_trainer_over_bare": statistics.median(trainer) / statistics.median(bare),
            "steps_measured_each": len(bare),
            "target_ratio_at_most": 1.10,
        },
        "grad_cache_memory": {
            "measure": key,
            "runs": memory,
            "ratio_largest_over_smallest": cached_runs[sizes[-1]][key] / cached_runs[sizes[0]][key],
            "target_ratio_at_most": 1.3,
        },
    }
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output).write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
