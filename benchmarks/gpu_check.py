"""The GPU check: the real-size paths measured on one CUDA device, in one command.

    bash benchmarks/gpu_check.sh              # CUDA: the Qwen2-VL-2B shape in bf16 with SDPA
    bash benchmarks/gpu_check.sh --cpu        # the same code on tiny shapes: a smoke test

Random weights from the public configs (src/model/architectures/); every part writes JSON
under benchmarks/results/gpu/ (or --output_dir) and runs in under two minutes on a
data-centre GPU:

(a) train: IterativeTrainer steps at contrastive batch 64 with GradCache mini-batch 16 and
    32, with and without gradient checkpointing, LoRA and full fine-tuning: samples/s,
    torch.cuda.max_memory_allocated, and the model-FLOPs utilisation against the GPU's
    dense bf16 peak (model FLOPs: 2 x parameters x tokens forward, twice that backward for
    full fine-tuning, once for LoRA, which needs no weight gradients; GradCache's extra
    forward is not counted);
(b) encode: the real pipeline (DataLoader workers load and preprocess CIRR-size images)
    against the bare forward over batches preprocessed beforehand (target: >= 0.90);
(c) search: exact top-50 over 100,000 x 100,000 x 1,536 on the GPU against one matrix
    product of that size (target: <= 1.3x);
(d) caption: the Qwen2-VL-7B shape generating exactly 48 tokens for two-image prompts at
    batch 8 and 32 (pairs/s and tokens/s).
"""

from __future__ import annotations

import argparse
import gc
import json
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from transformers import (
    AutoModelForImageTextToText,
    AutoProcessor,
    TrainerCallback,
)

from src.arguments import AugmentArguments, IterativeTrainingArguments, ModelArguments
from src.augment.captioners import TWO_IMAGES, VisionLanguageCaptioner
from src.augment.pairs import CaptionPair
from src.data.collator import ContrastiveCollator
from src.data.records import Split
from src.model.architectures import architecture_signature, count_parameters, vision_parameters
from src.model.encoder import (
    EmbedderConfig,
    VLM2VecEncoder,
    embedder_from_model,
)
from src.model.registry import DEFAULT_MAX_PIXELS, DEFAULT_MIN_PIXELS, get_backbone
from src.offline.real_shape import build_real_shape
from src.offline.tiny import build_tiny_checkpoint
from src.retrieval.encode import PackRows, RowDataset, encode_rows, gallery_rows
from src.retrieval.search import search_topk
from src.trainer_iterative import IterativeTrainer

RESULTS = Path(__file__).resolve().parent / "results" / "gpu"
# Dense bf16 tensor-core peaks (TFLOPS) from the vendors' data sheets, by device name part.
PEAK_BF16_TFLOPS = {"H200": 989, "H100": 989, "H800": 989, "A100": 312, "A800": 312,
                    "L40S": 362, "L40": 181, "A6000": 155, "A10": 125, "L4": 121, "4090": 165}  # fmt: skip

GPU = {"arch": "qwen2_vl_2b", "captioner": "qwen2_vl_7b", "batch": 64, "minis": (16, 32),
       "encode_images": 512, "search": (100_000, 100_000, 1536), "caption_batches": (8, 32),
       "image": (640, 480), "steps": 3}  # fmt: skip
CPU = {"arch": "tiny", "captioner": "tiny", "batch": 8, "minis": (2, 4), "encode_images": 32,
       "search": (2000, 2000, 64), "caption_batches": (2, 4), "image": (112, 112), "steps": 2}  # fmt: skip


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
        gc.collect()
        if self.device.type == "cuda":
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()

    def peak_memory(self) -> int | None:
        return torch.cuda.max_memory_allocated() if self.device.type == "cuda" else None

    def model(self, arch: str):
        """(model, processor) of the architecture with random weights, on the device."""
        if arch == "tiny":
            model = AutoModelForImageTextToText.from_pretrained(self.tiny, dtype=self.dtype)
            return model.to(self.device), AutoProcessor.from_pretrained(self.tiny)
        return build_real_shape(arch, self.dtype, str(self.device))

    def encoder(self, lora: bool) -> VLM2VecEncoder:
        model, processor = self.model(self.sizes["arch"])
        backbone = get_backbone(model.config.model_type)
        backbone.apply_pixel_budget(processor, DEFAULT_MIN_PIXELS, DEFAULT_MAX_PIXELS)
        config = EmbedderConfig.of(
            ModelArguments(lora=lora), backbone=backbone.name, base_model=self.sizes["arch"],
            adapter_base_model=None, min_pixels=DEFAULT_MIN_PIXELS, max_pixels=DEFAULT_MAX_PIXELS,
        )  # fmt: skip
        return embedder_from_model(model, processor, config).to(self.device)

    def images(self, count: int) -> list[Image.Image]:
        width, height = self.sizes["image"]
        rng = np.random.default_rng(0)
        return [
            Image.fromarray(rng.integers(0, 255, (height, width, 3), dtype=np.uint8))
            for _ in range(count)
        ]


def model_flops(encoder: VLM2VecEncoder, batch: dict, backward_factor: int) -> float:
    """2 x parameters x tokens per forward (language model over every sequence token, vision
    tower over every patch), times (1 + backward_factor)."""
    total, vision = count_parameters(encoder.model), vision_parameters(encoder.model)
    chunks = batch["query_chunks"] + batch["candidate_chunks"]
    tokens = sum(int(chunk["attention_mask"].sum()) for chunk in chunks)
    patches = sum(int(chunk["image_grid_thw"].prod(-1).sum()) for chunk in chunks if "image_grid_thw" in chunk)
    return 2 * ((total - vision) * tokens + vision * patches) * (1 + backward_factor)


def part_train(setup: Setup) -> dict:
    sizes, results = setup.sizes, []
    images = setup.images(2 * sizes["batch"])
    features = [
        {"reference": images[2 * q], "caption": "make the sky darker and add a red car", "target": images[2 * q + 1],
         "negatives": [], "target_id": 2 * q + 1, "negative_ids": [], "group_id": 2 * q}
        for q in range(sizes["batch"])
    ]  # fmt: skip
    peak = next((v for k, v in PEAK_BF16_TFLOPS.items() if k in _device_name(setup)), None)
    for mode in ("lora", "full"):
        setup.reset_memory()
        encoder = setup.encoder(lora=mode == "lora")
        for checkpointing in (False, True):
            for mini in sizes["minis"]:
                collator = ContrastiveCollator(encoder.processor, encoder.backbone, "cirr", chunk_size=mini)
                batch = collator(features)
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
                        data_collator=lambda _, batch=batch: batch,
                        callbacks=[timer],
                    )  # fmt: skip
                    trainer.train()
                seconds = float(np.median(timer.times[1:] or timer.times))
                flops = model_flops(encoder, batch, 2 if mode == "full" else 1)
                results.append({
                    "mode": mode, "gradient_checkpointing": checkpointing, "mini_batch": mini,
                    "contrastive_batch": sizes["batch"], "seconds_per_step": seconds,
                    "samples_per_s": sizes["batch"] / seconds,
                    "max_memory_allocated_bytes": setup.peak_memory(),
                    "model_tflops_per_s": flops / seconds / 1e12,
                    "mfu": flops / seconds / (peak * 1e12) if peak else None,
                })  # fmt: skip
                print(json.dumps(results[-1]), flush=True)
                del trainer
        signature = architecture_signature(encoder.model.config)
        del encoder
    lora_default = next(r for r in results if r["mode"] == "lora" and r["gradient_checkpointing"])
    return {"peak_bf16_tflops": peak, "runs": results, "throughput": {
        "signature": signature, "device": _device_name(setup),
        "train_samples_per_s": lora_default["samples_per_s"]}}  # fmt: skip


def part_encode(setup: Setup) -> dict:
    sizes = setup.sizes
    setup.reset_memory()
    encoder = setup.encoder(lora=False).eval()
    folder = setup.workdir / "encode_images"
    folder.mkdir(exist_ok=True)
    paths = {}
    for index, image in enumerate(setup.images(sizes["encode_images"])):
        paths[f"img{index}"] = str(folder / f"img{index}.png")
        image.save(paths[f"img{index}"])
    rows = gallery_rows(Split("gallery", [], paths), encoder.backbone.image_token)
    workers = 2 if setup.cpu else 8
    batch_size = 16 if setup.cpu else 64
    encode_rows(encoder, rows, batch_size, workers)  # warm-up
    setup.synchronize()
    start = time.perf_counter()
    encode_rows(encoder, rows, batch_size, workers)
    setup.synchronize()
    pipeline = len(paths) / (time.perf_counter() - start)
    pack = PackRows(encoder.processor, encoder.backbone)
    dataset = RowDataset(rows, list(range(len(paths))))
    batches = [pack([dataset[i] for i in range(s, min(s + batch_size, len(paths)))])[1].to(setup.device)
               for s in range(0, len(paths), batch_size)]  # fmt: skip
    with torch.no_grad():
        setup.synchronize()
        start = time.perf_counter()
        for batch in batches:
            encoder(**batch)
        setup.synchronize()
    bare = len(paths) / (time.perf_counter() - start)
    signature = architecture_signature(encoder.model.config)
    del encoder, batches
    return {"images": len(paths), "image_size": sizes["image"], "batch_size": batch_size,
            "dataloader_workers": workers, "pipeline_items_per_s": pipeline,
            "bare_forward_items_per_s": bare, "ratio_pipeline_over_bare": pipeline / bare,
            "target_ratio_at_least": 0.90,
            "throughput": {"signature": signature, "device": _device_name(setup),
                           "encode_items_per_s": pipeline}}  # fmt: skip


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
        del result
        return time.perf_counter() - start

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
    folder = setup.workdir / "caption_images"
    folder.mkdir(exist_ok=True)
    paths = []
    for index, image in enumerate(setup.images(2 * max(sizes["caption_batches"]))):
        paths.append(str(folder / f"img{index}.png"))
        image.save(paths[-1])
    runs = []
    for batch_size in sizes["caption_batches"]:
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
        runs.append({"batch_size": batch_size, "seconds": seconds, "pairs_per_s": batch_size / seconds,
                     "tokens_per_s": new_tokens / seconds, "prompt_tokens": inputs["input_ids"].shape[1],
                     "max_memory_allocated_bytes": setup.peak_memory()})  # fmt: skip
        print(json.dumps(runs[-1]), flush=True)
    signature = architecture_signature(model.config)
    del captioner, model
    return {"runs": runs, "throughput": {"signature": signature, "device": _device_name(setup),
                                         "caption_pairs_per_s": runs[0]["pairs_per_s"]}}  # fmt: skip


def _device_name(setup: Setup) -> str:
    return "cpu" if setup.device.type == "cpu" else torch.cuda.get_device_name(setup.device)


PARTS = {"train": part_train, "encode": part_encode, "search": part_search, "caption": part_caption}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cpu", action="store_true", help="tiny shapes on the CPU (smoke test)")
    parser.add_argument("--parts", default=",".join(PARTS), help="comma-separated: " + ",".join(PARTS))
    parser.add_argument("--output_dir", default=None, help="default: benchmarks/results/gpu/")
    args = parser.parse_args()
    if not args.cpu and not torch.cuda.is_available():
        raise SystemExit("no CUDA device: run on a GPU machine, or pass --cpu for the smoke test")
    output_dir = Path(args.output_dir) if args.output_dir else RESULTS
    output_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as workdir:
        setup = Setup(args.cpu, Path(workdir))
        for name in args.parts.split(","):
            start = time.perf_counter()
            print(f"== {name}", flush=True)
            result = PARTS[name](setup) | {"device": _device_name(setup),
                                           "dtype": str(setup.dtype).removeprefix("torch.")}  # fmt: skip
            result["seconds"] = round(time.perf_counter() - start, 1)
            (output_dir / f"{name}.json").write_text(json.dumps(result, indent=2))
            print(f"== {name}: {result['seconds']} s -> {output_dir / f'{name}.json'}", flush=True)


if __name__ == "__main__":
    main()
