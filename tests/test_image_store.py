"""The image store: the processor gives identical pixel values from a stored image and from
the original file; a changed file or budget is never served; processes share one store;
a damaged entry is made again; the embedder's inputs and embeddings do not change."""

from __future__ import annotations

import copy
import logging
import multiprocessing
import os
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import xxhash
from PIL import Image
from test_trainer import trainer_args
from transformers import LlavaNextImageProcessor, Qwen2VLImageProcessor
from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

from src.arguments import DataArguments
from src.data.collator import ContrastiveCollator
from src.data.dataset.composed_retrieval_dataset import ComposedRetrievalDataset
from src.data.image_store import ImageStore, ModelImages, resized_pixels
from src.data.images import load_image
from src.data.records import Split, Triplet
from src.job import image_store_dir
from src.model.encoder import build_encoder
from src.model.registry import DEFAULT_MAX_PIXELS, DEFAULT_MIN_PIXELS
from src.retrieval.encode import EncodingRows, encode_rows
from src.training import train_round

# (width, height): a CIRR photo, one above the budget, a tall one, sizes the processor
# rounds (256 -> 252, 300 x 200 -> 308 x 196) and one below min_pixels (scaled up).
SIZES = [(640, 480), (1024, 768), (500, 900), (256, 256), (300, 200), (57, 31)]
BACKENDS = {"torchvision": Qwen2VLImageProcessor, "pil": Qwen2VLImageProcessorPil}


def image_processor(
    backend: str = "torchvision", min_pixels=DEFAULT_MIN_PIXELS, max_pixels=DEFAULT_MAX_PIXELS
):
    return BACKENDS[backend](
        min_pixels=min_pixels,
        max_pixels=max_pixels,
        patch_size=14,
        merge_size=2,
        temporal_patch_size=2,
    )


def photo(width: int, height: int, seed: int) -> Image.Image:
    """Gradients plus noise: content that resamples like a photo (no flat areas)."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width]
    base = np.stack([x * 255 / width, y * 255 / height, (x + y) * 127 / (width + height)], -1)
    noisy = base + rng.normal(0, 24, (height, width, 3))
    return Image.fromarray(np.clip(noisy, 0, 255).astype(np.uint8))


def write_photo(path: Path, width: int, height: int, seed: int) -> Path:
    photo(width, height, seed).save(path)
    return path


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> list[Path]:
    """Photos of every size, written once for the module (no test changes them; each test's
    store is its own)."""
    folder = tmp_path_factory.mktemp("images")
    return [write_photo(folder / f"{w}x{h}.png", w, h, i) for i, (w, h) in enumerate(SIZES)]


def entries(store: ImageStore) -> list[Path]:
    return sorted(store.directory.glob("*/*.npy"))


def processed(processor, pictures) -> dict:
    return processor(images=list(pictures), return_tensors="pt")


@pytest.mark.parametrize("backend", sorted(BACKENDS))
def test_stored_images_give_the_processors_pixel_values_exactly(backend, images, tmp_path):
    processor = image_processor(backend)
    store = ImageStore(tmp_path / "store", processor)
    originals = [load_image(path) for path in images]
    filled = [store.load(path) for path in images]  # misses: made and stored
    assert len(entries(store)) == len(images)
    served = [store.load(path) for path in images]  # hits: read back, memory-mapped
    for path, original, stored in zip(images, originals, served, strict=True):
        expected = processed(processor, [original])
        for pictures in ([stored], [filled[images.index(path)]]):
            got = processed(processor, pictures)
            assert torch.equal(
                torch.as_tensor(got["pixel_values"]), torch.as_tensor(expected["pixel_values"])
            ), path.name
            assert torch.equal(
                torch.as_tensor(got["image_grid_thw"]), torch.as_tensor(expected["image_grid_thw"])
            )
        # the stored image is at the size smart_resize gives, so the processor keeps it
        assert stored.size[0] % 28 == 0 and stored.size[1] % 28 == 0
        assert store.keeps_size(stored.size[1], stored.size[0])
    # one batch of every size, as the collator packs them
    batch, stored_batch = processed(processor, originals), processed(processor, served)
    assert torch.equal(
        torch.as_tensor(batch["pixel_values"]), torch.as_tensor(stored_batch["pixel_values"])
    )
    # entries are plain .npy files (plus a trailer numpy ignores)
    first = np.load(store.entry(images[0])[2], mmap_mode="r")
    assert first.dtype == np.uint8 and first.shape == (364, 504, 3)
    assert np.array_equal(first, np.asarray(served[0]))


def test_a_size_the_processor_would_not_keep_is_not_stored(tmp_path):
    """min_pixels == max_pixels == 56 * 56 (the tiny checkpoint's own budget): 57 x 31 is
    scaled up to 84 x 56, which that budget would shrink again, so it is served decoded."""
    processor = image_processor(min_pixels=56 * 56, max_pixels=56 * 56)
    store = ImageStore(tmp_path / "store", processor)
    odd = write_photo(tmp_path / "odd.png", 57, 31, 0)
    square = write_photo(tmp_path / "square.png", 56, 56, 1)
    assert not store.keeps_size(*resized_pixels(processor, load_image(odd)).shape[:2])
    for path in (odd, square, odd, square):
        got = processed(processor, [store.load(path)])["pixel_values"]
        assert torch.equal(got, processed(processor, [load_image(path)])["pixel_values"])
    assert [entry for entry in entries(store)] == [store.entry(square)[2]]


def test_a_changed_file_is_never_served_from_the_store(tmp_path):
    processor = image_processor()
    store = ImageStore(tmp_path / "store", processor)
    path = tmp_path / "photo.bmp"  # BMP: the file's size depends on the image's size only
    photo(640, 480, seed=0).save(path)
    old = np.asarray(store.load(path)).copy()
    before = os.stat(path)
    time.sleep(0.01)
    photo(640, 480, seed=1).save(path)  # other pixels, same size,
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))  # and the old mtime
    after = os.stat(path)
    assert (after.st_size, after.st_mtime_ns) == (before.st_size, before.st_mtime_ns)
    new = np.asarray(store.load(path)).copy()
    assert not np.array_equal(new, old)
    assert np.array_equal(new, resized_pixels(processor, load_image(path)))
    # touched (same content): a new key, the old entry is not read
    key = store.entry(path)[2]
    time.sleep(0.01)
    os.utime(path)
    assert store.entry(path)[2] != key
    assert np.array_equal(np.asarray(store.load(path)), new)
    assert len(entries(store)) == 3  # one per stamp; stale ones stay until the folder is removed


def test_a_changed_budget_is_never_served_from_the_store(images, tmp_path):
    path = images[0]
    default = ImageStore(tmp_path / "store", image_processor())
    smaller = ImageStore(tmp_path / "store", image_processor(max_pixels=224 * 224))
    pil = ImageStore(tmp_path / "store", image_processor("pil"))
    assert len({default.directory, smaller.directory, pil.directory}) == 3
    assert default.load(path).size == (504, 364)
    assert smaller.load(path).size == (252, 168)
    assert len(entries(default)) == len(entries(smaller)) == 1
    assert (default.directory / "settings.json").is_file()


def _fill(root: str, paths: list[str], barrier) -> list[str]:
    """One process: open the store, wait for the others, load every image twice."""
    torch.set_num_threads(1)
    store = ImageStore(root, image_processor())
    barrier.wait()
    digests = []
    for path in paths:
        first, second = np.asarray(store.load(path)), np.asarray(store.load(path))
        assert np.array_equal(first, second)
        digests.append(xxhash.xxh3_128_hexdigest(first.tobytes()))
    return digests


def test_several_processes_fill_one_store_safely(images, tmp_path):
    root = tmp_path / "store"
    paths = [str(path) for path in images]
    context = multiprocessing.get_context("fork")
    barrier = context.Manager().Barrier(4)
    with context.Pool(4) as pool:
        orders = [paths, paths[::-1], paths[2:] + paths[:2], paths[::2] + paths[1::2]]
        results = [pool.apply_async(_fill, (str(root), order, barrier)) for order in orders]
        digests = [
            dict(zip(order, result.get(timeout=300), strict=True))
            for order, result in zip(orders, results, strict=True)
        ]
    assert all(d == digests[0] for d in digests)
    store = ImageStore(root, image_processor())
    assert len(entries(store)) == len(paths)
    assert not list(store.directory.glob("*/.*.tmp"))
    for path in images:
        stored = store.read(store.entry(path)[2])
        assert stored is not None
        assert np.array_equal(stored, resized_pixels(store.image_processor, load_image(path)))


def test_an_entry_is_published_without_replacing_one_another_node_may_have_mapped(images, tmp_path):
    """On a shared filesystem another node may hold an entry memory-mapped: a second writer
    of the same image (another node that missed it a moment ago) must not replace the file
    under it (os.replace would: NFS then answers ESTALE, or the reader gets SIGBUS)."""
    store = ImageStore(tmp_path / "store", image_processor())
    path = images[0]
    store.lookup(path)  # made and published
    entry = store.entry(path)[2]
    mapped = store.read(entry)  # a reader's memory map of the published file
    before = os.stat(entry)
    store.write(entry, resized_pixels(store.image_processor, load_image(path)))  # the late writer
    after = os.stat(entry)
    assert (after.st_ino, after.st_nlink) == (before.st_ino, before.st_nlink)
    assert not list(store.directory.glob("*/.*.tmp"))  # its temporary file is gone
    assert np.array_equal(mapped, store.read(entry))


@pytest.mark.parametrize("damage", ["truncated", "flipped byte", "not npy", "empty"])
def test_a_damaged_entry_is_made_again(damage, images, tmp_path, caplog):
    store = ImageStore(tmp_path / "store", image_processor())
    path = images[0]
    good = np.asarray(store.load(path)).copy()
    entry = store.entry(path)[2]
    data = entry.read_bytes()
    if damage == "truncated":
        entry.write_bytes(data[: len(data) // 2])
    elif damage == "flipped byte":
        entry.write_bytes(data[:1000] + bytes([data[1000] ^ 1]) + data[1001:])
    elif damage == "not npy":
        entry.write_bytes(b"garbage" * 100)
    else:
        entry.write_bytes(b"")
    with caplog.at_level(logging.WARNING):
        assert np.array_equal(np.asarray(store.load(path)), good)
    assert "not used" in caplog.text
    assert entry.read_bytes() == data  # made again
    assert np.array_equal(store.read(entry), good)


def test_model_images_use_the_store_only_with_a_pixel_budget(tmp_path, images):
    qwen = ModelImages(image_processor(), tmp_path / "store")
    assert qwen.store is not None and qwen.load_for_model(images[0]).size == (504, 364)
    assert ModelImages(image_processor(), None).store is None
    llava = ModelImages(LlavaNextImageProcessor(), tmp_path / "store")
    assert llava.store is None and llava.load_for_model(images[0]).size == (640, 480)
    assert image_store_dir(DataArguments(cache_dir="c")) == str(Path("c") / "image_store")
    assert image_store_dir(DataArguments(cache_dir="c", image_store_dir="/s")) == "/s"
    assert image_store_dir(DataArguments(cache_dir="c", image_store=False)) is None


def test_embeddings_from_stored_images_equal_those_from_the_files(tiny_qwen, images, tmp_path):
    """The default job's numbers do not change: the tiny Qwen2-VL at the default budget gives
    bit-identical inputs and embeddings, in encoding and in training batches."""
    encoder = build_encoder(tiny_qwen, dtype="float32").eval()
    store_dir = tmp_path / "store"
    text = "<|image_pad|>"
    rows = EncodingRows(
        "gallery", text, [p.name for p in images], [str(p) for p in images], [text] * len(images)
    )
    # one batch of every size: embeddings from the files, while filling the store, from it
    plain = encode_rows(encoder, rows, batch_size=len(images), num_workers=0)
    filling = encode_rows(encoder, rows, len(images), 0, image_store=store_dir)
    warm = encode_rows(encoder, rows, len(images), 0, image_store=store_dir)
    assert torch.equal(torch.from_numpy(plain), torch.from_numpy(filling))
    assert torch.equal(torch.from_numpy(plain), torch.from_numpy(warm))
    model_images = ModelImages(encoder.processor, store_dir)
    assert model_images.store is not None and len(entries(model_images.store)) == len(images)
    texts = [text] * len(images)
    a = encoder.backbone.pack(encoder.processor, texts, [load_image(p) for p in images])
    b = encoder.backbone.pack(
        encoder.processor, texts, [model_images.load_for_model(p) for p in images]
    )
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)

    # training batches: the dataset through the store gives the collator the same inputs
    names = {p.stem: str(p) for p in images}
    keys = list(names)
    triplets = [
        Triplet(
            pairid=str(i),
            reference=keys[i],
            caption="make it red",
            target=keys[(i + 1) % len(keys)],
        )
        for i in range(len(keys))
    ]
    split = Split(name="train", triplets=triplets, images=names)
    negatives = {t.pairid: [keys[(int(t.pairid) + 2) % len(keys)]] for t in triplets}
    collator = ContrastiveCollator(encoder.processor, encoder.backbone)
    batches = []
    for images_source in (None, ModelImages(encoder.processor, store_dir)):
        dataset = ComposedRetrievalDataset(split, triplets, negatives, num_hard_negatives=1)
        if images_source is not None:
            dataset.use_images(images_source)
        batches.append(collator([dataset[i] for i in range(len(dataset))]))
    for side in ("query_chunks", "candidate_chunks"):
        for x, y in zip(batches[0][side], batches[1][side], strict=True):
            assert all(torch.equal(x[k], y[k]) for k in x)


def test_a_training_step_through_the_store_is_bit_identical(tiny_qwen, tmp_path):
    """train_round with and without the image store: the same loss and the same weights."""
    folder = tmp_path / "images"
    folder.mkdir()
    small = [(57, 31), (256, 256), (300, 200), (31, 57)]
    paths = {
        f"i{k}": str(write_photo(folder / f"i{k}.png", w, h, k)) for k, (w, h) in enumerate(small)
    }
    keys = list(paths)
    triplets = [
        Triplet(pairid=str(i), reference=keys[i], caption="make it red", target=keys[(i + 1) % 4])
        for i in range(4)
    ]
    split = Split(name="train", triplets=triplets, images=paths)
    negatives = {t.pairid: [keys[(int(t.pairid) + 2) % 4]] for t in triplets}
    base = build_encoder(tiny_qwen, dtype="float32")
    results = []
    for store in (None, tmp_path / "store"):
        encoder = copy.deepcopy(base)
        dataset = ComposedRetrievalDataset(split, triplets, negatives, num_hard_negatives=1)
        args = trainer_args(tmp_path, disable_tqdm=True)
        summary = train_round(
            encoder, dataset, args, "cirr", tmp_path / f"run_{store is None}", image_store=store
        )
        if store is not None:
            assert len(entries(dataset.images.store)) == len(paths)
        results.append((summary.train_loss, dict(encoder.named_parameters())))
    (loss_a, weights_a), (loss_b, weights_b) = results
    assert loss_a == loss_b
    assert all(torch.equal(weights_a[name], weights_b[name]) for name in weights_a)
