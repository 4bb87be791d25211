"""Fuzzed annotation files: any input either loads or raises the project's own error
(AnnotationError, a UsageError), never anything else."""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from src.data.cirr import load_cirr_split
from src.data.fashioniq import load_fashioniq_split
from src.errors import AnnotationError

JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True) | st.text(max_size=12),
    lambda children: st.lists(children, max_size=4)
    | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=12,
)
NAMES = ["img-a", "img-b", "img-c"]
SETTINGS = settings(
    max_examples=int(os.environ.get("FUZZ_EXAMPLES", "60")),
    deadline=None,
    derandomize=not os.environ.get("FUZZ_EXAMPLES"),  # CI: the same examples every run
    suppress_health_check=list(HealthCheck),
    database=None,
)


def cirr_entry() -> dict:
    return {
        "pairid": 1,
        "reference": "img-a",
        "target_hard": "img-b",
        "target_soft": {"img-b": 1.0},
        "caption": "make it red",
        "img_set": {"id": 0, "members": NAMES, "reference_rank": 0, "target_rank": 1},
    }


def mutated_entries() -> st.SearchStrategy:
    """Valid CIRR entries with fields deleted or replaced by any JSON value."""
    field = st.sampled_from([*cirr_entry(), "img_set.members", "extra"])
    change = st.tuples(field, st.one_of(st.just("delete"), JSON))

    def apply(changes: list) -> list[dict]:
        entry = cirr_entry()
        for name, value in changes:
            target, key = entry, name
            if name == "img_set.members":
                if not isinstance(entry.get("img_set"), dict):
                    continue
                target, key = entry["img_set"], "members"
            if value == "delete":
                target.pop(key, None)
            else:
                target[key] = value
        return [entry]

    return st.lists(change, min_size=1, max_size=3).map(apply)


def write_cirr(root: Path, captions: object, split_file: object, raw: bytes | None = None) -> None:
    for folder in ("captions", "image_splits", "dev"):
        (root / folder).mkdir(parents=True, exist_ok=True)
    for name in NAMES:
        Image.new("RGB", (2, 2)).save(root / "dev" / f"{name}.png")
    path = root / "captions" / "cap.rc2.val.json"
    if raw is not None:
        path.write_bytes(raw)
    else:
        path.write_text(json.dumps(captions))
    (root / "image_splits" / "split.rc2.val.json").write_text(json.dumps(split_file))


def loads_or_refuses(load) -> None:
    with contextlib.suppress(AnnotationError):
        load()


VALID_SPLIT = {name: f"./dev/{name}.png" for name in NAMES}


@SETTINGS
@given(captions=st.one_of(JSON, mutated_entries()))
def test_cirr_captions(captions):
    with tempfile.TemporaryDirectory() as directory:
        write_cirr(Path(directory), captions, VALID_SPLIT)
        loads_or_refuses(lambda: load_cirr_split(directory, "val"))


@SETTINGS
@given(split_file=st.one_of(JSON, st.dictionaries(st.sampled_from(NAMES), JSON, max_size=3)))
def test_cirr_image_split(split_file):
    with tempfile.TemporaryDirectory() as directory:
        write_cirr(Path(directory), [cirr_entry()], split_file)
        loads_or_refuses(lambda: load_cirr_split(directory, "val"))


@SETTINGS
@given(raw=st.binary(max_size=200))
def test_cirr_bytes(raw):
    with tempfile.TemporaryDirectory() as directory:
        write_cirr(Path(directory), None, VALID_SPLIT, raw=raw)
        loads_or_refuses(lambda: load_cirr_split(directory, "val"))


@SETTINGS
@given(
    captions=st.one_of(
        JSON,
        st.lists(
            st.fixed_dictionaries(
                {},
                optional={
                    "candidate": st.one_of(st.sampled_from(NAMES), JSON),
                    "target": st.one_of(st.sampled_from(NAMES), JSON),
                    "captions": st.one_of(st.lists(st.text(max_size=6), max_size=3), JSON),
                },
            ),
            max_size=3,
        ),
    ),
    gallery=st.one_of(JSON, st.lists(st.sampled_from(NAMES), max_size=3)),
)
def test_fashioniq(captions, gallery):
    with tempfile.TemporaryDirectory() as directory:
        root = Path(directory)
        for folder in ("captions", "image_splits", "images"):
            (root / folder).mkdir()
        for name in NAMES:
            Image.new("RGB", (2, 2)).save(root / "images" / f"{name}.jpg")
        for category in ("dress", "shirt", "toptee"):
            (root / "captions" / f"cap.{category}.val.json").write_text(json.dumps(captions))
            (root / "image_splits" / f"split.{category}.val.json").write_text(json.dumps(gallery))
        loads_or_refuses(lambda: load_fashioniq_split(directory, "val"))
