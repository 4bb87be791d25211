"""Typed records: what is inside the artifacts, the stage log and the experiment config.

Every JSON an experiment writes is made of these dataclasses and read back into them, so a
key is spelled once, here (a field, or its `json_key` where JSON needs a name Python does
not allow: `train_recall@1`), and its default, where a file written before the key existed
may lack it, is the field's default and nowhere else. Reading checks the record against
its declaration: a missing key (one without a default), a key the record does not declare
or a value of another type is a `RecordError` naming the file and the field in one line
(`hard_negatives_iter_0.json: stats.num_mined: expected int, got str '40'`).

- Mining: `MiningStats` (the file's `stats`: counts, train recall, the target-rank
  histogram, what each filter removed, score distributions), `MiningHeadline` (its five
  numbers in stages.jsonl).
- New texts: `Generation` (one captioner output: `text`, `finished`, a simulated
  captioner's `Simulation`), `FilterDiagnostics` (a filter's record on the simulated
  captioner's texts), `AugmentStats` / `AugmentSkipped` (the file's `stats`),
  `ConsistencyAnswers`, `VerifyScores`.
- The stage log: `StageEntry` (one line of stages.jsonl: its `summary`, written under the
  key "meta" for files of earlier releases, is a `TrainSummary`, `MineSummary`,
  `AugmentSummary` or the evaluation's metrics, by stage).
- The experiment: `ExperimentRecord` (experiment_config.json), whose saved arguments are
  parsed back into the flag groups (`ExperimentRecord.flags`, src/arguments.py's own
  classes, every value checked against its flag's type; a flag added since the experiment
  was written takes its declared default).

Why dataclasses with checks and not pydantic: the artifacts were already dataclasses and
the flags are dataclasses too (HfArgumentParser reads them); the types used are few (str,
int, float, bool, None, lists, string-keyed dicts, nested records, unions of them) and
the checker below covers them in about a hundred lines, with the one-line message the
project's errors follow. pydantic would be a new dependency for the same checks, with a
second way of declaring a field beside the flags'.
"""

from __future__ import annotations

import dataclasses
from dataclasses import MISSING, dataclass, field
from importlib import metadata
from typing import Any

from src.arguments import FLAG_GROUPS, Flags, IterativeTrainingArguments, declared_type, is_flag
from src.record_base import (
    Record,
    RecordError,
    dump,
    json_key,
    optional,
    parse_value,
    record_error,
    where_of,
)

__all__ = ["Record", "RecordError", "dump", "parse_value"]

# ---------------------------------------------------------------- mining


@dataclass(kw_only=True)
class ScoreDistribution(Record):
    """Scores of the targets or of the kept negatives ({"count": 0} when there are none)."""

    count: int
    mean: float | None = optional()
    std: float | None = optional()
    p5: float | None = optional()
    p25: float | None = optional()
    p50: float | None = optional()
    p75: float | None = optional()
    p95: float | None = optional()


@dataclass(kw_only=True)
class MiningHeadline(Record):
    """The mining numbers a stage-log line holds."""

    num_queries: int
    num_mined: int
    num_negatives: int
    train_recall_at_1: float | None = json_key("train_recall@1")
    train_recall_at_5: float | None = json_key("train_recall@5")


@dataclass(kw_only=True)
class MiningStats(MiningHeadline):
    """hard_negatives_iter_{i}.json `stats` (src/retrieval/mining.py says what each means).
    The random baseline over every query ranks nothing: no recall, an empty histogram."""

    queries_without_negatives: int
    target_rank_histogram: dict[str, int]
    removed_by_filter: dict[str, int]
    target_scores: ScoreDistribution
    negative_scores: ScoreDistribution

    def to_json(self) -> dict:  # the order of earlier files: the counts, then the recall
        data = super().to_json()
        order = ["num_queries", "num_mined", "num_negatives", "queries_without_negatives"]
        return {key: data[key] for key in order} | {k: v for k, v in data.items() if k not in order}

    def headline(self) -> MiningHeadline:
        return MiningHeadline(**{f.name: getattr(self, f.name) for f in dataclasses.fields(MiningHeadline)})


@dataclass(kw_only=True)
class MineSummary(Record):
    stats: MiningHeadline


# ---------------------------------------------------------------- new texts


@dataclass(kw_only=True)
class Simulation(Record):
    """A simulated captioner's record of one text: whether it describes the pair, the
    mistake it was given (None: none), the pair's differences and how many it names."""

    correct: bool
    error: str | None
    differences: int
    named: int


@dataclass(kw_only=True)
class Generation(Record):
    """One captioner output: the text (None: nothing describable), whether it ended on its
    own rather than at the token limit, and a simulated captioner's record of it."""

    text: str | None
    finished: bool
    simulation: Simulation | None = optional()


@dataclass(kw_only=True)
class FilterDiagnostics(Record):
    """How one filter did on a simulated captioner's texts (src/augment/filters.py):
    precision = wrong among removed, recall = removed among wrong (None: nothing to divide)."""

    wrong_in: int
    right_in: int
    wrong_removed: int
    right_removed: int
    precision: float | None
    recall: float | None


@dataclass(kw_only=True)
class ConsistencyAnswers(Record):
    new_text_yes: float
    original_text_yes: float


@dataclass(kw_only=True)
class VerifyScores(Record):
    new_target_score: float
    original_target_score: float


@dataclass(kw_only=True)
class AugmentSkipped(Record):
    """The `stats` of a round without new texts (--foundation_model_backbone none)."""

    skipped: str
    kept: int


@dataclass(kw_only=True)
class AugmentCounts(Record):
    """What a round's captioning did (its stage-log summary holds these too). The keys of
    --augment_selection are None in files written before it existed."""

    selection: str | None = None
    failures: int | None = None
    failure_queries: int | None = None
    pairs_available: int
    pairs: int
    queries_captioned_before: int | None = None
    pairs_resumed: int
    pairs_generated: int
    rejected: dict[str, int]
    kept: int
    false_negatives: int


@dataclass(kw_only=True)
class AugmentSeconds(Record):
    """Seconds of each part of a round's captioning (None: the part did not run)."""

    load: float | None = optional()
    generation: float
    consistency: float | None = optional()
    verify: float | None = optional()


@dataclass(kw_only=True)
class AugmentStats(AugmentCounts):
    """augmented_samples_iter_{i}.json `stats`: the counts, each filter's diagnostics
    (None: not a simulated captioner, or a file written before them), how the captioner
    ran and the seconds of each part."""

    filters: dict[str, FilterDiagnostics] | None = None
    run: dict[str, Any]  # the captioner's own description of how it ran (Captioner.describe)
    seconds: AugmentSeconds

    def summary(self, generator: str) -> AugmentSummary:
        counts = {f.name: getattr(self, f.name) for f in dataclasses.fields(AugmentCounts)}
        return AugmentSummary(generator=generator, run=self.run, **counts)


@dataclass(kw_only=True)
class AugmentSummary(AugmentCounts):
    generator: str
    run: dict[str, Any]

    def to_json(self) -> dict:  # the generator first, as earlier files have it
        data = super().to_json()
        return {"generator": data.pop("generator")} | data


@dataclass(kw_only=True)
class AugmentSkippedSummary(AugmentSkipped):
    generator: str

    def to_json(self) -> dict:
        data = super().to_json()
        return {"generator": data.pop("generator")} | data


# ---------------------------------------------------------------- training


@dataclass(kw_only=True)
class TrainSummary(Record):
    """A round's training (checkpoint_iter_{i}/stage.json `summary`, and its log line)."""

    train_loss: float
    steps: int
    resumed_from: str | None
    processes: int
    num_samples: int


@dataclass(kw_only=True)
class TrainSkipped(Record):
    skipped: str  # --skip_round0: the base model is checkpoint_iter_0
    num_samples: int


@dataclass(kw_only=True)
class SubmissionSummary(Record):
    submission_files: list[str]


# ---------------------------------------------------------------- the stage log

SUMMARIES: dict[str, Any] = {
    "train": TrainSummary | TrainSkipped,
    "mine": MineSummary,
    "augment": AugmentSummary | AugmentSkippedSummary,
    "evaluate": dict[str, float] | SubmissionSummary,  # a labelled split's metrics
}


@dataclass(kw_only=True)
class ArtifactFiles(Record):
    """What a stage wrote: the artifact's name and its files' records ({"size", hash} for
    a file; {file name: that} for a directory)."""

    name: str
    files: dict[str, Any]


@dataclass(kw_only=True)
class StageEntry(Record):
    """One line of stages.jsonl: a stage that finished, when, its summary and what it wrote."""

    stage: str
    iteration: int
    time: str
    summary: Any = json_key("meta")  # by stage: SUMMARIES
    artifact: ArtifactFiles | None = None

    @classmethod
    def from_json(cls, data: object, source: str = "stages.jsonl", where: str = "") -> StageEntry:
        entry = super().from_json(data, source, where)
        if entry.stage not in SUMMARIES:
            raise record_error(source, where_of(where, "stage"), f"unknown stage {entry.stage!r}")
        entry.summary = parse_value(SUMMARIES[entry.stage], entry.summary, source, where_of(where, "meta"))
        return entry


# ---------------------------------------------------------------- the experiment


@dataclass(kw_only=True)
class ConfigChange(Record):
    """A resume allowed to change result-changing flags: [flag, before, after] each."""

    time: str
    changes: list[list[Any]]


def _installed(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def saved_flags(arguments: dict, versions: dict[str, str], source: str) -> Flags:
    """The saved arguments as the flag groups, each value checked against its flag's type;
    a flag added since takes its declared default. A key no group declares is an error,
    unless the experiment was written under another transformers release (then it is a
    Trainer field of that release, ignored)."""
    groups, claimed = [], set()
    for group in (*FLAG_GROUPS, IterativeTrainingArguments):
        instance = object.__new__(group)  # as saved: the flags' cross-checks ran when it was made
        for item in dataclasses.fields(group):
            claimed.add(item.name)
            if item.name in arguments:
                value = arguments[item.name]
                if is_flag(item):  # the Trainer's own fields are kept as transformers wrote them
                    value = parse_value(declared_type(group, item), value, source, f"arguments.{item.name}")
            elif item.default is not MISSING:
                value = item.default
            elif item.default_factory is not MISSING:
                value = item.default_factory()
            else:
                continue
            object.__setattr__(instance, item.name, value)
        groups.append(instance)
    unknown = sorted(set(arguments) - claimed)
    if unknown and versions.get("transformers") == _installed("transformers"):
        raise record_error(source, f"arguments.{unknown[0]}", "unknown key (no flag of this name)")
    return Flags(*groups)


@dataclass(kw_only=True)
class ExperimentRecord(Record):
    """experiment_config.json: every argument, the result-changing ones apart, package
    versions, seed, start time, every allowed change, and the Trainer's defaults at the
    start (a Trainer field counts for a resume only where it leaves them; absent in
    experiments written before they were recorded). `flags`: the arguments as flag groups."""

    arguments: dict[str, Any]
    result_config: dict[str, Any]
    versions: dict[str, str]
    seed: int | None
    start_time: str
    config_changes: list[ConfigChange] = field(default_factory=list)
    trainer_defaults: dict[str, Any] | None = None
    flags: Flags | None = field(default=None, init=False, repr=False)

    @classmethod
    def from_json(cls, data: object, source: str = "experiment_config.json", where: str = ""):
        record = super().from_json(data, source, where)
        record.flags = saved_flags(record.arguments, record.versions, source)
        return record
