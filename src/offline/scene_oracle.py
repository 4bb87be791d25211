"""The scene oracle: the exact difference between two synthetic scenes, as a captioner.

It stands in for a perfect foundation model, and says so in every file it writes: its
texts are exact captions in the benchmark's own grammar and phrasings (src/offline/
synthetic/captions.py; the phrasing drawn per pair, so the same pair always gets the same
text), and its yes/no answers say whether a text turns one scene into the other. It
reads `scenes.json`, so it works only on the synthetic benchmark.
"""

from __future__ import annotations

import random
from pathlib import Path

from src.augment.captioners import DatasetCaptioner
from src.augment.pairs import CaptionPair
from src.offline.synthetic.captions import apply_caption, describe_difference
from src.offline.synthetic.scenes import SCENES_FILE, load_scenes


class SceneOracle:
    """The exact difference between two synthetic scenes: a perfect captioner, named as such."""

    name = "scene_oracle"

    def __init__(self, dataset_path: str | Path):
        self.scenes = load_scenes(Path(dataset_path) / SCENES_FILE)

    def generate(self, pairs: list[CaptionPair]) -> list[dict]:
        return [
            {
                "text": describe_difference(
                    self.scenes[p.reference], self.scenes[p.negative], random.Random(p.pairid)
                ),
                "finished": True,
            }
            for p in pairs
        ]

    def yes_probabilities(self, pairs: list[CaptionPair], texts: list[str]) -> list[float]:
        answers = []
        for pair, text in zip(pairs, texts, strict=True):
            try:
                fits = (
                    apply_caption(self.scenes[pair.reference], text) == self.scenes[pair.negative]
                )
            except ValueError:
                fits = False
            answers.append(1.0 if fits else 0.0)
        return answers

    def describe(self) -> dict:
        return {
            "stands_in_for_a_foundation_model": True,
            "method": "exact scene difference from scenes.json",
        }


SCENE_ORACLE = DatasetCaptioner(
    name=SceneOracle.name,
    requirement="works only on the synthetic benchmark (it reads its scenes.json)",
    works_on=lambda root: (Path(root) / SCENES_FILE).is_file(),
    load=SceneOracle,
)
