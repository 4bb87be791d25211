"""The experiment directory, split on its seams: `layout` (every name), `stage_log`
(stages.jsonl and the file records), `config` (experiment_config.json and the lock) and
`runner` (`Experiment`: the one helper that decides whether a stage is done and runs it).
docs/experiment_directory.md describes the directory."""

from src.experiment.runner import Experiment, StageOutput, VerifiedCheckpoint

__all__ = ["Experiment", "StageOutput", "VerifiedCheckpoint"]
