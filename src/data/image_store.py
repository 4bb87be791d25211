"""The image store: each image decoded and resized once, at the model's pixel budget.

Qwen2-VL and Qwen2.5-VL processors resize every image to the size `smart_resize` gives for
their pixel budget (sides multiples of patch x merge) and then rescale, normalise and
patchify it. Decoding a 640 x 480 PNG and resizing it is most of that cost, and a round
pays it for every image in mining, training (each epoch) and evaluation. The store keeps
each image once as its resized pixels, H x W x 3 uint8, as the processor itself resized
them; a later load reads them memory-mapped, and the processor, finding the size already
right, does not resize again (torchvision returns an image of the target size untouched;
PIL copies it), so the pixel values it gives are identical to those of the original file
(tests/test_image_store.py; docs/notes.md says why).

Layout: `DIR/<settings>/` per resize setting (the folder name carries the budget and a
digest of everything the resized pixels depend on: processor class and backend, min / max
pixels, patch and merge size, resampling, RGB conversion, and the versions of
transformers, torch, torchvision and Pillow, with torch's CPU kernel level), holding
`settings.json` and one `xx/<key>.npy` per image. An entry's key is the digest of the
image's resolved path and its stamp (size, mtime_ns, ctime_ns): a file written again (even
with the same size and mtime: its ctime moves) or another budget is a new key, never an
old entry. Entries are `.npy` files (`np.load(path, mmap_mode="r")` reads them) followed by
a 16-byte trailer (a magic word and the XXH3-64 of the pixels); a read checks the header
(uint8, 3 channels, sides on the patch grid, a size the processor keeps), the file's
length and the checksum, and an entry that fails is made again, never served. Writes go
to a temporary file in the entry's folder and are published under their name by a hard
link, which never replaces an existing entry (another node may have it memory-mapped), so
any number of processes (DDP ranks on several nodes, DataLoader workers, ablation jobs)
fill one store at once: a reader sees a whole entry or none, and two writers of one image
write the same bytes (the first published stays). Entries of
changed files are not removed; delete the folder to reclaim the space (safe between runs).

`ModelImages.load_for_model(path)` is the one way the training dataset and the encoder
read an image for the embedder: from the store for a processor with a pixel budget, the
decoded original otherwise (LLaVA-NeXT tiles images on its own grid; the captioner and
the report read originals with `load_image`).
"""

from __future__ import annotations

import contextlib
import copy
import errno
import io
import json
import logging
import mmap
import os
import tempfile
from pathlib import Path

import numpy as np
import PIL
import torch
import torchvision
import transformers
import xxhash
from PIL import Image
from transformers import ProcessorMixin
from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil
from transformers.models.qwen2_vl.image_processing_qwen2_vl import (
    Qwen2VLImageProcessor,
    smart_resize,
)

from src.artifacts import digest
from src.data.images import ImageLoadError, load_image, to_rgb

logger = logging.getLogger(__name__)

STORE_VERSION = 1
SETTINGS_NAME = "settings.json"
TRAILER_MAGIC = b"CIRSTORE"
TRAILER_SIZE = len(TRAILER_MAGIC) + 8  # magic + XXH3-64 of the pixels
NPY_VERSION = (1, 0)
STORED_PROCESSORS = (Qwen2VLImageProcessor, Qwen2VLImageProcessorPil)
_ANNOUNCED: set[Path] = set()  # store folders this process has logged
# What link(2) answers where a filesystem has no hard links (some FUSE and object stores).
NO_HARD_LINKS = (errno.EPERM, errno.EOPNOTSUPP, errno.ENOSYS, errno.EMLINK, errno.EXDEV)


def store_settings(image_processor: object) -> dict | None:
    """What an image processor's resized pixels depend on; None: it is not served from a
    store (no pixel budget, or it does not resize)."""
    if not isinstance(image_processor, STORED_PROCESSORS) or not image_processor.do_resize:
        return None
    size = dict(image_processor.size)
    return {
        "store_version": STORE_VERSION,
        "class": type(image_processor).__name__,
        "backend": image_processor.backend,
        "min_pixels": size["shortest_edge"],
        "max_pixels": size["longest_edge"],
        "patch_size": image_processor.patch_size,
        "merge_size": image_processor.merge_size,
        "resample": int(image_processor.resample),
        "do_convert_rgb": bool(image_processor.do_convert_rgb),
        "versions": {
            "transformers": transformers.__version__,
            "torch": torch.__version__,
            "torchvision": torchvision.__version__,
            "pillow": PIL.__version__,
            "cpu_kernels": torch.backends.cpu.get_cpu_capability(),
        },
    }


def resized_pixels(image_processor: object, image: Image.Image) -> np.ndarray:
    """H x W x 3 uint8: `image` as the processor resizes it.

    The processor's own preprocessing runs, with rescaling and normalisation off (and one
    temporal copy per patch instead of two, which the resize does not depend on), so the
    size, the resampling and the code are its own; its output (patches, in its patch
    order) is put back into an image.
    """
    output = image_processor(
        images=[image],
        do_rescale=False,
        do_normalize=False,
        temporal_patch_size=1,
        return_tensors=None,
    )
    patches = np.asarray(output["pixel_values"])
    _, grid_h, grid_w = (int(v) for v in np.asarray(output["image_grid_thw"])[0])
    merge, patch = image_processor.merge_size, image_processor.patch_size
    channels = patches.shape[1] // (patch * patch)
    blocks = patches.reshape(grid_h // merge, grid_w // merge, merge, merge, channels, patch, patch)
    planes = blocks.transpose(4, 0, 2, 5, 1, 3, 6).reshape(channels, grid_h * patch, grid_w * patch)
    pixels = np.ascontiguousarray(planes.transpose(1, 2, 0))
    if pixels.dtype != np.uint8:  # the PIL backend patchifies in float32: whole values
        exact = pixels.astype(np.uint8)
        if not np.array_equal(exact, pixels):
            raise ValueError(
                f"{type(image_processor).__name__} resized to non-integer pixel values"
            )
        pixels = exact
    return pixels


def _stamp(info: os.stat_result) -> list[int]:
    return [info.st_size, info.st_mtime_ns, info.st_ctime_ns]


class ImageStore:
    """Resized images of one processor's resize settings, under `root`."""

    def __init__(self, root: str | Path, image_processor: object):
        settings = store_settings(image_processor)
        if settings is None:
            raise ValueError(
                f"{type(image_processor).__name__} images are not kept in an image store"
            )
        self.settings = settings
        self.image_processor = copy.deepcopy(image_processor)
        self.factor = settings["patch_size"] * settings["merge_size"]
        name = (
            f"{settings['class']}_{settings['min_pixels']}-{settings['max_pixels']}px_"
            f"{digest(settings)[:16]}"
        )
        self.directory = Path(root) / name
        self._writable = True
        self.directory.mkdir(parents=True, exist_ok=True)
        settings_file = self.directory / SETTINGS_NAME
        if not settings_file.is_file():
            text = json.dumps(settings, indent=1)
            with contextlib.suppress(OSError):
                self._write_file(settings_file, text.encode())

    def __repr__(self) -> str:
        return f"ImageStore({str(self.directory)!r})"

    def entry(self, path: str | Path) -> tuple[str, list[int], Path]:
        """(resolved path, stamp, entry file) of an image file."""
        resolved = os.path.realpath(path)
        try:
            stamp = _stamp(os.stat(resolved))
        except OSError as error:
            raise ImageLoadError(f"cannot read image {path}: {error}") from error
        key = xxhash.xxh3_128(json.dumps([resolved, *stamp]).encode()).hexdigest()
        return resolved, stamp, self.directory / key[:2] / f"{key}.npy"

    def keeps_size(self, height: int, width: int) -> bool:
        """Whether the processor leaves an image of this size as it is (smart_resize's fixed
        point). Not always: with min_pixels close to max_pixels, a size scaled up to the
        minimum can exceed the maximum; such images are decoded each time, not stored."""
        settings = self.settings
        return smart_resize(
            height, width, self.factor, settings["min_pixels"], settings["max_pixels"]
        ) == (height, width)

    def read(self, entry: Path) -> np.ndarray | None:
        """The pixels of an entry, memory-mapped, or None if it is absent or fails a check."""
        try:
            with open(entry, "rb") as file:
                if np.lib.format.read_magic(file) != NPY_VERSION:
                    return self._damaged(entry, "not an .npy 1.0 file")
                shape, fortran_order, dtype = np.lib.format.read_array_header_1_0(file)
                offset = file.tell()
                length = os.fstat(file.fileno()).st_size
                if (
                    dtype != np.uint8
                    or fortran_order
                    or len(shape) != 3
                    or shape[2] != 3
                    or shape[0] % self.factor
                    or shape[1] % self.factor
                    or not self.keeps_size(shape[0], shape[1])
                ):
                    return self._damaged(entry, f"unexpected array {shape} {dtype}")
                size = shape[0] * shape[1] * 3
                if length != offset + size + TRAILER_SIZE:
                    return self._damaged(
                        entry, f"{length} bytes, {offset + size + TRAILER_SIZE} expected"
                    )
                mapped = mmap.mmap(file.fileno(), 0, access=mmap.ACCESS_READ)
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as error:
            return self._damaged(entry, str(error))
        pixels = np.frombuffer(mapped, np.uint8, size, offset)
        trailer = mapped[offset + size :]
        if trailer[: len(TRAILER_MAGIC)] != TRAILER_MAGIC or trailer[len(TRAILER_MAGIC) :] != (
            xxhash.xxh3_64_digest(pixels)
        ):
            return self._damaged(entry, "checksum mismatch")
        return pixels.reshape(shape)

    @staticmethod
    def _damaged(entry: Path, reason: str) -> None:
        logger.warning("image store entry %s not used (%s): made again", entry, reason)
        return None

    def _write_file(self, target: Path, data: bytes | list) -> None:
        """Write to a temporary file beside `target`, then publish it under its name without
        replacing anything: a hard link fails if the name exists (another writer of the same
        bytes came first, and its file stays). Replacing a file that another node has
        memory-mapped would pull it from under that reader on a network filesystem (NFS:
        ESTALE, SIGBUS). Not synced: an entry cut short by a crash fails the read's checks
        and is made again. Where the filesystem has no hard links, renamed into place only
        if the name is still free (two writers of one image write the same bytes)."""
        target.parent.mkdir(parents=True, exist_ok=True)
        handle, temporary = tempfile.mkstemp(
            prefix=f".{target.name}.", suffix=".tmp", dir=target.parent
        )
        try:
            with os.fdopen(handle, "wb") as file:
                for part in data if isinstance(data, list) else [data]:
                    file.write(part)
            try:
                os.link(temporary, target)
            except FileExistsError:
                pass  # published by another writer: keep theirs
            except OSError as error:
                if error.errno not in NO_HARD_LINKS:
                    raise
                if not os.path.exists(target):
                    os.rename(temporary, target)
        finally:
            Path(temporary).unlink(missing_ok=True)

    def write(self, entry: Path, pixels: np.ndarray) -> None:
        buffer = io.BytesIO()
        np.lib.format.write_array_header_1_0(
            buffer, np.lib.format.header_data_from_array_1_0(pixels)
        )
        head = buffer.getvalue()
        data = memoryview(np.ascontiguousarray(pixels)).cast("B")
        self._write_file(entry, [head, data, TRAILER_MAGIC + xxhash.xxh3_64_digest(data)])

    def lookup(self, path: str | Path) -> np.ndarray | Image.Image:
        """The stored pixels of an image (H x W x 3 uint8), made and stored first if need be;
        the decoded original instead where the processor would not keep its resized size."""
        _, stamp, entry = self.entry(path)
        stored = self.read(entry)
        if stored is not None:
            return stored
        if entry.exists():  # damaged: the one case an entry is removed, to be made again
            with contextlib.suppress(OSError):
                entry.unlink()
        image = load_image(path)
        pixels = resized_pixels(self.image_processor, image)
        if not self.keeps_size(*pixels.shape[:2]):
            return image
        _, now, _ = self.entry(path)
        if now == stamp and self._writable:  # not if the file changed while it was read
            try:
                self.write(entry, pixels)
            except OSError as error:
                self._writable = False
                logger.warning(
                    "image store %s not writable (%s): images are decoded each time",
                    self.directory,
                    error,
                )
        return pixels

    def load(self, path: str | Path) -> Image.Image:
        """The image, resized as the processor resizes it, as an RGB PIL image."""
        found = self.lookup(path)
        return Image.fromarray(found) if isinstance(found, np.ndarray) else found


class ModelImages:
    """How the embedder's images are read: `load_for_model(path)`.

    With a store directory and a processor that has a pixel budget, from the image store
    (pixel values identical to the original file's after the processor); otherwise the
    original, decoded (`load_image`).
    """

    def __init__(
        self, processor: ProcessorMixin | None = None, store_dir: str | Path | None = None
    ):
        self.store: ImageStore | None = None
        if processor is None or store_dir is None:
            return
        image_processor = getattr(processor, "image_processor", processor)
        if store_settings(image_processor) is None:
            return
        try:
            self.store = ImageStore(store_dir, image_processor)
        except OSError as error:  # e.g. a read-only folder: decode as without a store
            logger.warning(
                "image store %s not usable (%s): images are decoded each time", store_dir, error
            )
            return
        if self.store.directory not in _ANNOUNCED:
            _ANNOUNCED.add(self.store.directory)
            logger.info("images for the model: image store %s", self.store.directory)

    def __repr__(self) -> str:
        return f"ModelImages({self.store!r})"

    def load_for_model(self, path: str | Path | Image.Image) -> Image.Image:
        """The image for the embedder; an image already in memory (a user's query) as RGB."""
        if isinstance(path, Image.Image):
            return to_rgb(path)
        return self.store.load(path) if self.store is not None else load_image(path)
