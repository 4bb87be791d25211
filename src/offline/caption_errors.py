"""The mistakes of the simulated captioner, and how often it makes each.

A pair's text is correct (the careful captioner's text, caption_truth.py) or carries
exactly one of five mistakes, drawn with the rates of `CaptionErrorRates`:

- `wrong_value`: one named change gets another value (another colour, shape, size, cell or
  length; for a shapes removal, another object removed). A random named change that has
  another value is picked.
- `missed_change`: one of the changes it should name is left out. Where it would name only
  one, that one is left out and the next statable difference named instead; impossible
  when the pair has a single difference.
- `extra_change`: a change that is not there is added: one the reference allows, that is no
  difference of the pair and concerns neither an object nor (one-object domains) an
  attribute of the named changes. Where the grammar states no more changes than the text
  already names (shapes: two), the false change takes the place of one of them (the
  least salient that leaves the others statable).
- `reversed_direction`: the careful text from the target to the reference.
- `repeated_original`: the pair's original caption, repeated.

When the drawn mistake is impossible for a pair (e.g. `wrong_value` where every named
change is a two-valued resize), the next in ERROR_KINDS order (wrapping round) is made
instead, and the record names the mistake made; `repeated_original` is always possible.
Whatever the mistake, whether the text is correct is decided by `describes` alone: a
mistake that happens to give a right text is labelled correct.
"""

from __future__ import annotations

import random
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass

from src.arguments import AugmentArguments
from src.offline.caption_truth import (
    DEFAULT_MAX_NAMED_CHANGES,
    most_salient_statable,
    named_changes,
    statable,
)
from src.offline.domain import Change, Description, Domain

ERROR_KINDS = (
    "wrong_value",
    "missed_change",
    "extra_change",
    "reversed_direction",
    "repeated_original",
)


JUDGE_ERRORS = ("judge_false_yes", "judge_false_no")


@dataclass(frozen=True)
class CaptionErrorRates:
    """Probabilities of the five text mistakes (at most one per text: they sum to at most
    1), of the yes/no judge saying yes to a text that does not describe the pair
    (`judge_false_yes`) and no to one that does (`judge_false_no`); `max_named_changes`:
    the most changes a text names."""

    wrong_value: float = 0.0
    missed_change: float = 0.0
    extra_change: float = 0.0
    reversed_direction: float = 0.0
    repeated_original: float = 0.0
    judge_false_yes: float = 0.0
    judge_false_no: float = 0.0
    max_named_changes: int = DEFAULT_MAX_NAMED_CHANGES

    def __post_init__(self) -> None:
        for name in (*ERROR_KINDS, *JUDGE_ERRORS):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value <= 1:
                raise ValueError(f"{name} must be a probability in [0, 1], got {value!r}")
        total = sum(getattr(self, kind) for kind in ERROR_KINDS)
        if total > 1 + 1e-9:
            raise ValueError(f"the five text error rates sum to {total:.6g} > 1")
        cap = self.max_named_changes
        if isinstance(cap, bool) or not isinstance(cap, int) or cap < 1:
            raise ValueError(f"max_named_changes must be a positive integer, got {cap!r}")


DEFAULT_CAPTION_ERRORS = CaptionErrorRates(**AugmentArguments().simulated_rates())
"""The simulated captioner's default error rates (the --simulated_* flags' defaults), from
published measurements.

Texts: Img-Diff (Jiao et al., "Img-Diff: Contrastive Data Synthesis for Multimodal Large
Language Models", CVPR 2025, arXiv:2408.04594, Sec. 5.1 and Fig. 6): annotators checked
1,000 difference captions written by LLaVA-NeXT: 704 accurate, 218 with the object right
but its features wrong, 78 with the object wrong. The 21.8% is `wrong_value` (0.22). The
7.8% "object wrong" is split by us, not measured: a text naming the wrong object both
misses the real change and states a false one (`missed_change`, `extra_change`: 0.03
each); a reversed text and a repeated caption would count there too and were measured
nowhere (0.01 each). The five sum to 0.30, Img-Diff's 29.6% wrong; its task (one marked
difference per caption) is easier than a free pair, so these rates are a floor.

Judge: ReCALL (Yang et al., "ReCALL: Recalibrating Capability Degradation for MLLM-based
Composed Image Retrieval", CVPR 2026, arXiv:2602.01639, supplementary Sec. 6.3, 6.7 and
Table 5): of the texts its Qwen2.5-VL-7B yes/no filter accepted, 92% were right by hand,
and it rejected 8.5% (CIRR) / 10.4% (FashionIQ). If the judge (almost) never rejects a
right text, it accepted 41-46% of the wrong ones: `judge_false_yes` 0.43 and
`judge_false_no` 0.0 (a yes-biased judge; no symmetric flip rate fits both figures).
"""


def draw_error(rng: random.Random, rates: CaptionErrorRates) -> str | None:
    """One of ERROR_KINDS with its rate, or None (a correct text) with the rest."""
    u, bound = rng.random(), 0.0
    for kind in ERROR_KINDS:
        bound += getattr(rates, kind)
        if u < bound:
            return kind
    return None


@dataclass(frozen=True)
class PairCase:
    """One pair as the captioner sees it: its differences (most salient first) and the
    changes a careful captioner names."""

    domain: Domain
    reference: Description
    target: Description
    original_caption: str
    max_named_changes: int
    differences: Sequence[Change]
    named: Sequence[Change]

    @classmethod
    def of(
        cls,
        domain: Domain,
        reference: Description,
        target: Description,
        original_caption: str,
        max_named_changes: int,
    ) -> PairCase:
        return cls(
            domain,
            reference,
            target,
            original_caption,
            max_named_changes,
            differences=domain.differences(reference, target),
            named=named_changes(domain, reference, target, max_named_changes),
        )

    def render(self, changes: Sequence[Change], rng: random.Random) -> str | None:
        return self.domain.render_changes(self.reference, changes, rng)

    def statable(self, changes: Sequence[Change]) -> bool:
        return statable(self.domain, self.reference, changes)


def _shuffled(rng: random.Random, items: Sequence) -> list:
    return rng.sample(list(items), len(items))


def _wrong_value(case: PairCase, rng: random.Random) -> str | None:
    named = list(case.named)
    for i in _shuffled(rng, range(len(named))):
        for option in _shuffled(rng, case.domain.alternatives(case.reference, named[i])):
            changes = [*named[:i], option, *named[i + 1 :]]
            if case.statable(changes):
                return case.render(changes, rng)
    return None


def _missed_change(case: PairCase, rng: random.Random) -> str | None:
    named = list(case.named)
    if len(named) >= 2:
        for i in _shuffled(rng, range(len(named))):
            rest = named[:i] + named[i + 1 :]
            if case.statable(rest):
                return case.render(rest, rng)
        return None
    others = [d for d in case.differences if d not in named]
    instead = most_salient_statable(case.domain, case.reference, others, 1)
    return case.render(instead, rng) if instead else None


def _extra_change(case: PairCase, rng: random.Random) -> str | None:
    named, room = list(case.named), case.domain.max_changes_per_text - 1
    base = (
        named
        if len(named) <= room
        else most_salient_statable(case.domain, case.reference, named, room)
    )
    true, topics = set(case.differences), {c.topic for c in base}
    by_kind: dict[str, list[Change]] = defaultdict(list)
    for change in case.domain.possible_changes(case.reference):
        if change not in true and change.topic not in topics:
            by_kind[change.kind].append(change)
    for kind in _shuffled(rng, sorted(by_kind)):
        for change in _shuffled(rng, by_kind[kind]):
            if case.statable([*base, change]):
                return case.render([*base, change], rng)
    return None


def _reversed_direction(case: PairCase, rng: random.Random) -> str | None:
    back = named_changes(case.domain, case.target, case.reference, case.max_named_changes)
    return case.domain.render_changes(case.target, back, rng) if back else None


def _repeated_original(case: PairCase, rng: random.Random) -> str:
    return case.original_caption


_MAKERS = {
    "wrong_value": _wrong_value,
    "missed_change": _missed_change,
    "extra_change": _extra_change,
    "reversed_direction": _reversed_direction,
    "repeated_original": _repeated_original,
}


def make_mistake(case: PairCase, kind: str, rng: random.Random) -> tuple[str, str]:
    """(the mistake made, its text): `kind`, or the next possible one in ERROR_KINDS order."""
    start = ERROR_KINDS.index(kind)
    for made in ERROR_KINDS[start:] + ERROR_KINDS[:start]:
        text = _MAKERS[made](case, rng)
        if text is not None:
            return made, text
    raise AssertionError("repeated_original is always possible")
