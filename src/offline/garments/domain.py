"""The garment benchmark as a domain (src/offline/domain.py): garments.json, its grammar."""

from __future__ import annotations

from src.offline.domain import Domain
from src.offline.garments import garments
from src.offline.garments.captions import (
    apply_caption,
    describe_difference,
    render_changes,
    stated_changes,
)

GARMENTS_DOMAIN = Domain(
    name="garments",
    descriptions_file=garments.GARMENTS_FILE,
    max_changes_per_text=len(garments.ATTRIBUTES),
    owns=lambda description: isinstance(description, garments.Garment),
    load_descriptions=garments.load_garments,
    describe_difference=describe_difference,
    apply_caption=apply_caption,
    differences=garments.differences,
    render_changes=render_changes,
    stated_changes=stated_changes,
    alternatives=garments.alternatives,
    possible_changes=garments.possible_changes,
)
