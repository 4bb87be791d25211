"""The synthetic domains, and which one a dataset folder or a description belongs to.

A benchmark's domain is recognised by its descriptions file beside the CIRR files:
`scenes.json` (shapes) or `garments.json` (garments); a folder with both is neither.
"""

from __future__ import annotations

from pathlib import Path

from src.offline.domain import Description, Domain
from src.offline.garments.domain import GARMENTS_DOMAIN
from src.offline.synthetic.domain import SHAPES_DOMAIN

DOMAINS: tuple[Domain, ...] = (SHAPES_DOMAIN, GARMENTS_DOMAIN)
_FILES = " or ".join(d.descriptions_file for d in DOMAINS)
REQUIREMENT = f"works only on the synthetic benchmarks (it reads their {_FILES})"
"""What a captioner that reads the descriptions needs, in words (DatasetCaptioner.requirement)."""


def dataset_domain(root: str | Path) -> Domain | None:
    """The domain whose descriptions file the folder holds, else None."""
    found = [d for d in DOMAINS if (Path(root) / d.descriptions_file).is_file()]
    return found[0] if len(found) == 1 else None


def is_synthetic_benchmark(root: str | Path) -> bool:
    return dataset_domain(root) is not None


def require_domain(root: str | Path) -> Domain:
    """The dataset's synthetic domain; ValueError when it is none."""
    domain = dataset_domain(root)
    if domain is None:
        raise ValueError(f"{root} is no synthetic benchmark: it holds no single {_FILES}")
    return domain


def description_domain(description: Description) -> Domain:
    """The domain of a description (a shapes scene, a garment); ValueError for anything else."""
    for domain in DOMAINS:
        if domain.owns(description):
            return domain
    raise ValueError(f"{description!r} is no description of a synthetic domain")
