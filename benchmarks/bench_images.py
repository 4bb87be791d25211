"""The image store at real image sizes: per-image cost, encoding and training throughput.

N photo-like 640 x 480 PNGs (gradients plus noise: they compress about as CIRR's do) are
generated once into a temporary folder; the tiny Qwen2-VL (src/offline/tiny.py) runs at
the default 448 x 448 budget (a 640 x 480 image becomes 504 x 364, 234 image tokens).

(a) Per image, one thread: decode (`load_image`), resize (the processor on the original
    minus the processor on the already-resized image), the rest of the processor
    (rescale, normalise, patchify), a read from a warm store, a store miss (decode, resize,
    write); images/s per core before (decode + processor) and after (store read +
    processor on the stored image).
(b) Encoding, `encode_rows` (batch 64, DataLoader workers 0): without the
    store, first pass (store being filled), later pass (store warm), and the bare forward
    over batches packed beforehand (the bound the data path is measured against).
(c) Training: IterativeTrainer steps of 32 queries (reference + target + 1 hard negative:
    96 images a step, workers 0), without and with a warm store, the two alternating step
    by step within a run; steady-state seconds per step (median of the steps after the
    first), and the part of it spent loading and collating the batch.

Everything runs on one thread (`--torch_threads 1`, so every figure is per core): on this
shared 2-core machine, two OpenMP threads made the tiny model's forward four times slower
than one (3.0 s against 0.72 s for 16 images, measured beside other jobs). Each part runs
--repeats times, the arms alternating within a repetition so that drift on
a shared machine touches them alike; the JSON gives every run, and the median and range
of the values and of the after / before ratios within a repetition.

    python -m benchmarks.bench_images --output benchmarks/results/images.json
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from transformers import TrainerCallback

from benchmarks import check_listed, parse_options
from src.arguments import (
    EncodeArguments,
    IterativeTrainingArguments,
    check_flags,
    default_training_arguments,
    flag,
    flag_of,
)
from src.data.collator import ContrastiveCollator
from src.data.dataset.composed_retrieval_dataset import ComposedRetrievalDataset
from src.data.image_store import ImageStore, ModelImages
from src.data.images import load_image
from src.data.records import Split, Triplet
from src.model.encoder import build_encoder
from src.offline.tiny import build_tiny_checkpoint
from src.retrieval.encode import EncodingRows, PackRows, RowDataset, encode_rows
from src.trainer_iterative import IterativeTrainer

WIDTH, HEIGHT = 640, 480


def stats(values: list[float]) -> dict:
    return {
        "median": statistics.median(values),
        "min": min(values),
        "max": max(values),
        "runs": values,
    }


def photo(seed: int) -> Image.Image:
    """Smooth gradients in random directions plus grain: about 0.6 MB as PNG, like CIRR's."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:HEIGHT, 0:WIDTH].astype(np.float32)
    channels = []
    for _ in range(3):
        a, b, c = rng.uniform(-1, 1, 3)
        wave = np.sin(x / rng.uniform(40, 160) + c * 6) * np.cos(y / rng.uniform(40, 160))
        channels.append(128 + 60 * (a * x / WIDTH + b * y / HEIGHT) + 50 * wave)
    image = np.stack(channels, -1) + rng.normal(0, 10, (HEIGHT, WIDTH, 3))
    return Image.fromarray(np.clip(image, 0, 255).astype(np.uint8))


def make_images(folder: Path, count: int) -> list[str]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(count):
        path = folder / f"img_{i:05d}.png"
        photo(i).save(path)
        paths.append(str(path))
    return paths


def timed(function, items) -> float:
    """Milliseconds per item of `function` over `items`."""
    start = time.perf_counter()
    for item in items:
        function(item)
    return (time.perf_counter() - start) * 1000 / len(items)


def per_image_costs(image_processor, paths: list[str], workdir: Path, repeats: int) -> dict:
    """(a): one thread, milliseconds per image."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    keys = ("decode", "processor_on_original", "store_fill", "store_read", "processor_on_stored")
    runs: dict[str, list[float]] = {key: [] for key in keys}
    for repeat in range(repeats):
        root = workdir / f"store_a{repeat}"
        store = ImageStore(root, image_processor)
        originals = [load_image(path) for path in paths]
        runs["decode"].append(timed(load_image, paths))
        runs["processor_on_original"].append(
            timed(lambda im: image_processor(images=[im], return_tensors="pt"), originals)
        )
        runs["store_fill"].append(timed(store.load, paths))
        runs["store_read"].append(timed(store.load, paths))
        stored = [store.load(path) for path in paths]
        runs["processor_on_stored"].append(
            timed(lambda im: image_processor(images=[im], return_tensors="pt"), stored)
        )
        shutil.rmtree(root)
    torch.set_num_threads(threads)
    result = {f"{key}_ms": stats(values) for key, values in runs.items()}
    resize = [
        o - s
        for o, s in zip(runs["processor_on_original"], runs["processor_on_stored"], strict=True)
    ]
    before = [
        1000 / (d + p) for d, p in zip(runs["decode"], runs["processor_on_original"], strict=True)
    ]
    after = [
        1000 / (r + p) for r, p in zip(runs["store_read"], runs["processor_on_stored"], strict=True)
    ]
    result["resize_ms"] = stats(resize)
    result["images_per_s_per_core_before"] = stats(before)
    result["images_per_s_per_core_after"] = stats(after)
    result["ratio_after_over_before"] = stats([a / b for a, b in zip(after, before, strict=True)])
    result["measured"] = (
        "one thread, milliseconds per image; resize = processor on the original minus processor "
        "on the stored (already resized) image; before = decode + processor, after = store "
        "read + processor on the stored image"
    )
    return result


def bare_forward_items_per_second(encoder, rows: EncodingRows, batch_size: int, images) -> float:
    pack = PackRows(encoder.processor, encoder.backbone)
    dataset = RowDataset(rows, list(range(len(rows.names))), images)
    batches = [
        pack([dataset[i] for i in range(start, min(start + batch_size, len(dataset)))])[1]
        for start in range(0, len(dataset), batch_size)
    ]
    start = time.perf_counter()
    with torch.no_grad():
        for batch in batches:
            encoder(**batch)
    return len(rows.names) / (time.perf_counter() - start)


def encode_throughput(encoder, paths: list[str], workdir: Path, args) -> dict:
    """(b): items/s of encode_rows without the store, filling it, and from it warm."""
    text = "<|image_pad|>"
    rows = EncodingRows("gallery", text, [Path(p).stem for p in paths], paths, [text] * len(paths))
    encoder.eval()

    def items_per_second(store: Path | None) -> float:
        start = time.perf_counter()
        encode_rows(encoder, rows, args.batch_size, 0, image_store=store)
        return len(paths) / (time.perf_counter() - start)

    items_per_second(None)  # warm-up
    runs: dict[str, list[float]] = {
        "no_store": [],
        "first_pass": [],
        "warm": [],
        "bare_forward": [],
    }
    for repeat in range(args.repeats):
        store = workdir / f"store_b{repeat}"
        runs["no_store"].append(items_per_second(None))
        runs["first_pass"].append(items_per_second(store))
        runs["warm"].append(items_per_second(store))
        images = ModelImages(encoder.processor, store)
        runs["bare_forward"].append(
            bare_forward_items_per_second(encoder, rows, args.batch_size, images)
        )
        shutil.rmtree(store)
    result = {f"{key}_items_per_s": stats(values) for key, values in runs.items()}
    for key in ("first_pass", "warm"):
        result[f"ratio_{key}_over_no_store"] = stats(
            [a / b for a, b in zip(runs[key], runs["no_store"], strict=True)]
        )
    result["items"] = len(paths)
    result["batch_size"] = args.batch_size
    return result


class AlternateImages(TrainerCallback):
    """Switch the dataset between the arms after every step, and time each step from the
    end of the one before, so that it includes loading and collating a batch (the Trainer
    fetches batches before `on_step_begin`): the arms share the run's drift, and the model's
    part of a step is the same in both (same shapes)."""

    def __init__(self, dataset: ComposedRetrievalDataset, arms: dict[str, ModelImages]):
        self.dataset, self.arms, self.order = dataset, arms, list(arms)
        self.begins: list[float] = []
        self.ends: list[float] = []
        dataset.use_images(arms[self.order[0]])

    def on_step_begin(self, args, state, control, **kwargs):
        self.begins.append(time.perf_counter())

    def on_step_end(self, args, state, control, **kwargs):
        self.ends.append(time.perf_counter())
        self.dataset.use_images(self.arms[self.order[len(self.ends) % len(self.order)]])

    def steady(self) -> dict[str, tuple[float, float]]:
        """{arm: median (seconds per step, seconds of it before the step proper)} over the
        steps after the first; a step counts for the arm that loaded during it."""
        steps: dict[str, list[float]] = {arm: [] for arm in self.order}
        data: dict[str, list[float]] = {arm: [] for arm in self.order}
        for i in range(1, len(self.ends)):
            arm = self.order[i % len(self.order)]
            steps[arm].append(self.ends[i] - self.ends[i - 1])
            data[arm].append(self.begins[i] - self.ends[i - 1])
        return {
            arm: (statistics.median(steps[arm]), statistics.median(data[arm])) for arm in self.order
        }


def training_throughput(model_dir: Path, paths: list[str], workdir: Path, args) -> dict:
    """(c): steady-state seconds per IterativeTrainer step, without and with a warm store,
    alternating step by step within each run."""
    names = {Path(p).stem: p for p in paths}
    keys = list(names)
    count = len(keys)
    # enough triplets that the run stays within one epoch (no second DataLoader start)
    triplets = [
        Triplet(
            pairid=str(i),
            reference=keys[i % count],
            caption="make it brighter",
            target=keys[(7 * i + 1) % count],
        )
        for i in range(args.train_batch_size * (args.train_steps + 2))
    ]
    negatives = {t.pairid: [keys[(13 * int(t.pairid) + 5) % count]] for t in triplets}
    split = Split(name="train", triplets=triplets, images=names)
    runs: dict[str, list[float]] = {"no_store": [], "store_warm": []}
    data: dict[str, list[float]] = {"no_store": [], "store_warm": []}
    for repeat in range(args.repeats):
        store = workdir / f"store_c{repeat}"
        torch.manual_seed(0)
        encoder = build_encoder(model_dir, dtype="float32")
        arms = {"no_store": ModelImages(), "store_warm": ModelImages(encoder.processor, store)}
        for path in paths:  # warm: every image stored before the timed steps
            arms["store_warm"].load_for_model(path)
        dataset = ComposedRetrievalDataset(split, triplets, negatives, num_hard_negatives=1)
        timer = AlternateImages(dataset, arms)
        trainer = IterativeTrainer(
            model=encoder,
            args=IterativeTrainingArguments(
                output_dir=str(workdir / "trainer"),
                report_to="none",
                remove_unused_columns=False,
                per_device_train_batch_size=args.train_batch_size,
                max_steps=args.train_steps,
                save_strategy="no",
                logging_steps=1000,
                dataloader_num_workers=0,
                use_cpu=True,
                disable_tqdm=True,
            ),
            train_dataset=dataset,
            data_collator=ContrastiveCollator(encoder.processor, encoder.backbone),
            callbacks=[timer],
        )
        trainer.train()
        for arm, (step, loading) in timer.steady().items():
            runs[arm].append(step)
            data[arm].append(loading)
        shutil.rmtree(store)
    samples = {key: [args.train_batch_size / s for s in values] for key, values in runs.items()}
    return {
        "queries_per_step": args.train_batch_size,
        "images_per_step": args.train_batch_size * 3,
        "steps_per_run": args.train_steps,
        "measured": "the arms alternate step by step within each run; per run, the median over "
        "the steps after the first of the time from one step's end to the next's (it includes "
        "loading and collating a batch); data_path: the part of it before the step proper",
        **{f"{key}_s_per_step": stats(values) for key, values in runs.items()},
        **{f"{key}_data_path_s_per_step": stats(values) for key, values in data.items()},
        **{f"{key}_samples_per_s": stats(values) for key, values in samples.items()},
        "ratio_store_over_no_store_samples_per_s": stats(
            [a / b for a, b in zip(samples["store_warm"], samples["no_store"], strict=True)]
        ),
    }


PARTS = ("a", "b", "c")


@dataclasses.dataclass
class ImagesOptions:
    output: str = flag("benchmarks/results/images.json", "The JSON's path.", results=False)
    num_images: int = flag(192, "Photo-like 640 x 480 PNGs generated.", at_least=1)
    per_image_sample: int = flag(48, "Images timed in (a).", at_least=1)
    batch_size: int = flag_of(EncodeArguments, "encode_batch_size")
    train_batch_size: int = flag_of(
        IterativeTrainingArguments, "batch_size", default=default_training_arguments()["per_device_train_batch_size"]
    )
    train_steps: int = flag(
        9, "Training steps per run, the arms alternating (each needs a step after the first).", at_least=3
    )
    torch_threads: int = flag(1, "Threads of the model's forward.", at_least=1)
    repeats: int = flag(3, "Runs of each part, the arms alternating within each.", at_least=1)
    parts: str = flag(",".join(PARTS), "Which parts to run, comma-separated: a (per image), b (encoding), c (training).")

    def __post_init__(self) -> None:
        check_flags(self)
        check_listed("parts", self.parts, PARTS)


def main(argv: list[str] | None = None) -> None:
    args = parse_options(ImagesOptions, argv, __doc__.split("\n\n")[0])
    parts = set(check_listed("parts", args.parts, PARTS))
    torch.set_num_threads(args.torch_threads)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as directory:
        workdir = Path(directory)
        paths = make_images(workdir / "images", args.num_images)
        model_dir = build_tiny_checkpoint("qwen2_vl", workdir / "tiny", image_size=56)
        encoder = build_encoder(model_dir, dtype="float32")
        image_processor = encoder.processor.image_processor
        store = ImageStore(workdir / "probe", image_processor)
        resized = store.load(paths[0])
        entry_bytes = os.path.getsize(store.entry(paths[0])[2])
        result = {
            "setup": {
                "images": args.num_images,
                "image_size": [WIDTH, HEIGHT],
                "png_bytes_mean": statistics.mean(os.path.getsize(p) for p in paths),
                "pixel_budget": [
                    image_processor.size["shortest_edge"],
                    image_processor.size["longest_edge"],
                ],
                "resized_size": list(resized.size),
                "store_entry_bytes": entry_bytes,
                "model": "tiny qwen2_vl (src/offline/tiny.py), float32",
                "torch_threads": torch.get_num_threads(),
                "cpu_count": os.cpu_count(),
                "load_average_at_start": os.getloadavg(),
                "device": "cpu",
            }
        }
        if "a" in parts:
            sample = paths[: args.per_image_sample]
            result["per_image"] = per_image_costs(image_processor, sample, workdir, args.repeats)
            print(json.dumps(result["per_image"], indent=1), flush=True)
        if "b" in parts:
            result["encode"] = encode_throughput(encoder, paths, workdir, args)
            print(json.dumps(result["encode"], indent=1), flush=True)
        if "c" in parts:
            result["train"] = training_throughput(model_dir, paths, workdir, args)
            print(json.dumps(result["train"], indent=1), flush=True)
        result["setup"]["load_average_at_end"] = os.getloadavg()
        result["setup"]["seconds"] = time.perf_counter() - started
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output).write_text(json.dumps(result, indent=2))
    print(json.dumps(result["setup"], indent=2))


if __name__ == "__main__":
    main()
