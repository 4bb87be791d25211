"""Sizes and hashes of the files a run writes, and their cheap re-check.

Every artifact the job writes is recorded as {"size", "xxh3_128"} when it is written; a
later run trusts it only if the file on disk still matches. The hash is xxHash's XXH3
(128 bits): it detects truncation and corruption at about 10 GB/s, where sha256 runs at
about 0.5 GB/s on this project's machine, which matters for multi-GB checkpoints.

Hashing a multi-GB checkpoint again on every use would still cost seconds, so a
`DigestCache` remembers each file's hash by its inode, together with its stamp (size,
mtime, ctime): while the stamp is unchanged the file has not been written since, and the
stored hash is reused (renaming a folder keeps its files' inodes and stamps). ctime cannot
be set from user space, so even a copy that preserves mtime (`cp -p`) is hashed again.
"""

from __future__ import annotations

import contextlib
import json
from pathlib import Path

import xxhash

from src.experiment_io import write_json_atomic

HASH_NAME = "xxh3_128"
_BLOCK = 8 * 1024 * 1024


def file_hash(path: str | Path) -> str:
    """The XXH3-128 hex digest of a file's bytes."""
    digest = xxhash.xxh3_128()
    with open(path, "rb") as file:
        while block := file.read(_BLOCK):
            digest.update(block)
    return digest.hexdigest()


def bytes_hash(data: bytes) -> str:
    return xxhash.xxh3_128(data).hexdigest()


def _stamp(path: Path) -> tuple[str, list[int]]:
    """(inode key, [size, mtime, ctime]) of a file."""
    info = path.stat()
    return f"{info.st_dev}:{info.st_ino}", [info.st_size, info.st_mtime_ns, info.st_ctime_ns]


class DigestCache:
    """File hashes remembered by stamp in one JSON file (None: no memory, always hash)."""

    def __init__(self, stamp_file: str | Path | None = None):
        self.stamp_file = Path(stamp_file) if stamp_file else None
        self._stamps: dict[str, dict] | None = None

    def _load(self) -> dict[str, dict]:
        if self._stamps is None:
            self._stamps = {}
            if self.stamp_file is not None and self.stamp_file.is_file():
                with contextlib.suppress(OSError, ValueError):
                    loaded = json.loads(self.stamp_file.read_text())
                    self._stamps = loaded if isinstance(loaded, dict) else {}
        return self._stamps

    def record(self, path: str | Path) -> dict:
        """{"size", "xxh3_128"} of the file as it is now (hashed only if its stamp changed)."""
        stamps, (inode, stamp) = self._load(), _stamp(Path(path))
        known = stamps.get(inode)
        if known is not None and known.get("stamp") == stamp:
            return {"size": stamp[0], HASH_NAME: known[HASH_NAME]}
        digest = file_hash(path)
        stamps[inode] = {"stamp": stamp, HASH_NAME: digest}
        if self.stamp_file is not None:
            with contextlib.suppress(OSError):  # only a memory; a failed write costs a re-hash
                write_json_atomic(self.stamp_file, stamps, indent=None)
        return {"size": stamp[0], HASH_NAME: digest}

    def mismatch(self, path: str | Path, expected: dict) -> str | None:
        """Why the file does not match its record (None when it does)."""
        path = Path(path)
        if not path.is_file():
            return f"{path} is missing"
        size = path.stat().st_size
        if size != expected.get("size"):
            return f"{path} has {size} bytes, {expected.get('size')} were written"
        if self.record(path)[HASH_NAME] != expected.get(HASH_NAME):
            return f"{path} has changed since it was written (its hash differs)"
        return None

    def directory(self, directory: str | Path, skip: tuple[str, ...] = ()) -> dict[str, dict]:
        """Records of every file under `directory` (relative names, sorted), but `skip`."""
        directory = Path(directory)
        return {name: self.record(directory / name) for name in _file_names(directory, skip)}

    def directory_mismatch(
        self, directory: str | Path, expected: dict[str, dict], skip: tuple[str, ...] = ()
    ) -> str | None:
        """Why a directory's files do not match their records (None when every one does)."""
        directory = Path(directory)
        for name, record in sorted(expected.items()):
            reason = self.mismatch(directory / name, record)
            if reason is not None:
                return reason
        extra = sorted(set(_file_names(directory, skip)) - set(expected))
        if extra:
            return f"{directory / extra[0]} was added after the directory was written"
        return None


def _file_names(directory: Path, skip: tuple[str, ...]) -> list[str]:
    """Relative names of the files under `directory`, sorted, without `skip`."""
    names = (p.relative_to(directory).as_posix() for p in directory.rglob("*") if p.is_file())
    return sorted(name for name in names if name not in skip)
