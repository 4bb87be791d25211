"""The simulated captioner: an imperfect captioner of the synthetic benchmarks, as a
stand-in for a foundation model, with known error rates.

Unlike the scene oracle, it describes any pair of images: it names the most salient
`max_named_changes` of the pair's differences in the domain's grammar (caption_truth.py;
naming only those is incomplete, not wrong) and, with the rates of `CaptionErrorRates`,
makes one of five mistakes (caption_errors.py). Its yes/no judge answers with the truth of
`describes`, flipped at the judge's error rate.

Everything is drawn from a stable hash of the pair's content (reference, negative,
original caption), the text where judged, and `seed`: the same pair always gets the same
text and the same draws, whatever the batch, order, process or pairid.
"""

from __future__ import annotations

import hashlib
import json
import random
from dataclasses import asdict
from pathlib import Path

from src.augment.captioners import DatasetCaptioner
from src.augment.pairs import CaptionPair
from src.offline.caption_errors import (
    DEFAULT_CAPTION_ERRORS,
    CaptionErrorRates,
    PairCase,
    draw_error,
    make_mistake,
)
from src.offline.caption_truth import check_cap, describes, stated_or_none
from src.offline.domain import Description
from src.offline.domains import REQUIREMENT, is_synthetic_benchmark, require_domain
from src.records import Generation, Simulation


def stable_random(*parts: object) -> random.Random:
    """A generator seeded from a SHA-256 of the parts (JSON): the same in every process,
    unlike Python's salted hash()."""
    digest = hashlib.sha256(json.dumps(parts).encode()).digest()
    return random.Random(int.from_bytes(digest[:8], "big"))


class SimulatedCaptioner:
    """Captions any pair of a synthetic benchmark with set error rates (a Captioner,
    src/augment/captioners.py)."""

    name = "simulated_captioner"

    def __init__(
        self,
        dataset_path: str | Path,
        rates: CaptionErrorRates = DEFAULT_CAPTION_ERRORS,
        seed: int = 0,
    ):
        self.domain = require_domain(dataset_path)
        check_cap(self.domain, rates.max_named_changes)
        self.descriptions = self.domain.load_descriptions(Path(dataset_path))
        self.rates = rates
        self.seed = seed

    def _case(self, pair: CaptionPair) -> PairCase:
        return PairCase.of(
            self.domain,
            self.descriptions[pair.reference],
            self.descriptions[pair.negative],
            pair.original_caption,
            self.rates.max_named_changes,
        )

    def _generate(self, pair: CaptionPair) -> Generation:
        case = self._case(pair)
        rng = stable_random(
            self.seed, "caption", pair.reference, pair.negative, pair.original_caption
        )
        text, error = None, None
        if case.named:  # else: equal images, or nothing statable (e.g. a swap): no text
            error = draw_error(rng, self.rates)
            if error is None:
                text = case.render(case.named, rng)
            else:
                error, text = make_mistake(case, error, rng)
        stated = stated_or_none(self.domain, case.reference, text)
        return Generation(
            text=text,
            finished=True,
            simulation=Simulation(
                correct=self._describes(case.reference, case.target, text),
                error=error,
                differences=len(case.differences),
                named=len(stated or ()),
            ),
        )

    def _describes(self, reference: Description, target: Description, text: str | None) -> bool:
        return describes(reference, target, text, self.rates.max_named_changes, self.domain)

    def generate(self, pairs: list[CaptionPair]) -> list[Generation]:
        """Per pair a finished Generation with its Simulation (correct: describes(...);
        error: the mistake made or None; differences; named: how many changes the text
        states, 0 when it is no text of the grammar); text None when the images are equal
        or no difference can be stated alone."""
        return [self._generate(pair) for pair in pairs]

    def yes_probabilities(self, pairs: list[CaptionPair], texts: list[str]) -> list[float]:
        """1.0 (yes) or 0.0: `describes` from the descriptions and the text alone, answered
        wrongly with `judge_false_yes` where it is false and `judge_false_no` where it is
        true (drawn per pair, text and seed)."""
        answers = []
        for pair, text in zip(pairs, texts, strict=True):
            truth = self._describes(
                self.descriptions[pair.reference], self.descriptions[pair.negative], text
            )
            draw = stable_random(
                self.seed, "judge", pair.reference, pair.negative, pair.original_caption, text
            )
            wrong = self.rates.judge_false_no if truth else self.rates.judge_false_yes
            answers.append(1.0 if truth != (draw.random() < wrong) else 0.0)
        return answers

    def describe(self) -> dict:
        return {
            "simulation": True,
            "stands_in_for_a_foundation_model": True,
            "method": (
                f"simulated captioner over {self.domain.descriptions_file}: the most salient "
                "differences, with set error rates"
            ),
            "domain": self.domain.name,
            "error_rates": asdict(self.rates),
            "seed": self.seed,
        }


def simulated_dataset_captioner(
    rates: CaptionErrorRates = DEFAULT_CAPTION_ERRORS, seed: int = 0
) -> DatasetCaptioner:
    """The simulated captioner as a DatasetCaptioner (src/augment/captioners.py) for a job's
    `dataset_captioners`, with these rates and seed."""
    return DatasetCaptioner(
        name=SimulatedCaptioner.name,
        requirement=REQUIREMENT,
        works_on=is_synthetic_benchmark,
        load=lambda root: SimulatedCaptioner(root, rates, seed),
        settings={"error_rates": asdict(rates), "seed": seed},
    )
