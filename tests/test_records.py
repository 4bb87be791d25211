"""Typed records (src/records.py): every key declared once, checked on read, with one line
naming the file and the field."""

from __future__ import annotations

import json
from importlib import metadata
from pathlib import Path

import pytest

from src.arguments import AugmentArguments, DataArguments, ModelArguments
from src.artifacts import AugmentedSamples, CheckpointRecord, Evaluation, HardNegatives
from src.experiment.stage_log import StageLog
from src.integrity import DigestCache
from src.records import (
    AugmentStats,
    ExperimentRecord,
    MineSummary,
    MiningStats,
    RecordError,
    TrainSummary,
)

INSTALLED = metadata.version("transformers")
FIXTURE = Path(__file__).resolve().parent / "data" / "experiment_v1"
FILES = {
    "hard_negatives_iter_0.json": HardNegatives,
    "augmented_samples_iter_1.json": AugmentedSamples,
    "evaluation_val_iter_0.json": Evaluation,
    "checkpoint_iter_0/stage.json": CheckpointRecord,
}


def broken(tmp_path: Path, name: str, change) -> Path:
    """A copy of a fixture file with `change(data)` applied."""
    data = json.loads((FIXTURE / name).read_text())
    change(data)
    path = tmp_path / Path(name).name
    path.write_text(json.dumps(data))
    return path


@pytest.mark.parametrize("name", sorted(FILES))
def test_every_file_of_an_older_release_reads_as_its_records_and_writes_back(name):
    record = FILES[name].read(FIXTURE / name)
    again = FILES[name].from_json(json.loads(json.dumps(record.to_json())), name)
    assert again == record


def test_the_stats_inside_the_files_are_typed():
    mined = HardNegatives.read(FIXTURE / "hard_negatives_iter_0.json")
    assert isinstance(mined.stats, MiningStats)
    assert mined.stats.train_recall_at_1 == 5.0 and mined.stats.target_scores.count == 40
    augmented = AugmentedSamples.read(FIXTURE / "augmented_samples_iter_1.json")
    assert isinstance(augmented.stats, AugmentStats)
    # keys added since that release read as absent, with the record's own default
    assert augmented.stats.selection is None and augmented.stats.filters is None
    assert augmented.stats.seconds.generation == 0.01 and augmented.stats.seconds.consistency is None


@pytest.mark.parametrize(
    ("change", "where", "what"),
    [
        (lambda d: d["stats"].pop("num_mined"), "stats.num_mined", "missing"),
        (lambda d: d["stats"].update(num_minde=3), "stats.num_minde", "unknown key"),
        (lambda d: d["stats"].update(num_mined="40"), "stats.num_mined", "expected int, got str '40'"),
        (lambda d: d["stats"]["target_scores"].update(mean="x"), "stats.target_scores.mean", "expected float"),
        (lambda d: d["queries"]["0"]["negatives"][1].update(rank=1.5), "queries.0.negatives[1].rank", "expected int"),
        (lambda d: d.update(version="2"), "version", "expected int"),
    ],
)  # fmt: skip
def test_a_missing_unknown_or_mistyped_key_names_the_file_and_the_field(tmp_path, change, where, what):
    path = broken(tmp_path, "hard_negatives_iter_0.json", change)
    with pytest.raises(RecordError) as raised:
        HardNegatives.read(path)
    message = str(raised.value)
    assert "\n" not in message and message.startswith(f"{path}: {where}: ") and what in message


def test_a_union_record_is_chosen_by_its_keys_and_reports_the_field(tmp_path):
    path = broken(tmp_path, "augmented_samples_iter_1.json", lambda d: d["stats"].update(kept="11"))
    with pytest.raises(RecordError, match=r"augmented_samples_iter_1.json: stats.kept: expected int"):
        AugmentedSamples.read(path)
    skipped = broken(tmp_path, "augmented_samples_iter_1.json",
                     lambda d: d.update(stats={"skipped": "none", "kept": 0}, samples=[], rejected=[]))  # fmt: skip
    assert AugmentedSamples.read(skipped).stats.skipped == "none"


def test_the_stage_log_reads_as_typed_summaries_by_stage(tmp_path):
    log = StageLog(FIXTURE / "stages.jsonl", DigestCache())
    summaries = log.latest()
    assert isinstance(summaries["train", 0], TrainSummary) and summaries["train", 0].num_samples == 40
    assert isinstance(summaries["mine", 0], MineSummary) and summaries["mine", 0].stats.train_recall_at_5 == 42.5
    assert summaries["augment", 1].generator == "scene_oracle" and summaries["augment", 1].kept == 11
    assert summaries["evaluate", 0]["avg"] == 9.375
    lines = (FIXTURE / "stages.jsonl").read_text().splitlines()
    entry = json.loads(lines[2])
    entry["meta"]["stats"]["num_mined"] = "many"
    (tmp_path / "stages.jsonl").write_text("\n".join([*lines[:2], json.dumps(entry)]) + "\n")
    with pytest.raises(RecordError, match=r"stages.jsonl line 3: meta.stats.num_mined: expected int"):
        StageLog(tmp_path / "stages.jsonl", DigestCache()).entries()


def test_the_saved_arguments_read_back_as_the_flag_groups(tmp_path):
    record = ExperimentRecord.read(FIXTURE / "experiment_config.json")
    flags = record.flags
    assert flags.data.dataset_name == "cirr" and flags.data.max_train_samples == 48
    assert flags.training.per_device_train_batch_size == 8 and flags.training.seed == 0
    # flags added since that release take their declared default (written once, in the flag)
    assert flags.data.synthetic_domain == DataArguments.synthetic_domain
    assert flags.model.attn_implementation == ModelArguments.attn_implementation
    assert flags.augment.augment_selection == AugmentArguments.augment_selection
    for change, where in (
        (lambda d: d["arguments"].update(max_train_samples="48"), "arguments.max_train_samples"),
        (lambda d: d["arguments"].update(no_such_flag=1) or d["versions"].update(transformers=INSTALLED),
         "arguments.no_such_flag"),
        (lambda d: d.pop("start_time"), "start_time"),
    ):
        path = broken(tmp_path, "experiment_config.json", change)
        with pytest.raises(RecordError, match=rf"experiment_config.json: {where}: "):
            ExperimentRecord.read(path)
    # written under another transformers release, a key no flag declares is a Trainer field
    # of that release: kept in the arguments, not an error
    path = broken(tmp_path, "experiment_config.json",
                  lambda d: d["arguments"].update(retired_field=1) or d["versions"].update(transformers="4.0.0"))  # fmt: skip
    assert ExperimentRecord.read(path).arguments["retired_field"] == 1
