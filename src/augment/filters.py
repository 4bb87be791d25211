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

from src.artifacts import AugmentedSample, RejectedSample
from src.augment.pairs import CaptionPair
from src.records import ConsistencyAnswers, FilterDiagnostics, Generation, VerifyScores

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

    generations: dict[str, Generation]
    kept: Kept = field(default_factory=list)
    rejected: list[Rejection] = field(default_factory=list)
    consistency: dict[str, tuple[float, float]] = field(default_factory=dict)
    verify: dict[str, tuple[float, float]] = field(default_factory=dict)
    applied: list[tuple[str, list[CaptionPair], list[CaptionPair]]] = field(default_factory=list)

    def apply(self, result: FilterResult, name: str) -> None:
        """The outcome of filter `name` (which sees exactly what the filters before kept)."""
        self.applied.append(
            (name, [pair for pair, _ in result.kept], [rejection.pair for rejection in result.rejected])
        )
        self.kept = result.kept
        self.rejected.extend(result.rejected)

    def filter_diagnostics(self) -> dict[str, FilterDiagnostics] | None:
        """How well each filter told wrong texts from right ones, where the generator knows
        which are right (a simulated captioner's records; None otherwise): per filter, the
        wrong and right texts that reached it, how many of each it removed, its precision
        (wrong among removed) and recall (removed among wrong)."""
        records = [g.simulation for g in self.generations.values()]
        if not records or any(record is None for record in records):
            return None

        def wrong(pairs: list[CaptionPair]) -> int:
            return sum(not self.generations[p.pairid].simulation.correct for p in pairs)

        diagnostics = {}
        for name, kept, removed in self.applied:
            wrong_in, wrong_removed = wrong(kept) + wrong(removed), wrong(removed)
            diagnostics[name] = FilterDiagnostics(
                wrong_in=wrong_in,
                right_in=len(kept) + len(removed) - wrong_in,
                wrong_removed=wrong_removed,
                right_removed=len(removed) - wrong_removed,
                precision=wrong_removed / len(removed) if removed else None,
                recall=wrong_removed / wrong_in if wrong_in else None,
            )
        return diagnostics

    def reasons(self, all_reasons: tuple[str, ...]) -> dict[str, int]:
        counts = Counter(rejection.reason for rejection in self.rejected)
        return {reason: counts[reason] for reason in all_reasons}

    def rejected_records(self) -> list[RejectedSample]:
        return [
            RejectedSample(
                pairid=r.pair.pairid,
                source_pairid=r.pair.source_pairid,
                reference=r.pair.reference,
                target=r.pair.negative,
                reason=r.reason,
                text=r.text,
                raw_output=self.generations[r.pair.pairid].text,
                simulation=self.generations[r.pair.pairid].simulation,
            )
            for r in self.rejected
        ]

    def samples(self, generator: str) -> list[AugmentedSample]:
        """The kept triplets with their provenance (and their check scores)."""
        samples = []
        for pair, text in self.kept:
            generation = self.generations[pair.pairid]
            consistency = verify = None
            if pair.pairid in self.consistency:
                new_yes, original_yes = self.consistency[pair.pairid]
                consistency = ConsistencyAnswers(new_text_yes=new_yes, original_text_yes=original_yes)
            if pair.pairid in self.verify:
                new_score, original_score = self.verify[pair.pairid]
                verify = VerifyScores(new_target_score=new_score, original_target_score=original_score)
            samples.append(
                AugmentedSample(
                    pairid=pair.pairid,
                    reference=pair.reference,
                    caption=text,
                    target=pair.negative,
                    source_pairid=pair.source_pairid,
                    original_caption=pair.original_caption,
                    original_target=pair.original_target,
                    generator=generator,
                    raw_output=generation.text,
                    consistency=consistency,
                    verify=verify,
                    simulation=generation.simulation,
                )
            )
        return samples
