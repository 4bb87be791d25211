"""Atomic file writes and JSON reads that name the file when it is broken.

A reader never sees half a file and a killed (or failed: disk full) write never replaces
the previous version: the new content goes to a temporary file beside the target, is
flushed to disk, and only then renamed over it.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path

from src.errors import IntegrityError


def write_atomic(path: str | Path, write: Callable[[object], None], binary: bool = False) -> None:
    """Call `write(file)` on a temporary file beside `path`, then rename it into place."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(handle, "wb" if binary else "w") as file:
            write(file)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def write_json_atomic(path: str | Path, payload: object, indent: int | None = 1) -> None:
    """Write JSON to a temporary file beside `path`, then rename it into place."""
    write_atomic(path, lambda file: json.dump(payload, file, indent=indent))


def read_json(path: str | Path) -> object:
    """A JSON file's content; a file that does not parse is an IntegrityError naming it."""
    path = Path(path)
    try:
        return json.loads(path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise IntegrityError(f"{path}: not valid JSON ({error}); it is damaged or truncated") from None
