"""Every artifact format of an experiment, in one place: what each file holds, and how it
is read back (docs/experiment_directory.md lists the files).

Writers build these objects and write `to_json()`; readers (the stages, the report, the
tests) get them from `read`, never from string keys of raw JSON. They are records
(src/records.py): what is inside them is typed too (mining and augmentation stats, the
generation records), and a missing, unknown or mistyped key is an error naming the file
and the field. Each file carries a `version`; a file written before versions existed
(version 1: no key) is read with the changes listed in each `from_json`, so older
experiments still resume.

- `HardNegatives`   hard_negatives_iter_{i}.json: per training query, its target's rank
                    and score under checkpoint_iter_{i} and the negatives mined for it.
- `AugmentedSamples` augmented_samples_iter_{i}.json: round i's new triplets, the rejected
                    ones with their reason, the mined negatives flagged as false negatives.
- `Evaluation`      evaluation_{split}_iter_{i}.json: a split's metrics, whether its
                    queries need both modalities, and every query's target rank (composed,
                    image-only, text-only) and top five (or, for CIRR test1, the
                    submission files).
- `CheckpointRecord` checkpoint_iter_{i}/stage.json: what the checkpoint was made from.
- `PartialGenerations` partial_rank{r}_augmented_samples_iter_{i}.json: texts generated
                    so far by one process (resumed from after a kill).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import xxhash

from src.arguments import result_config
from src.experiment_io import read_json, write_json_atomic
from src.records import (
    AugmentSkipped,
    AugmentStats,
    ConsistencyAnswers,
    Generation,
    MiningStats,
    Record,
    Simulation,
    TrainSkipped,
    TrainSummary,
    VerifyScores,
    parse_value,
)

FORMAT_VERSION = 2


def digest(value: object) -> str:
    """The one digest of a JSON value (its canonical form): XXH3-128, hex."""
    return xxhash.xxh3_128(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()


def checkpoint_fingerprint(files: dict[str, dict], bases: list[dict[str, dict]]) -> str:
    """A checkpoint's identity: the digest of its files' records (DigestCache.directory)
    and, for a LoRA adapter, of its base models' files (its embeddings depend on them)."""
    return digest({"files": files, "bases": bases})


class Artifact(Record):
    """An artifact file: `meta` says what it was made from (compared on resume)."""

    meta: dict

    def to_json(self) -> dict:
        return {"version": FORMAT_VERSION, **super().to_json()}

    def write(self, path: Path) -> None:
        write_json_atomic(path, self.to_json())

    @classmethod
    def upgrade(cls, data: dict, version: int) -> dict:
        """A file of an earlier `version` in the current layout (the changes, per class)."""
        return data

    @classmethod
    def from_json(cls, data: object, source: str = "artifact", where: str = ""):
        if isinstance(data, dict):
            data = dict(data)
            version = data.pop("version", 1)
            parse_value(int, version, source, "version")
            data = cls.upgrade(data, version)
        return super().from_json(data, source, where)

    @classmethod
    def read(cls, path: str | Path):
        return cls.from_json(read_json(path), str(path))


# ---------------------------------------------------------------- mined hard negatives

# Version 1 recorded the miner's own option names, and the seed among them.
_V1_MINING_OPTIONS = {
    "k": "hard_negative_k",
    "scope": "mine_scope",
    "margin": "hard_negative_margin",
    "skip_top": "hard_negative_skip_top",
    "source": "negative_source",
}


@dataclass
class MinedNegative(Record):
    image: str
    score: float | None  # None: drawn at random (the baseline), not ranked
    rank: int | None


@dataclass
class MinedQuery(Record):
    negatives: list[MinedNegative]
    target_rank: int | None = None
    target_score: float | None = None


@dataclass
class HardNegatives(Artifact):
    meta: dict[str, Any]
    stats: MiningStats
    queries: dict[str, MinedQuery]

    @property
    def checkpoint_fingerprint(self) -> str:
        """The fingerprint of the checkpoint that mined these negatives (from the meta)."""
        return self.meta["checkpoint_fingerprint"]

    def negative_images(self) -> dict[str, list[str]]:
        """{pairid: the mined images, in rank order}."""
        return {pairid: [n.image for n in query.negatives] for pairid, query in self.queries.items()}

    def queries_json(self) -> dict:
        return {pairid: query.to_json() for pairid, query in self.queries.items()}

    @classmethod
    def upgrade(cls, data: dict, version: int) -> dict:
        meta = data.get("meta")
        if version == 1 and isinstance(meta, dict) and "options" in meta:
            meta, options = dict(meta), dict(meta["options"])
            meta["seed"] = options.pop("seed", meta.get("seed"))
            meta["options"] = {_V1_MINING_OPTIONS.get(k, k): v for k, v in options.items()}
            data = data | {"meta": meta}
        return data


# ---------------------------------------------------------------- new texts


@dataclass
class AugmentedSample(Record):
    """A kept triplet: `reference` + `caption` -> `target` (the mined negative), with its
    provenance and what the checks gave it. `simulation` is a simulated captioner's record
    of whether the text is right: for analysis only, never read by training."""

    pairid: str
    reference: str
    caption: str
    target: str
    source_pairid: str
    original_caption: str
    original_target: str | None
    generator: str
    raw_output: str | None
    consistency: ConsistencyAnswers | None = None
    verify: VerifyScores | None = None
    simulation: Simulation | None = None


@dataclass
class RejectedSample(Record):
    pairid: str
    source_pairid: str
    reference: str
    target: str
    reason: str
    text: str | None
    raw_output: str | None
    simulation: Simulation | None = None


@dataclass
class AugmentedSamples(Artifact):
    meta: dict[str, Any]
    stats: AugmentStats | AugmentSkipped
    samples: list[AugmentedSample] = field(default_factory=list)
    rejected: list[RejectedSample] = field(default_factory=list)
    false_negatives: dict[str, list[str]] = field(default_factory=dict)

    def training_content(self) -> list:
        """What training reads from this file (its digest is part of the round's meta): the
        triplets and the flagged negatives, without the simulation's records."""
        samples = [
            [s.pairid, s.reference, s.caption, s.target, s.original_target] for s in self.samples
        ]
        return [samples, self.false_negatives]

    @classmethod
    def upgrade(cls, data: dict, version: int) -> dict:
        if version != 1 or not isinstance(data.get("samples"), list):
            return data
        samples = []
        for sample in data["samples"]:
            verify = sample.get("verify") if isinstance(sample, dict) else None
            if isinstance(verify, dict) and "target_score" in verify:
                # version 1 named the new target's score target_score
                verify = dict(verify)
                verify["new_target_score"] = verify.pop("target_score")
                sample = sample | {"verify": verify}
            samples.append(sample)
        return data | {"samples": samples}


@dataclass
class PartialGenerations(Artifact):
    """{pairid: Generation} generated so far, with the meta they were made for."""

    meta: dict[str, Any]
    generations: dict[str, Generation]


# ---------------------------------------------------------------- evaluation


@dataclass
class QueryRanking(Record):
    """A query's ranking: the target's 1-based rank under the composed query (None: the
    target cannot be retrieved) and the top five; the target's rank when the reference
    image alone (`image_rank`) and the text alone (`text_rank`) are the query (None: cannot
    be retrieved, or a file written before these rankings, whose `Evaluation.modalities`
    is None)."""

    target_rank: int | None
    top: list[str]
    image_rank: int | None = None
    text_rank: int | None = None


@dataclass
class Evaluation(Artifact):
    """`modalities`: src/retrieval/metrics.py `modality_metrics`'s block (None: CIRR
    test1, or a file written before these rankings existed)."""

    meta: dict[str, Any]
    metrics: dict[str, float] | None = None
    queries: dict[str, QueryRanking] = field(default_factory=dict)
    submission_files: list[str] = field(default_factory=list)
    modalities: dict[str, float | int | None] | None = None


# ---------------------------------------------------------------- checkpoints


@dataclass
class CheckpointRecord(Artifact):
    """checkpoint_iter_{i}/stage.json: the meta it was made for, the training summary, its
    fingerprint (the digest of its files as written) and, for a LoRA adapter, the records
    of its base model's files."""

    meta: dict[str, Any]
    iteration: int
    summary: TrainSummary | TrainSkipped
    fingerprint: str
    base_models: list[dict[str, Any]] = field(default_factory=list)

    @classmethod
    def from_json(cls, data: object, source: str = "stage.json", where: str = "") -> CheckpointRecord:
        """The recorded result config is read by the current rules (a flag that no longer
        changes results drops out; one added since is absent at its default)."""
        record = super().from_json(data, source, where)
        if "config" in record.meta:
            record.meta = {**record.meta, "config": result_config(record.meta["config"])}
        return record
