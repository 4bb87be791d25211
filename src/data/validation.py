"""Checks shared by the annotation readers.

Every failure is an `AnnotationError` whose message starts with the file it concerns and
names the entry and field, so a broken download is found at load time, before training.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from src.data.records import Split
from src.errors import AnnotationError

MISSING_SHOWN = 5


def type_name(expected: type | tuple[type, ...]) -> str:
    if isinstance(expected, tuple):
        return " or ".join(t.__name__ for t in expected)
    return expected.__name__


def is_instance(value: Any, expected: type | tuple[type, ...]) -> bool:
    """isinstance that does not let a bool pass for an int or float."""
    if isinstance(value, bool):
        return bool in (expected if isinstance(expected, tuple) else (expected,))
    return isinstance(value, expected)


def entry_label(index: int | str, pairid: Any = None) -> str:
    label = f"entry {index}"
    return label if pairid is None else f"{label} (pairid {pairid})"


def read_json(path: Path, expected: type, layout: str) -> Any:
    """Load a JSON file whose top level must be of type `expected`.

    `layout` names the dataset layout that expects the file, for the not-found message.
    """
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except FileNotFoundError as e:
        raise AnnotationError(f"{path}: file not found (expected by the {layout} layout)") from e
    except json.JSONDecodeError as e:
        raise AnnotationError(
            f"{path}: invalid JSON at line {e.lineno}, column {e.colno}: {e.msg}"
        ) from e
    except UnicodeDecodeError as e:
        raise AnnotationError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start})") from e
    except OSError as e:
        raise AnnotationError(f"{path}: cannot be read ({e.strerror})") from e
    if not isinstance(data, expected):
        raise AnnotationError(
            f"{path}: top level should be a JSON {_json_name(expected)}, "
            f"got {_json_name(type(data))}"
        )
    return data


def _json_name(t: type) -> str:
    names = {dict: "object", list: "array", str: "string", int: "number", float: "number"}
    return names.get(t, t.__name__)


def require(
    entry: dict,
    key: str,
    expected: type | tuple[type, ...],
    path: Path,
    index: int,
    pairid: Any = None,
    prefix: str = "",
    nonblank: bool = False,
) -> Any:
    """Return entry[key], checked for presence and type (and, with `nonblank`, that the
    text holds more than white space).

    `prefix` names the enclosing field of a nested object (e.g. "img_set.").
    """
    where = f"{path}: {entry_label(index, pairid)}"
    if key not in entry:
        raise AnnotationError(f"{where}: missing key '{prefix}{key}'")
    value = entry[key]
    check_type(value, expected, where, f"{prefix}{key}")
    if nonblank and not value.strip():
        raise AnnotationError(f"{where}: key '{prefix}{key}' is empty")
    return value


def check_type(value: Any, expected: type | tuple[type, ...], where: str, key: str) -> None:
    if not is_instance(value, expected):
        raise AnnotationError(
            f"{where}: key '{key}' should be {type_name(expected)}, got {type(value).__name__}"
        )


def check_items(
    values: list | dict, expected: type | tuple[type, ...], where: str, key: str
) -> None:
    """Check the items of a list (or the values of a dict) for type."""
    items = values.items() if isinstance(values, dict) else enumerate(values)
    for k, v in items:
        check_type(v, expected, where, f"{key}[{k!r}]")


def check_entries(data: list | dict, expected: type, path: Path) -> None:
    """Check the entries of a top-level list (or the values of a top-level object)."""
    items = data.items() if isinstance(data, dict) else enumerate(data)
    for k, v in items:
        if not is_instance(v, expected):
            raise AnnotationError(
                f"{path}: {entry_label(repr(k) if isinstance(k, str) else k)} should be "
                f"{type_name(expected)}, got {type(v).__name__}"
            )


def check_known_image(
    name: str, images: dict[str, str], path: Path, pairid: Any, field: str
) -> None:
    if name not in images:
        raise AnnotationError(
            f"{path}: pairid {pairid}: {field} '{name}' is not in the split's image list"
        )


def inside_root(path: str, root: Path, source: Path, what: str) -> None:
    """Refuse an image path that leaves the dataset root once `..` and symlinks are resolved."""
    resolved, real_root = os.path.realpath(path), os.path.realpath(root)
    if resolved != real_root and not resolved.startswith(real_root + os.sep):
        raise AnnotationError(
            f"{source}: {what} points to {resolved}, outside the dataset root {real_root}; "
            "pass --allow_external_images if the images live elsewhere on purpose (a "
            "symlinked image folder, say)"
        )


def check_image_files(split: Split, source: str) -> None:
    """Raise one AnnotationError listing how many of the split's image files are missing."""
    missing = [p for p in split.images.values() if not os.path.isfile(p)]
    if missing:
        shown = "\n  ".join(missing[:MISSING_SHOWN])
        raise AnnotationError(
            f"{source}: {len(missing)} of {len(split.images)} image files are missing; "
            f"first {min(len(missing), MISSING_SHOWN)}:\n  {shown}"
        )
