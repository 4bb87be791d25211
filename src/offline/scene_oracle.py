"""The scene oracle: the exact difference between two synthetic images, as a captioner.

It stands in for a perfect foundation model, and says so in every file it writes: its
texts are exact captions in the benchmark's own grammar and phrasings (the phrasing drawn
per pair, so the same pair always gets the same text), and its yes/no answers say whether
a text turns one image's description into the other's. It works on every synthetic
domain (src/offline/domains.py), which it recognises by the dataset's descriptions file:
scenes.json (shapes: src/offline/synthetic/captions.py) or garments.json (garments:
src/offline/garments/captions.py).
"""

from __future__ import annotations

import random
from pathlib import Path

from src.augment.captioners import DatasetCaptioner
from src.augment.pairs import CaptionPair
from src.offline.domains import REQUIREMENT, is_synthetic_benchmark, require_domain
from src.records import Generation


class SceneOracle:
    """The exact difference between two synthetic images: a perfect captioner, named as such."""

    name = "scene_oracle"

    def __init__(self, dataset_path: str | Path):
        self.domain = require_domain(dataset_path)
        self.scenes = self.domain.load_descriptions(Path(dataset_path))

    def generate(self, pairs: list[CaptionPair]) -> list[Generation]:
        return [
            Generation(
                text=self.domain.describe_difference(
                    self.scenes[p.reference], self.scenes[p.negative], random.Random(p.pairid)
                ),
                finished=True,
            )
            for p in pairs
        ]

    def yes_probabilities(self, pairs: list[CaptionPair], texts: list[str]) -> list[float]:
        answers = []
        for pair, text in zip(pairs, texts, strict=True):
            try:
                result = self.domain.apply_caption(self.scenes[pair.reference], text)
                fits = result == self.scenes[pair.negative]
            except ValueError:
                fits = False
            answers.append(1.0 if fits else 0.0)
        return answers

    def describe(self) -> dict:
        return {
            "stands_in_for_a_foundation_model": True,
            "method": f"exact scene difference from {self.domain.descriptions_file}",
        }


SCENE_ORACLE = DatasetCaptioner(
    name=SceneOracle.name,
    requirement=REQUIREMENT,
    works_on=is_synthetic_benchmark,
    load=SceneOracle,
)
