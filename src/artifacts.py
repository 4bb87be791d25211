"""Every artifact format of an experiment, in one place: what each file holds, and how it
is read back (docs/experiment_directory.md lists the files).

Writers build these objects and write `to_json()`; readers (the stages, the report, the
tests) get them from `read_*`, never from string keys of raw JSON. Each file carries a
`version`; a file written before versions existed (version 1: no key) is read with the
changes listed in each `from_json`, so older experiments still resume.

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
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import xxhash

from src.arguments import result_config
from src.experiment_io import read_json, write_json_atomic

FORMAT_VERSION = 2


def digest(value: object) -> str:
    """The one digest of a JSON value (its canonical form): XXH3-128, hex."""
    return xxhash.xxh3_128(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()


def checkpoint_fingerprint(files: dict[str, dict], bases: list[dict[str, dict]]) -> str:
    """A checkpoint's identity: the digest of its files' records (DigestCache.directory)
    and, for a LoRA adapter, of its base models' files (its embeddings depend on them)."""
    return digest({"files": files, "bases": bases})


def _version(data: dict) -> int:
    return int(data.get("version", 1))


def _build(cls, data: dict):
    """`cls` from a dict, ignoring keys it does not declare."""
    names = {f.name for f in fields(cls)}
    return cls(**{key: value for key, value in data.items() if key in names})


class Artifact:
    """An artifact file: `meta` says what it was made from (compared on resume)."""

    meta: dict

    def to_json(self) -> dict:
        return {"version": FORMAT_VERSION, **asdict(self)}

    def write(self, path: Path) -> None:
        write_json_atomic(path, self.to_json())

    @classmethod
    def from_json(cls, data: dict):
        return _build(cls, data)

    @classmethod
    def read(cls, path: str | Path):
        return cls.from_json(read_json(path))


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
class MinedNegative:
    image: str
    score: float | None  # None: drawn at random (the baseline), not ranked
    rank: int | None


@dataclass
class MinedQuery:
    negatives: list[MinedNegative]
    target_rank: int | None = None
    target_score: float | None = None

    @classmethod
    def from_json(cls, data: dict) -> MinedQuery:
        negatives = [_build(MinedNegative, n) for n in data.get("negatives", [])]
        return cls(negatives, data.get("target_rank"), data.get("target_score"))


@dataclass
class HardNegatives(Artifact):
    meta: dict
    stats: dict
    queries: dict[str, MinedQuery]

    def negative_images(self) -> dict[str, list[str]]:
        """{pairid: the mined images, in rank order}."""
        return {pairid: [n.image for n in query.negatives] for pairid, query in self.queries.items()}

    def queries_json(self) -> dict:
        return {pairid: asdict(query) for pairid, query in self.queries.items()}

    @classmethod
    def from_json(cls, data: dict) -> HardNegatives:
        meta = dict(data.get("meta", {}))
        if _version(data) == 1 and "options" in meta:
            options = dict(meta["options"])
            meta["seed"] = options.pop("seed", meta.get("seed"))
            meta["options"] = {_V1_MINING_OPTIONS.get(k, k): v for k, v in options.items()}
        queries = {pairid: MinedQuery.from_json(q) for pairid, q in data.get("queries", {}).items()}
        return cls(meta, data.get("stats", {}), queries)


# ---------------------------------------------------------------- new texts


@dataclass
class AugmentedSample:
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
    consistency: dict | None = None  # {"new_text_yes", "original_text_yes"}
    verify: dict | None = None  # {"new_target_score", "original_target_score"}
    simulation: dict | None = None


@dataclass
class RejectedSample:
    pairid: str
    source_pairid: str
    reference: str
    target: str
    reason: str
    text: str | None
    raw_output: str | None
    simulation: dict | None = None


@dataclass
class AugmentedSamples(Artifact):
    meta: dict
    stats: dict
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
    def from_json(cls, data: dict) -> AugmentedSamples:
        samples = []
        for sample in data.get("samples", []):
            sample = dict(sample)
            verify = sample.get("verify")
            if _version(data) == 1 and verify:  # version 1 named the new target's score target_score
                sample["verify"] = {
                    "new_target_score": verify["target_score"],
                    "original_target_score": verify["original_target_score"],
                }
            samples.append(_build(AugmentedSample, sample))
        rejected = [_build(RejectedSample, r) for r in data.get("rejected", [])]
        return cls(
            data.get("meta", {}),
            data.get("stats", {}),
            samples,
            rejected,
            data.get("false_negatives", {}),
        )


@dataclass
class PartialGenerations(Artifact):
    """{pairid: {"text", "finished", ...}} generated so far, with the meta they were made for."""

    meta: dict
    generations: dict[str, dict]


# ---------------------------------------------------------------- evaluation


@dataclass
class QueryRanking:
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

    meta: dict
    metrics: dict[str, float] | None = None
    queries: dict[str, QueryRanking] = field(default_factory=dict)
    submission_files: list[str] = field(default_factory=list)
    modalities: dict[str, float | int | None] | None = None

    @classmethod
    def from_json(cls, data: dict) -> Evaluation:
        queries = {p: _build(QueryRanking, q) for p, q in data.get("queries", {}).items()}
        return cls(
            data.get("meta", {}),
            data.get("metrics"),
            queries,
            data.get("submission_files", []),
            data.get("modalities"),
        )


# ---------------------------------------------------------------- checkpoints


@dataclass
class CheckpointRecord(Artifact):
    """checkpoint_iter_{i}/stage.json: the meta it was made for, the training summary, its
    fingerprint (the digest of its files as written) and, for a LoRA adapter, the records
    of its base model's files."""

    meta: dict
    iteration: int
    summary: dict
    fingerprint: str
    base_models: list[dict] = field(default_factory=list)

    @classmethod
    def from_json(cls, data: dict) -> CheckpointRecord:
        """The recorded result config is read by the current rules (a flag that no longer
        changes results drops out; one added since is absent at its default)."""
        record = _build(cls, data)
        if "config" in record.meta:
            record.meta = {**record.meta, "config": result_config(record.meta["config"])}
        return record
