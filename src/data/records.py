"""The records every stage works with: triplets and splits.

Readers turn the real CIRR and FashionIQ layouts into these; nothing downstream knows
which dataset a split came from.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field


@dataclass
class Triplet:
    """One composed query: reference image + modification text -> target image.

    `target` is None on unlabelled test splits. `target_soft` maps image names to CIRR's
    soft-label scores (1.0 / 0.5 / -1.0 ...). `group` is CIRR's `img_set.members`.
    `category` is FashionIQ's garment category (None for CIRR).
    """

    pairid: str
    reference: str
    caption: str
    target: str | None = None
    target_soft: dict[str, float] = field(default_factory=dict)
    group: list[str] | None = None
    category: str | None = None
    source: str = "original"

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> Triplet:
        return cls(**data)


@dataclass
class Split:
    """A split's triplets plus its gallery.

    `images` maps every image name of the split to its file path. `categories` maps a
    FashionIQ category to the names of its gallery images (empty for CIRR, whose
    gallery is the whole split).
    """

    name: str
    triplets: list[Triplet]
    images: dict[str, str]
    categories: dict[str, list[str]] = field(default_factory=dict)

    @property
    def has_labels(self) -> bool:
        return all(t.target is not None for t in self.triplets)

    def gallery_names(self, category: str | None = None) -> list[str]:
        """Image names of the gallery, in a fixed order (sorted by name)."""
        if category is None:
            return sorted(self.images)
        return sorted(self.categories[category])
