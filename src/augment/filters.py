"""The filters of generated texts share one result shape, and one record of decisions.

Each filter (clean-up rules in cleaning.py, the consistency check in consistency.py, the
embedder check in verify.py) takes the (pair, text) still kept and returns a
`FilterResult`: those it keeps, and those it rejects with their reason. `Decisions`
applies them in turn and is the one place that counts every rejection reason and builds
the records written to augmented_samples_iter_{i}.json.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from src.augment.pairs import CaptionPair

Kept = list[tuple[CaptionPair, str]]


@dataclass(frozen=True)
class Rejection:
    pair: CaptionPair
    text: str | None
    reason: str


@dataclass
class FilterResult:
    kept: Kept = field(default_factory=list)
    rejected: list[Rejection] = field(default_factory=list)


@dataclass
class Decisions:
    """What became of each pair: kept (pair, text), rejections in order, and the scores the
    checks gave the kept samples ({pairid: (new, original)} each)."""

    generations: dict[str, dict]
    kept: Kept = field(default_factory=list)
    rejected: list[Rejection] = field(default_factory=list)
    consistency: dict[str, tuple[float, float]] = field(default_factory=dict)
    verify: dict[str, tuple[float, float]] = field(default_factory=dict)

    def apply(self, result: FilterResult) -> None:
        self.kept = result.kept
        self.rejected.extend(result.rejected)

    def reasons(self, all_reasons: tuple[str, ...]) -> dict[str, int]:
        counts = Counter(rejection.reason for rejection in self.rejected)
        return {reason: counts[reason] for reason in all_reasons}

    def rejected_records(self) -> list[dict]:
        return [
            {
                "pairid": r.pair.pairid,
                "source_pairid": r.pair.source_pairid,
                "reference": r.pair.reference,
                "target": r.pair.negative,
                "reason": r.reason,
                "text": r.text,
                "raw_output": self.generations[r.pair.pairid]["text"],
            }
            for r in self.rejected
        ]

    def samples(self, generator: str) -> list[dict]:
        """The kept triplets with their provenance (and their check scores)."""
        samples = []
        for pair, text in self.kept:
            sample = {
                "pairid": pair.pairid,
                "reference": pair.reference,
                "caption": text,
                "target": pair.negative,
                "source_pairid": pair.source_pairid,
                "original_caption": pair.original_caption,
                "original_target": pair.original_target,
                "generator": generator,
                "raw_output": self.generations[pair.pairid]["text"],
            }
            if pair.pairid in self.consistency:
                new_yes, original_yes = self.consistency[pair.pairid]
                sample["consistency"] = {"new_text_yes": new_yes, "original_text_yes": original_yes}
            if pair.pairid in self.verify:
                negative_score, target_score = self.verify[pair.pairid]
                sample["verify"] = {
                    "target_score": negative_score,
                    "original_target_score": target_score,
                }
            samples.append(sample)
        return samples
