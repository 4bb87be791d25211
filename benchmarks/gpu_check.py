"""The GPU check: the real-size paths measured on one CUDA device, in one command.

    bash benchmarks/gpu_check.sh              # CUDA: the Qwen2-VL-2B shape in bf16 with SDPA
    bash benchmarks/gpu_check.sh --cpu        # the same code on tiny shapes: a smoke test

Random weights from the public configs (src/model/architectures/); every part writes its
JSON under benchmarks/results/gpu/ (or --output_dir), also when some of its
configurations run out of memory (each is marked {"oom": true, "error": ...} and the
script goes on). After a GPU run the measured rates are filed in src/throughput.json under
the device (src/devices.py), where --plan reads them; --cpu writes nothing but its JSON.
Every timer synchronises the device before reading the clock, at both ends.

(a) train: IterativeTrainer steps at contrastive batch 64 with GradCache mini-batch 16 and
    32, with and without gradient checkpointing, LoRA and full fine-tuning (3 steps each,
    the first not timed): samples/s, torch.cuda.max_memory_allocated, and the model-FLOPs
    utilisation (MFU) against the device's dense bf16 peak from src/devices.py (an unknown
    device gets none, said so). FLOPs come from src/model/flops.py, counted from what
    runs: MFU uses model FLOPs (real tokens; a frozen vision tower with nothing trainable
    before it runs forward only, frozen layers that gradients pass through cost one
    backward product, trainable ones two; no embedding lookup, no LM head; GradCache's
    extra forward and checkpointing's recomputation not counted); HFU uses hardware
    FLOPs (everything the GPU is made to run, those included).
(b) encode: the real pipeline (encode_rows: DataLoader workers load and preprocess 4,096
    CIRR-size 640 x 480 PNG files, written once) in steady state, 8 batches of 64 per
    worker; not timed: the batch collated first in the main process and every batch the
    workers prefetched during start-up (workers x prefetch: 17 with 8 workers); against
    the bare forward over 14 batches preprocessed beforehand (two more not timed) (target:
    >= 0.90).
(c) search: exact top-50 over 100,000 x 100,000 x 1,536 on the GPU against one matrix
    product of that size (target: <= 1.3x).
(d) caption: the Qwen2-VL-7B shape generating exactly 48 tokens for two-image prompts at
    batch 8 and 32 (pairs/s and tokens/s).

Time on one H200 (estimated; no GPU was lent to this project yet), from the work done, at
an assumed 35% of the 989 TFLOPS bf16 peak (346 TFLOPS) where the GPU bounds it and from
this project's CPU measurements where the CPU does (one worker decodes and preprocesses
about 24 CIRR-size images/s; a noisy 640 x 480 PNG takes about 70 ms to write):

- start-up (imports, CUDA) ~15 s; 4,096 PNG files over 16 processes ~20 s;
- train: hardware FLOPs per step (src/model/flops.py on the 2B shape, 640 x 480 images:
  128 sequences of ~250 tokens and 936 patches) LoRA 604 TFLOP, LoRA + checkpointing 999,
  full 1,026, full + checkpointing 1,205; 3 steps x 2 mini-batch sizes of each: 23.0
  PFLOP, ~66 s, plus two collations of 128 images ~11 s, two model builds and 8 trainer
  set-ups ~25 s: ~100 s;
- encode: 1.98 TFLOP per image forward; 4,096 images ~24 s (the GPU and 8 workers, ~190
  images/s, are about even), 16 bare batches ~5 s, model build ~5 s: ~35 s;
- search: 4 products of 30.7 TFLOP (float32) and their top-k ~15 s;
- caption: build the 8.3 B-parameter shape ~15 s, 4 generations (prefill of up to 32 x
  ~520 tokens and 64 images, 48 decoding steps) ~15 s: ~30 s.

About 3.6 minutes in all (215 s), of which about 125 s are GPU-bound: at half the
assumed speed (17% of peak) about 5.7 minutes, still under 8. Each part's JSON records its
own "seconds", and the script prints the total.
"""

from __future__ import annotations

import dataclasses
import gc
import json
import multiprocessing
import os
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from transformers import AutoModelForImageTextToText, AutoProcessor, TrainerCallback

from benchmarks import check_listed, parse_options
from src.arguments import AugmentArguments, IterativeTrainingArguments, ModelArguments, flag
from src.augment.captioners import TWO_IMAGES, VisionLanguageCaptioner
from src.augment.pairs import CaptionPair
from src.data.collator import ContrastiveCollator
from src.data.images import load_image
from src.data.records import Split
from src.devices import device_key, peak_bf16_tflops, record_throughput
from src.model.architectures import architecture_signature
from src.model.encoder import EmbedderConfig, VLM2VecEncoder, embedder_from_model
from src.model.flops import ForwardShape, embedder_flops
from src.model.registry import DEFAULT_MAX_PIXELS, DEFAULT_MIN_PIXELS, get_backbone
from src.offline.real_shape import build_real_shape
from src.offline.tiny import build_tiny_checkpoint
from src.retrieval.encode import encode_rows, gallery_rows
from src.retrieval.search import search_topk
from src.trainer_iterative import IterativeTrainer

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results" / "gpu"

GPU = {"arch": "qwen2_vl_2b", "captioner": "qwen2_vl_7b", "batch": 64, "minis": (16, 32),
       "encode_images": 4096, "encode_batch": 64, "encode_workers": 8, "bare_batches": 16,
       "bare_warmup": 2, "search": (100_000, 100_000, 1536), "caption_batches": (8, 32),
       "image": (640, 480), "steps": 3}  # fmt: skip
CPU = {"arch": "tiny", "captioner": "tiny", "batch": 8, "minis": (2, 4), "encode_images": 256,
       "encode_batch": 16, "encode_workers": 2, "bare_batches": 8, "bare_warmup": 1,
       "search": (2000, 2000, 64), "caption_batches": (2, 4), "image": (112, 112), "steps": 2}  # fmt: skip
# The configuration whose rate --plan uses: configs/cirr_qwen2vl_2b.json (LoRA, gradient
# checkpointing, GradCache with the smaller mini-batch).
PLAN_TRAIN = {"mode": "lora", "gradient_checkpointing": True, "mini": 0}
FLOPS_NOTE = (
    "src/model/flops.py: model FLOPs (MFU) count each forward once over real tokens and only "
    "the backward products gradients need (frozen vision tower with nothing trainable before "
    "it: forward only; no embedding lookup, no LM head); hardware FLOPs (HFU) add padding, "
    "GradCache's no-grad forward, checkpointing's recomputation and, under checkpointing, "
    "the input gradients through the language model before its first adapted layer"
)


def is_out_of_memory(error: BaseException) -> bool:
    """torch.OutOfMemoryError, or a failed cuBLAS / cuDNN workspace allocation (a RuntimeError)."""
    return isinstance(error, torch.OutOfMemoryError) or (
        isinstance(error, RuntimeError)
        and any(mark in str(error) for mark in ("out of memory", "CUBLAS_STATUS_ALLOC_FAILED"))
    )


def out_of_memory(error: BaseException) -> dict:
    """What a configuration that ran out of memory records."""
    lines = str(error).strip().splitlines()
    return {"oom": True, "error": lines[0] if lines else type(error).__name__}


class StepTimer(TrainerCallback):
    def __init__(self, synchronize: Callable[[], None]):
        self.synchronize = synchronize
        self.times: list[float] = []

    def on_step_begin(self, args, state, control, **kwargs):
        self.synchronize()
        self.start = time.perf_counter()

    def on_step_end(self, args, state, control, **kwargs):
        self.synchronize()
        self.times.append(time.perf_counter() - self.start)


class BatchClock:
    """A forward hook on the encoder: the synchronised time at the end of each batch, its
    rows, and the inputs of the first `keep` batches (already on the device)."""

    def __init__(self, synchronize: Callable[[], None], keep: int):
        self.synchronize = synchronize
        self.keep = keep
        self.ends: list[float] = []
        self.rows: list[int] = []
        self.kept: list[dict] = []

    def __call__(self, module, args, kwargs, output) -> None:
        self.synchronize()
        self.ends.append(time.perf_counter())
        self.rows.append(int(output.shape[0]))
        if len(self.kept) < self.keep:
            self.kept.append(dict(kwargs))


def _write_image(job: tuple[int, str, int, int]) -> None:
    """A photo-like PNG (smooth colour fields plus sensor-like noise), seeded by its index:
    it compresses and decodes about as a real photo does, unlike flat or pure-noise images."""
    index, path, width, height = job
    rng = np.random.default_rng(index)
    coarse = rng.integers(0, 256, (max(1, height // 16), max(1, width // 16), 3), dtype=np.uint8)
    base = np.asarray(Image.fromarray(coarse).resize((width, height), Image.BICUBIC), dtype=np.int16)
    noise = rng.integers(-12, 13, (height, width, 3), dtype=np.int16)
    Image.fromarray((base + noise).clip(0, 255).astype(np.uint8)).save(path)


class Setup:
    def __init__(self, cpu: bool, workdir: Path):
        self.cpu = cpu
        self.sizes = CPU if cpu else GPU
        self.device = torch.device("cpu" if cpu else "cuda")
        self.dtype = torch.float32 if cpu else torch.bfloat16
        self.workdir = workdir
        self.tiny = build_tiny_checkpoint("qwen2_vl", workdir / "tiny", image_size=56) if cpu else None

    def synchronize(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize()

    def reset_memory(self) -> None:
        """Free what the last configuration left (cycles included) and reset the peak; on the
        CPU nothing (a collection costs a good part of a second there)."""
        if self.device.type == "cuda":
            gc.collect()
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()

    def peak_memory(self) -> int | None:
        return torch.cuda.max_memory_allocated() if self.device.type == "cuda" else None

    def device_name(self) -> str:
        return "cpu" if self.device.type == "cpu" else torch.cuda.get_device_name(self.device)

    def peak(self) -> dict:
        """The device's dense bf16 peak, or why there is no MFU."""
        name = self.device_name()
        peak = peak_bf16_tflops(name)
        if peak:
            note = f"{device_key(name)}: {peak} TFLOPS dense bf16 (src/devices.py)"
        elif device_key(name) is None:
            note = f"unknown device {name}: no MFU"
        else:
            note = f"{name}: no bf16 peak on file (src/devices.py), no MFU"
        return {"device_key": device_key(name), "peak_bf16_tflops": peak, "peak": note}

    def model(self, arch: str, dtype: torch.dtype | None = None):
        """(model, processor) of the architecture with random weights, on the device."""
        dtype = dtype or self.dtype
        if arch == "tiny":
            model = AutoModelForImageTextToText.from_pretrained(self.tiny, dtype=dtype)
            return model.to(self.device), AutoProcessor.from_pretrained(self.tiny)
        return build_real_shape(arch, dtype, str(self.device))

    def encoder(self, lora: bool) -> VLM2VecEncoder:
        """As the product builds it: a bfloat16 base under LoRA, float32 weights (with bf16
        autocast) for full fine-tuning (src/model/encoder.py resolve_dtype)."""
        model, processor = self.model(self.sizes["arch"], None if lora else torch.float32)
        backbone = get_backbone(model.config.model_type)
        backbone.apply_pixel_budget(processor, DEFAULT_MIN_PIXELS, DEFAULT_MAX_PIXELS)
        config = EmbedderConfig.of(
            ModelArguments(lora=lora), backbone=backbone.name, base_model=self.sizes["arch"],
            adapter_base_model=None, min_pixels=DEFAULT_MIN_PIXELS, max_pixels=DEFAULT_MAX_PIXELS,
        )  # fmt: skip
        return embedder_from_model(model, processor, config).to(self.device)

    def image_files(self, count: int) -> list[str]:
        """`count` CIRR-size PNG files, written once (in processes when many) and reused."""
        width, height = self.sizes["image"]
        folder = self.workdir / "images"
        folder.mkdir(exist_ok=True)
        paths = [str(folder / f"img{i}.png") for i in range(count)]
        missing = [(i, path, width, height) for i, path in enumerate(paths) if not os.path.exists(path)]
        if len(missing) > 64:
            # fork: the children only run numpy and PIL (main writes the files before CUDA starts)
            context = multiprocessing.get_context("fork")
            with ProcessPoolExecutor(min(16, os.cpu_count() or 1), mp_context=context) as pool:
                list(pool.map(_write_image, missing, chunksize=16))
        else:
            for job in missing:
                _write_image(job)
        return paths


def images_needed(sizes: dict, parts: Sequence[str]) -> int:
    needed = {"train": 2 * sizes["batch"], "encode": sizes["encode_images"],
              "caption": 2 * max(sizes["caption_batches"])}  # fmt: skip
    return max((needed.get(part, 0) for part in parts), default=0)


def train_steps(setup: Setup, encoder: VLM2VecEncoder, batch: dict, checkpointing: bool, peak: float | None) -> dict:
    """IterativeTrainer steps on one collated batch: time, memory, FLOPs and utilisation."""
    sizes = setup.sizes
    timer = StepTimer(setup.synchronize)
    setup.reset_memory()
    with tempfile.TemporaryDirectory() as output:
        args = IterativeTrainingArguments(
            output_dir=output, report_to="none", remove_unused_columns=False,
            per_device_train_batch_size=1, max_steps=sizes["steps"], learning_rate=1e-5,
            save_strategy="no", logging_strategy="no", disable_tqdm=True,
            dataloader_num_workers=0, dataloader_pin_memory=False,
            gradient_checkpointing=checkpointing, bf16=not setup.cpu,
            use_cpu=setup.cpu, grad_cache=True,
        )  # fmt: skip
        trainer = IterativeTrainer(
            model=encoder, args=args, train_dataset=list(range(sizes["steps"])),
            data_collator=lambda _, batch=batch: batch, callbacks=[timer],
        )  # fmt: skip
        trainer.train()
        del trainer
    timed = timer.times[1:] or timer.times
    seconds = float(np.median(timed))
    shapes = [ForwardShape.of(chunk) for chunk in batch["query_chunks"] + batch["candidate_chunks"]]
    flops = embedder_flops(encoder, shapes, gradient_checkpointing=checkpointing, grad_cache=True)
    return {
        "steps_timed": len(timed), "seconds_per_step": seconds,
        "samples_per_s": sizes["batch"] / seconds,
        "max_memory_allocated_bytes": setup.peak_memory(),
        "model_tflop_per_step": flops.model / 1e12, "hardware_tflop_per_step": flops.hardware / 1e12,
        "model_tflops_per_s": flops.model / seconds / 1e12,
        "hardware_tflops_per_s": flops.hardware / seconds / 1e12,
        "mfu": flops.model / seconds / (peak * 1e12) if peak else None,
        "hfu": flops.hardware / seconds / (peak * 1e12) if peak else None,
        "flops": {k: v for k, v in flops.as_dict().items() if k != "parts"},
    }  # fmt: skip


def part_train(setup: Setup) -> dict:
    sizes, runs = setup.sizes, []
    peak = setup.peak()
    images = [load_image(path) for path in setup.image_files(2 * sizes["batch"])]
    features = [
        {"reference": images[2 * q], "caption": "make the sky darker and add a red car", "target": images[2 * q + 1],
         "negatives": [], "target_id": 2 * q + 1, "negative_ids": [], "group_id": 2 * q, "query_id": q}
        for q in range(sizes["batch"])
    ]  # fmt: skip
    batches: dict[int, dict] = {}  # collated once per mini-batch size, for every configuration
    signature = None
    for mode in ("lora", "full"):
        encoder = None
        for checkpointing in (False, True):
            for mini in sizes["minis"]:
                run = {"mode": mode, "gradient_checkpointing": checkpointing, "mini_batch": mini,
                       "contrastive_batch": sizes["batch"]}  # fmt: skip
                try:
                    if encoder is None:
                        setup.reset_memory()
                        encoder = setup.encoder(lora=mode == "lora")
                        signature = architecture_signature(encoder.model.config)
                    if mini not in batches:
                        collator = ContrastiveCollator(encoder.processor, encoder.backbone, "cirr", chunk_size=mini)
                        batches[mini] = collator(features)
                    run |= {"oom": False} | train_steps(setup, encoder, batches[mini], checkpointing,
                                                        peak["peak_bf16_tflops"])  # fmt: skip
                except RuntimeError as error:  # torch.OutOfMemoryError is one
                    if not is_out_of_memory(error):
                        raise
                    run |= out_of_memory(error)
                if run["oom"]:  # the failed step's tensors went with its frames
                    if encoder is not None:
                        encoder.zero_grad(set_to_none=True)
                    setup.reset_memory()
                runs.append(run)
                print(json.dumps(run), flush=True)
        del encoder
        setup.reset_memory()
    plan = next(
        (r for r in runs if r["mode"] == PLAN_TRAIN["mode"] and not r["oom"]
         and r["gradient_checkpointing"] == PLAN_TRAIN["gradient_checkpointing"]
         and r["mini_batch"] == sizes["minis"][PLAN_TRAIN["mini"]]),
        None,
    )  # fmt: skip
    throughput = {"signature": signature, "device": setup.device_name()}
    if plan:
        throughput |= {"train_samples_per_s": plan["samples_per_s"],
                       "train_configuration": f"LoRA, gradient checkpointing, GradCache mini-batch {plan['mini_batch']}"}  # fmt: skip
    return peak | {"flops_counted": FLOPS_NOTE, "runs": runs, "throughput": throughput}


def warmup_batches(loader: dict) -> int:
    """Batches made before the pipeline runs as it will: those collated in the main process
    first (to size the workers), and every worker's prefetch (`workers` x `prefetch`
    batches, prepared while the first ones run, all at once: timing them would count
    start-up work done in parallel with nothing)."""
    return max(1, loader["batches_collated_first"] + loader["workers"] * (loader["prefetch"] or 0))


def steady_state(ends: list[float], rows: list[int], warm: int) -> tuple[int, float]:
    """Images and seconds from the end of the last warm-up batch to the end of the last one."""
    if len(ends) <= warm:
        raise ValueError(f"{len(ends)} batches: none after the {warm} of the warm-up")
    return sum(rows[warm:]), ends[-1] - ends[warm - 1]


def part_encode(setup: Setup) -> dict:
    sizes = setup.sizes
    paths = setup.image_files(sizes["encode_images"])
    setup.reset_memory()
    encoder = setup.encoder(lora=False).eval()
    rows = gallery_rows(Split("gallery", [], {f"img{i}": p for i, p in enumerate(paths)}),
                        encoder.backbone.image_token)  # fmt: skip
    batch_size, workers = sizes["encode_batch"], sizes["encode_workers"]
    batches = -(-len(paths) // batch_size)
    clock = BatchClock(setup.synchronize, keep=sizes["bare_batches"])
    hook = encoder.register_forward_hook(clock, with_kwargs=True)
    loader: dict = {}
    try:
        encode_rows(encoder, rows, batch_size, workers, loader_report=loader)
    finally:
        hook.remove()
    warm = warmup_batches(loader)
    assert batches >= 3 * warm, "steady state needs several batches after the warm-up"
    pipeline_images, pipeline_seconds = steady_state(clock.ends, clock.rows, warm)
    # The bare forward over batches the pipeline preprocessed (kept on the device).
    kept, skip = clock.kept, sizes["bare_warmup"]
    with torch.no_grad():
        for inputs in kept[:skip]:
            encoder(**inputs)
        setup.synchronize()
        start = time.perf_counter()
        for inputs in kept[skip:]:
            encoder(**inputs)
        setup.synchronize()
        bare_seconds = time.perf_counter() - start
    bare_images = sum(clock.rows[skip : len(kept)])
    forward = embedder_flops(encoder, [ForwardShape.of(b) for b in kept[skip:]], backward=False)
    peak = setup.peak()
    pipeline, bare = pipeline_images / pipeline_seconds, bare_images / bare_seconds
    signature = architecture_signature(encoder.model.config)
    del encoder, kept, clock
    return peak | {
        "images": len(paths), "image_size": sizes["image"], "batch_size": batch_size,
        "dataloader_workers": workers, "loader": loader, "batches": batches,
        "pipeline_warmup_batches_excluded": warm, "pipeline_images_timed": pipeline_images,
        "pipeline_seconds_timed": pipeline_seconds, "pipeline_items_per_s": pipeline,
        "bare_warmup_batches_excluded": skip, "bare_images_timed": bare_images,
        "bare_seconds_timed": bare_seconds, "bare_forward_items_per_s": bare,
        "bare_forward_model_tflops_per_s": forward.forward / bare_seconds / 1e12,
        "bare_forward_mfu": (forward.forward / bare_seconds / (peak["peak_bf16_tflops"] * 1e12)
                             if peak["peak_bf16_tflops"] else None),
        "ratio_pipeline_over_bare": pipeline / bare, "target_ratio_at_least": 0.90,
        "throughput": {"signature": signature, "device": setup.device_name(),
                       "encode_items_per_s": pipeline},
    }  # fmt: skip


def part_search(setup: Setup) -> dict:
    queries, gallery, dim = setup.sizes["search"]
    setup.reset_memory()
    generator = torch.Generator(setup.device).manual_seed(0)
    q = torch.nn.functional.normalize(torch.randn(queries, dim, device=setup.device, generator=generator), dim=1)
    g = torch.nn.functional.normalize(torch.randn(gallery, dim, device=setup.device, generator=generator), dim=1)

    def timed(call: Callable[[], object]) -> float:
        call()  # warm-up
        setup.synchronize()
        start = time.perf_counter()
        result = call()
        setup.synchronize()
        seconds = time.perf_counter() - start
        del result
        return seconds

    matmul = timed(lambda: q @ g.T)
    search = timed(lambda: search_topk(q, g, 50, device=setup.device))
    return {"queries": queries, "gallery": gallery, "dim": dim, "k": 50, "matmul_s": matmul,
            "search_s": search, "ratio_search_over_matmul": search / matmul,
            "target_ratio_at_most": 1.3, "peak_memory_bytes": setup.peak_memory()}  # fmt: skip


def part_caption(setup: Setup) -> dict:
    sizes = setup.sizes
    setup.reset_memory()
    model, processor = setup.model(sizes["captioner"])
    processor.tokenizer.padding_side = "left"
    options = AugmentArguments(max_new_tokens=48)
    captioner = VisionLanguageCaptioner("qwen2_vl", model.eval(), processor, TWO_IMAGES, options)
    paths = setup.image_files(2 * max(sizes["caption_batches"]))
    runs = []
    for batch_size in sizes["caption_batches"]:
        run: dict = {"batch_size": batch_size}
        try:
            pairs = [CaptionPair(f"p{i}", f"q{i}", f"r{i}", paths[2 * i], f"n{i}", paths[2 * i + 1],
                                 "make the sky darker", f"t{i}") for i in range(batch_size)]  # fmt: skip
            inputs = captioner.caption_inputs(pairs)
            kwargs = captioner._generation_kwargs() | {"min_new_tokens": 48, "max_new_tokens": 48}
            with torch.inference_mode():
                model.generate(**inputs, **kwargs)  # warm-up
                setup.synchronize()
                start = time.perf_counter()
                output = model.generate(**inputs, **kwargs)
                setup.synchronize()
            seconds = time.perf_counter() - start
            new_tokens = (output.shape[1] - inputs["input_ids"].shape[1]) * batch_size
            run |= {"oom": False, "seconds": seconds, "pairs_per_s": batch_size / seconds,
                    "tokens_per_s": new_tokens / seconds, "prompt_tokens": inputs["input_ids"].shape[1],
                    "max_memory_allocated_bytes": setup.peak_memory()}  # fmt: skip
        except RuntimeError as error:
            if not is_out_of_memory(error):
                raise
            run |= out_of_memory(error)
        setup.reset_memory()
        runs.append(run)
        print(json.dumps(run), flush=True)
    signature = architecture_signature(model.config)
    del captioner, model
    throughput = {"signature": signature, "device": setup.device_name()}
    if not runs[0]["oom"]:
        throughput["caption_pairs_per_s"] = runs[0]["pairs_per_s"]
    return {"runs": runs, "throughput": throughput}


PARTS = {"train": part_train, "encode": part_encode, "search": part_search, "caption": part_caption}


def file_rates(result: dict, path: Path) -> dict[str, float]:
    """File a GPU part's measured rates in src/throughput.json (for --plan); the rates filed."""
    throughput = result.get("throughput") or {}
    rates = {k: v for k, v in throughput.items() if k.endswith("_per_s") and v}
    if not (rates and throughput.get("signature") and device_key(throughput["device"])):
        return {}  # nothing measured, or a device src/devices.py does not know
    where = path.relative_to(REPO) if path.is_relative_to(REPO) else path
    record_throughput(throughput["signature"], throughput["device"], rates,
                      source=f"{where} (bash benchmarks/gpu_check.sh)")  # fmt: skip
    return rates


@dataclasses.dataclass
class GpuCheckOptions:
    cpu: bool = flag(False, "Tiny shapes on the CPU (a smoke test); files no rates.")
    parts: str = flag(",".join(PARTS), f"Comma-separated parts to run, each one of {', '.join(PARTS)}.")
    output_dir: str | None = flag(None, "Where the JSON goes (default: benchmarks/results/gpu/).", results=False)

    def __post_init__(self) -> None:
        check_listed("parts", self.parts, PARTS)


def main(argv: list[str] | None = None) -> None:
    args = parse_options(GpuCheckOptions, argv, __doc__.split("\n\n")[0])
    if not args.cpu and not torch.cuda.is_available():
        raise SystemExit("no CUDA device: run on a GPU machine, or pass --cpu for the smoke test")
    parts = check_listed("parts", args.parts, PARTS)
    output_dir = Path(args.output_dir).resolve() if args.output_dir else RESULTS
    output_dir.mkdir(parents=True, exist_ok=True)
    threads = torch.get_num_threads()
    if args.cpu:
        # tiny shapes gain nothing from a second thread, and on a shared machine spinning
        # threads made the smoke test ten times slower (133 s against 14 s for train)
        torch.set_num_threads(1)
    try:
        run_parts(args.cpu, parts, output_dir)
    finally:
        torch.set_num_threads(threads)


def run_parts(cpu: bool, parts: list[str], output_dir: Path) -> None:
    begin, failed = time.perf_counter(), []
    with tempfile.TemporaryDirectory() as workdir:
        setup = Setup(cpu, Path(workdir))
        start = time.perf_counter()
        setup.image_files(images_needed(setup.sizes, parts))  # before CUDA starts (fork)
        print(f"== images: {time.perf_counter() - start:.1f} s", flush=True)
        for name in parts:
            start = time.perf_counter()
            print(f"== {name}", flush=True)
            try:
                result = PARTS[name](setup)
            except Exception as error:  # recorded; the other parts still run
                if is_out_of_memory(error):  # outside any one configuration
                    result = out_of_memory(error)
                else:
                    traceback.print_exc()
                    result = {"error": f"{type(error).__name__}: {error}"}
                    failed.append(name)
            setup.reset_memory()
            result |= {"device": setup.device_name(), "dtype": str(setup.dtype).removeprefix("torch."),
                       "seconds": round(time.perf_counter() - start, 1)}  # fmt: skip
            path = output_dir / f"{name}.json"
            path.write_text(json.dumps(result, indent=2))
            filed = file_rates(result, path) if not setup.cpu else {}
            print(f"== {name}: {result['seconds']} s -> {path}"
                  + (f"; filed {sorted(filed)} in src/throughput.json" if filed else ""), flush=True)  # fmt: skip
    print(f"== all: {time.perf_counter() - begin:.1f} s", flush=True)
    if failed:
        sys.exit(f"failed parts: {failed} (their JSON holds the error)")


if __name__ == "__main__":
    main()
