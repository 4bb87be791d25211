"""Load a split of a named dataset."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from src.data.cirr import CIRR_SPLITS, load_cirr_split
from src.data.fashioniq import FASHIONIQ_SPLITS, load_fashioniq_split
from src.data.records import Split
from src.errors import AnnotationError

READERS: dict[str, Callable[..., Split]] = {
    "cirr": load_cirr_split,
    "fashioniq": load_fashioniq_split,
}

# Generic split names -> each dataset's own, so "train" / "val" / "test" work for both.
SPLIT_ALIASES: dict[str, dict[str, str]] = {
    "cirr": {"test": "test1", "dev": "val"},
    "fashioniq": {"dev": "val"},
}
SPLITS: dict[str, tuple[str, ...]] = {"cirr": CIRR_SPLITS, "fashioniq": FASHIONIQ_SPLITS}


def split_names(dataset_name: str) -> tuple[str, ...]:
    """Every name `load_split` takes for a split of `dataset_name` (its own and the aliases)."""
    name = dataset_name.lower()
    return (*SPLITS[name], *SPLIT_ALIASES[name])


def load_split(dataset_name: str, root: str | Path, split: str, **kw) -> Split:
    """Read `split` of `dataset_name` ("cirr" or "fashioniq"); `kw` go to its reader."""
    name = dataset_name.lower()
    if name not in READERS:
        raise AnnotationError(
            f"unknown dataset {dataset_name!r}; expected one of {sorted(READERS)}"
        )
    if not Path(root).is_dir():
        raise AnnotationError(f"--dataset_path {root}: no such directory")
    split = SPLIT_ALIASES[name].get(split, split)
    return READERS[name](root, split, **kw)
