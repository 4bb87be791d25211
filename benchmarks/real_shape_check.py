"""Real-shape check: a released architecture with random weights through every model path.

    python -m benchmarks.real_shape_check --arch qwen2_vl_2b        # CPU here, GPU when present
    python -m benchmarks.real_shape_check --arch tiny               # the same code, seconds

Builds the architecture from its public config (src/model/architectures/; random weights,
saved as a checkpoint so that the product's own loading runs too; the tokenizer is the tiny
checkpoints' BPE, which is fine where only shapes matter), and on four images of CIRR-like
sizes at the embedder's default pixel budget runs, each stage timed with its peak memory:

1. embedder forward: the pooled embedding of every row is the same under left padding,
   right padding and alone (the pooling picks the last real token);
2. one LoRA training step with gradient checkpointing and GradCache (mini-batch 2)
   through IterativeTrainer;
3. two-image generation of 4 tokens through the Qwen2-VL captioner;
4. the consistency check's yes/no forward.

With `--activations QUERIES` it runs instead one LoRA step without gradient checkpointing
or GradCache at QUERIES queries on a depth-reduced shape (`--text_layers`, `--vision_layers`,
default 4 and 2: the same widths), where activations, not weights, make the peak
(benchmarks/results/real_shape_{arch}_activations.json, predicted by tests/test_memory.py).

Precision: bfloat16 on a GPU, float32 on a CPU. A CPU without AVX-512 BF16 / AMX has no
fast bf16 matrix product (this project's 2-core AMD EPYC: 0.8 GFLOP/s in bf16 against 89
in fp32 for a 1,024 x 1,536 x 8,960 product), and the 2B shape's bf16 forward did not
finish in ten minutes there.

It asserts that every --lora_target_modules name matched linear layers of the
architecture and that the vision tower is frozen or trainable as configured, and writes
JSON to benchmarks/results/real_shape_{arch}.json (GPU: benchmarks/results/gpu/). A real
architecture's rates (not `--arch tiny`'s) are filed in src/throughput.json under the
device (src/devices.py) for --plan, unless the GPU check's steady-state rates are there.
"""

from __future__ import annotations

import contextlib
import ctypes
import dataclasses
import gc
import json
import os
import platform
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import torch
from PIL import Image

from benchmarks import parse_options
from src.arguments import (
    AugmentArguments,
    IterativeTrainingArguments,
    ModelArguments,
    check_flags,
    flag,
    flag_of,
)
from src.augment.captioners import load_captioner
from src.augment.generation import ask_consistency
from src.augment.pairs import CaptionPair
from src.data.dataset.composed_retrieval_dataset import ComposedRetrievalDataset
from src.data.images import load_image
from src.data.records import Split, Triplet
from src.devices import measured_throughput, record_throughput
from src.model.architectures import architecture_signature, count_parameters, shipped_architectures
from src.model.encoder import build_encoder, is_vision_module, lora_target_counts
from src.model.prompts import candidate_text
from src.model.registry import checkpoint_config, image_token_count
from src.offline.real_shape import write_real_shape_checkpoint
from src.offline.tiny import build_tiny_checkpoint
from src.training import train_round

IMAGE_SIZES = ((640, 480), (1024, 768), (500, 900), (256, 256))
RESULTS = Path(__file__).resolve().parent / "results"


def release_free_heap() -> None:
    """Hand the heap that glibc malloc keeps after frees back to the kernel (malloc_trim(0)
    returns every free page of every arena), so that a stage does not start with the
    previous stage's freed memory still resident; a no-op without glibc."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)


class PeakMemory:
    """Peak memory of a stage: torch.cuda.max_memory_allocated on a GPU, else the process's
    peak resident set (VmHWM, reset through /proc/self/clear_refs where Linux allows).

    The reset sets the peak to what the process holds at the stage's start. On a CPU that
    included heap an earlier stage had freed but glibc kept (about 2.9 GiB after the 2B
    LoRA step, in the captioner stages' peaks of the committed results; docs/memory.md):
    the reset now trims it first (`release_free_heap`), and each stage also reports what
    it started from (`start_memory_bytes`) and its peak above that."""

    def __init__(self, device: torch.device):
        self.device = device

    def reset(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
        else:
            release_free_heap()
            with contextlib.suppress(OSError):
                Path("/proc/self/clear_refs").write_text("5")

    def read(self) -> int:
        if self.device.type == "cuda":
            return torch.cuda.max_memory_allocated(self.device)
        return self._status("VmHWM")

    def start(self) -> int:
        """What the process holds now: allocated bytes on a GPU, the resident set on a CPU."""
        if self.device.type == "cuda":
            return torch.cuda.memory_allocated(self.device)
        return self._status("VmRSS")

    @staticmethod
    def _status(key: str) -> int:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(f"{key}:"):
                return int(line.split()[1]) * 1024
        return 0


@contextlib.contextmanager
def stage(name: str, report: dict, memory: PeakMemory) -> Iterator[dict]:
    gc.collect()
    memory.reset()
    held = memory.start()
    start = time.perf_counter()
    details: dict = {}
    print(f"-- {name} ...", flush=True)
    yield details
    seconds = time.perf_counter() - start
    peak = memory.read()
    report["stages"][name] = {
        "seconds": round(seconds, 2),
        "peak_memory_bytes": peak,
        "start_memory_bytes": held,
        "peak_above_start_bytes": peak - held,
        **details,
    }
    print(f"-- {name}: {seconds:.1f} s, peak {memory.read() / 2**30:.2f} GiB {details}", flush=True)


def make_images(directory: Path) -> dict[str, str]:
    images = {}
    for index, (width, height) in enumerate(IMAGE_SIZES):
        path = directory / f"img{index}.png"
        pixels = Image.effect_noise((width, height), 60).convert("RGB")
        pixels.save(path)
        images[f"img{index}"] = str(path)
    return images


def check_pooling(encoder, images: dict[str, str]) -> dict:
    """Embeddings under left padding, right padding and one row at a time agree."""
    processor, backbone = encoder.processor, encoder.backbone
    texts = [candidate_text(backbone.image_token)] * len(images)
    pictures = [load_image(path) for path in images.values()]
    results = {}
    with torch.no_grad():
        for side in ("left", "right"):
            processor.tokenizer.padding_side = side
            batch = backbone.pack(processor, texts, pictures).to(next(encoder.parameters()).device)
            results[side] = encoder(**batch).float().cpu()
        processor.tokenizer.padding_side = "left"
        alone = [
            encoder(**backbone.pack(processor, [text], [picture]).to(next(encoder.parameters()).device))
            for text, picture in zip(texts, pictures, strict=True)
        ]
        results["alone"] = torch.cat(alone).float().cpu()
    cosine = {
        name: float(torch.nn.functional.cosine_similarity(results[name], results["alone"]).min())
        for name in ("left", "right")
    }
    assert min(cosine.values()) > 0.99, f"pooling differs with padding: {cosine}"
    lengths = batch["attention_mask"].sum(1).tolist()
    return {"min_cosine_to_unpadded": cosine, "sequence_lengths": lengths}


@dataclasses.dataclass
class RealShapeOptions:
    arch: str = flag("qwen2_vl_2b", "A shipped architecture, or tiny.", choices=(*shipped_architectures(), "tiny"))
    dtype: str | None = flag(
        None,
        "Default: bfloat16 on a GPU, float32 on a CPU (see the module docstring).",
        choices=("bfloat16", "float32"),
    )
    lora_target_modules: str = flag_of(ModelArguments, "lora_target_modules")
    freeze_vision_tower: bool = flag_of(ModelArguments, "freeze_vision_tower")
    output: str | None = flag(None, "JSON path (default: benchmarks/results/).", results=False)
    activations: int | None = flag(
        None,
        "Instead of the stages: one LoRA step without gradient checkpointing or GradCache at "
        "this many queries (+ as many targets), where activations outweigh the weights, on a "
        "depth-reduced shape (--text_layers, --vision_layers).",
        at_least=1,
    )
    text_layers: int = flag(4, "Language-model layers of --activations' shape.", at_least=1)
    vision_layers: int = flag(2, "Vision-tower layers of --activations' shape.", at_least=1)

    def __post_init__(self) -> None:
        check_flags(self)


def main(argv: list[str] | None = None) -> None:
    args = parse_options(RealShapeOptions, argv, __doc__.split("\n\n")[0])
    if args.activations is not None:
        activations_check(args)
        return
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    args.dtype = args.dtype or ("bfloat16" if device.type == "cuda" else "float32")
    memory = PeakMemory(device)
    targets = [name.strip() for name in args.lora_target_modules.split(",") if name.strip()]
    report: dict = {
        "arch": args.arch,
        "dtype": args.dtype,
        "device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu",
        "torch_threads": torch.get_num_threads(),
        "machine": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "tokenizer": "the tiny checkpoints' BPE (only shapes matter here)",
        "image_sizes": IMAGE_SIZES,
        "stages": {},
    }
    dtype = getattr(torch, args.dtype)
    with tempfile.TemporaryDirectory() as workdir:
        workdir = Path(workdir)
        with stage("build", report, memory):
            if args.arch == "tiny":
                checkpoint = build_tiny_checkpoint("qwen2_vl", workdir / "model", image_size=56)
            else:
                checkpoint = write_real_shape_checkpoint(args.arch, workdir / "model", True, dtype)
        report["signature"] = architecture_signature(checkpoint_config(checkpoint))
        images = make_images(workdir)
        with stage("load_embedder", report, memory) as details:
            options = ModelArguments(
                lora=True,
                lora_target_modules=args.lora_target_modules,
                freeze_vision_tower=args.freeze_vision_tower,
            )
            encoder = build_encoder(checkpoint, options, dtype=args.dtype).to(device)
            matched = lora_target_counts(encoder.model, targets)
            details["lora_matches"] = {name: count for name, count in matched.items()}
            assert all(matched.values()), f"LoRA targets that match nothing: {matched}"
            vision_trainable = [
                name
                for name, p in encoder.named_parameters()
                if p.requires_grad and is_vision_module(name)
            ]
            assert not (args.freeze_vision_tower and vision_trainable), vision_trainable[:3]
            details["vision_tower_trainable_parameters"] = len(vision_trainable)
        report["parameters"] = count_parameters(encoder.model)
        report["trainable_parameters"] = count_parameters(encoder.model, trainable_only=True)
        report["image_tokens"] = {
            f"{w}x{h}": image_token_count(encoder.processor, w, h) for w, h in IMAGE_SIZES
        }
        print(f"parameters {report['parameters']:,}, trainable {report['trainable_parameters']:,}; "
              f"image tokens {report['image_tokens']}", flush=True)  # fmt: skip
        with stage("embedder_forward", report, memory) as details:
            details |= check_pooling(encoder, images)
        split = Split("train", [
            Triplet("q0", "img0", "make it brighter", "img1"),
            Triplet("q1", "img2", "zoom out and add a tree", "img3"),
        ], images)  # fmt: skip
        training_args = IterativeTrainingArguments(
            output_dir=str(workdir / "train"),
            per_device_train_batch_size=2,
            max_steps=1,
            learning_rate=1e-4,
            gradient_checkpointing=True,
            save_strategy="no",
            report_to="none",
            remove_unused_columns=False,
            dataloader_num_workers=0,
            use_cpu=device.type == "cpu",
            disable_tqdm=True,
            grad_cache=True,
            gc_mini_batch_size=2,
        )
        with stage("lora_train_step_gradient_checkpointing_gradcache", report, memory) as details:
            summary = train_round(
                encoder,
                ComposedRetrievalDataset(split, split.triplets),
                training_args,
                "cirr",
                workdir / "train",
            )
            details["loss"] = summary.train_loss
        del encoder
        gc.collect()
        if args.arch == "tiny" or report["signature"].startswith(("qwen2_vl", "qwen2_5_vl")):
            backbone = "qwen2_vl" if report["signature"].startswith("qwen2_vl") else "qwen2_5_vl"
            with stage("load_captioner", report, memory):
                captioner = load_captioner(
                    backbone, checkpoint, AugmentArguments(max_new_tokens=4)
                )
            pair = CaptionPair("p0", "q0", "img0", images["img0"], "img2", images["img2"],
                               "make it brighter", "img1")  # fmt: skip
            with stage("caption_two_images_4_tokens", report, memory) as details:
                (generation,) = captioner.generate([pair])
                details["new_tokens"] = 4
            with stage("consistency_yes_no_forward", report, memory) as details:
                answers = ask_consistency(captioner, [(pair, generation.text or "x")], 1)
                details["p_yes"] = list(answers["p0"])
            del captioner
    output = Path(args.output) if args.output else (
        RESULTS / ("gpu" if device.type == "cuda" else "") / f"real_shape_{args.arch}.json"
    )
    report["throughput"] = {
        "signature": report["signature"],
        "device": report["device"],
        "encode_items_per_s": len(IMAGE_SIZES) * 3 / report["stages"]["embedder_forward"]["seconds"],
        "train_samples_per_s": 2 / report["stages"]["lora_train_step_gradient_checkpointing_gradcache"]["seconds"],
    }
    if "caption_two_images_4_tokens" in report["stages"]:
        report["throughput"]["caption_pairs_per_s"] = 1 / report["stages"]["caption_two_images_4_tokens"]["seconds"]
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(report, indent=2))
    print(f"wrote {output}")
    if args.arch != "tiny":
        file_rates(report, output, args.arch, device)


ACTIVATION_CAPTIONS = ("make it brighter", "zoom out and add a tree")


def activation_triplets(queries: int) -> list[Triplet]:
    """The `--activations` step's queries: references and targets cycling the four images."""
    count = len(IMAGE_SIZES)
    return [
        Triplet(f"q{q}", f"img{(2 * q) % count}", ACTIVATION_CAPTIONS[q % 2], f"img{(2 * q + 1) % count}")
        for q in range(queries)
    ]


def activations_check(args: RealShapeOptions) -> None:
    """One LoRA step without gradient checkpointing or GradCache, every row's activations
    alive at once: the configuration where activations, not weights, make the peak
    (tests/test_memory.py predicts it). Float32 on the CPU; a depth-reduced shape (the same
    widths, vocabulary and merger) keeps the weights small and the step within minutes."""
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dtype_name = args.dtype or ("bfloat16" if device.type == "cuda" else "float32")
    depth = (args.text_layers, args.vision_layers)
    memory = PeakMemory(device)
    report: dict = {
        "arch": args.arch, "dtype": dtype_name, "text_layers": depth[0], "vision_layers": depth[1],
        "queries": args.activations, "gradient_checkpointing": False, "grad_cache": False,
        "lora_target_modules": args.lora_target_modules,
        "device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu",
        "torch_threads": torch.get_num_threads(), "cpu_count": os.cpu_count(),
        "image_sizes": IMAGE_SIZES, "stages": {},
    }  # fmt: skip
    with tempfile.TemporaryDirectory() as workdir:
        workdir = Path(workdir)
        with stage("build", report, memory):
            checkpoint = write_real_shape_checkpoint(
                args.arch, workdir / "model", True, getattr(torch, dtype_name), depth=depth
            )
        report["signature"] = architecture_signature(checkpoint_config(checkpoint))
        images = make_images(workdir)
        with stage("load_embedder", report, memory):
            options = ModelArguments(lora=True, lora_target_modules=args.lora_target_modules)
            encoder = build_encoder(checkpoint, options, dtype=dtype_name).to(device)
        report["trainable_parameters"] = count_parameters(encoder.model, trainable_only=True)
        split = Split("train", activation_triplets(args.activations), images)
        training_args = IterativeTrainingArguments(
            output_dir=str(workdir / "train"), per_device_train_batch_size=args.activations,
            max_steps=1, learning_rate=1e-4, gradient_checkpointing=False, grad_cache=False,
            save_strategy="no", report_to="none", remove_unused_columns=False,
            dataloader_num_workers=0, use_cpu=device.type == "cpu", disable_tqdm=True,
        )  # fmt: skip
        name = "lora_train_step_no_checkpointing"
        with stage(name, report, memory) as details:
            summary = train_round(
                encoder, ComposedRetrievalDataset(split, split.triplets), training_args, "cirr",
                workdir / "train",
            )  # fmt: skip
            details["loss"] = summary.train_loss
    output = Path(args.output) if args.output else (
        RESULTS / ("gpu" if device.type == "cuda" else "") / f"real_shape_{args.arch}_activations.json"
    )
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(report, indent=2))
    print(f"wrote {output}")


def file_rates(report: dict, output: Path, arch: str, device: torch.device) -> None:
    """File the rates in src/throughput.json for --plan (not over the GPU check's)."""
    throughput = report["throughput"]
    filed = measured_throughput(throughput["signature"], throughput["device"])
    if "gpu_check" in str(filed.get("source", "")):
        print("src/throughput.json keeps the GPU check's steady-state rates for this device")
        return
    repo = Path(__file__).resolve().parents[1]
    output = output.resolve()
    where = output.relative_to(repo) if output.is_relative_to(repo) else output
    machine = report["device"] if device.type == "cuda" else f"{report['cpu_count']}-core CPU"
    rates = {k: v for k, v in throughput.items() if k.endswith("_per_s")}
    record_throughput(throughput["signature"], throughput["device"], rates,
                      source=f"{where} (python -m benchmarks.real_shape_check --arch {arch}, "
                             f"{machine}, {report['dtype']})")  # fmt: skip
    print(f"filed {sorted(rates)} in src/throughput.json")


if __name__ == "__main__":
    main()
