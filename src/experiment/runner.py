"""The experiment: its layout, stage log and config, and the one helper that runs a stage.

A stage is done when its artifact exists, matches the size and hash recorded in
stages.jsonl when it was written, and the meta stored with it matches the current run's
(every key, each side read by the current format: src/artifacts.py). `run_step` is the
one place that decides this (on rank 0, for every process), runs the step on every
process when it is not done, writes the artifact from rank 0 and waits for the others.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import shutil
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

from src.artifacts import Artifact, CheckpointRecord, Evaluation
from src.distributed import barrier, decided_by_main, is_main
from src.errors import IntegrityError
from src.experiment.config import ExperimentConfig, experiment_lock
from src.experiment.layout import STAGE_RECORD_NAME, ExperimentLayout, round_of
from src.experiment.stage_log import StageLog
from src.experiment_io import write_json_atomic
from src.integrity import DigestCache

if TYPE_CHECKING:
    from src.experiment.step import Step

logger = logging.getLogger("experiment")


@dataclasses.dataclass
class StageOutput:
    """What a stage's work gives: the artifact, and its summary for stages.jsonl (the
    stage's record in src/records.py SUMMARIES)."""

    artifact: Artifact
    summary: object


@dataclasses.dataclass(frozen=True)
class VerifiedCheckpoint:
    """A finished checkpoint_iter_i whose files match their records, and its identity."""

    path: Path
    iteration: int
    fingerprint: str
    meta: dict


def _record_file(path: Path, kind: type[Artifact]) -> Path:
    """Where an artifact's JSON lives: the file itself, or a checkpoint's stage.json."""
    return path / STAGE_RECORD_NAME if kind is CheckpointRecord else path


class Experiment(ExperimentLayout):
    def __init__(self, directory: str | Path):
        super().__init__(directory)
        self.digests = DigestCache(self.digests_file)
        self.log = StageLog(self.stages_file, self.digests)
        self.config = ExperimentConfig(self)

    @contextmanager
    def lock(self) -> Iterator[None]:
        with experiment_lock(self):
            yield

    def finished_checkpoints(self) -> list[int]:
        """Iterations whose checkpoint_iter_i has a record of being finished."""
        return [i for i in self.checkpoint_iterations() if self.log.record_of(self.checkpoint(i))]

    # ---- moving aside (nothing is deleted) ----
    def move_aside(self, paths: list[Path]) -> Path | None:
        """Move `paths` into a new `moved_aside_{time}/`; rebuild the results summary."""
        paths = [path for path in paths if path.exists()]
        if not paths:
            return None
        moved = self.new_moved_aside_dir()
        moved.mkdir(parents=True)
        for path in paths:
            shutil.move(str(path), moved / path.name)
        self.write_results_summary()
        return moved

    def move_rounds_aside(self, first_round: int) -> Path | None:
        """Move the artifacts of rounds >= first_round aside (--resume_from_iteration)."""
        return self.move_aside(self.artifacts_from_round(first_round))

    def move_checkpoint_aside(self, iteration: int) -> Path | None:
        """Move checkpoint_iter_{iteration} aside with everything made from it (its Trainer
        folder, its evaluations, every later round), keeping the round's own inputs."""
        return self.move_aside(self.own_artifacts(iteration) + self.artifacts_from_round(iteration + 1))

    # ---- stages ----
    def why_not_done(self, path: Path, kind: type[Artifact], meta: dict) -> str | None:
        """None when `path` is done for `meta` (every key of `meta` equal); else why not."""
        reason = self.log.mismatch(path)
        if reason is not None:
            return reason
        stored = kind.read(_record_file(path, kind)).meta
        meta = json.loads(json.dumps(meta))  # as it reads back from JSON (keys, tuples)
        changed = sorted(key for key in meta if stored.get(key) != meta[key])
        if changed:
            return f"{path.name} was made with other settings ({', '.join(changed)})"
        return None

    def run_step(self, step: Step) -> Artifact:
        """Run a step unless its artifact is done; returns the artifact. The one runner of
        every step (src/experiment/step.py).

        The step's meta is derived once; `step.produce` runs on every process; rank 0 then
        writes the artifact (a JSON file with the meta in it; a directory: through
        `step.save`), records it in stages.jsonl, and every process waits at a barrier. An
        artifact that exists but is not done is reported; a JSON file is rewritten, a
        directory is moved aside with every later round.
        """
        stage, iteration, path, kind = step.stage, step.iteration, step.artifact, step.kind
        meta = step.meta()
        reason, exists = decided_by_main(lambda: (self.why_not_done(path, kind, meta), path.exists()))
        if reason is None:
            logger.info("%s %d: %s is done, skipping", stage, iteration, path.name)
            return kind.read(_record_file(path, kind))
        if exists:
            logger.warning("%s %d: redoing it: %s", stage, iteration, reason)
            if path.is_dir() and is_main():  # a checkpoint: it and what was made from it
                self.move_checkpoint_aside(round_of(path.name))
            barrier()
        start = time.perf_counter()
        logger.info("== %s %d -> %s", stage, iteration, path.name)
        output = step.produce()
        output.artifact.meta = {**output.artifact.meta, **meta}
        if is_main():
            if step.save is None:
                output.artifact.write(path)
            else:
                step.save(path, output)
            self.log.record(stage, iteration, output.summary, path)
        barrier()
        logger.info("== %s %d done in %.1f s", stage, iteration, time.perf_counter() - start)
        return output.artifact

    # ---- checkpoints ----
    def verified_checkpoint(self, iteration: int) -> VerifiedCheckpoint:
        """checkpoint_iter_{iteration}, after checking its files against their records.

        A checkpoint (or, for a LoRA adapter, its base model) changed or damaged since it
        was written is an IntegrityError that names the file: its embeddings and metrics
        would not be what they claim to be. Rank 0 checks; every process gets its verdict.
        """
        return decided_by_main(lambda: self._verify_checkpoint(iteration))

    def _verify_checkpoint(self, iteration: int) -> VerifiedCheckpoint:
        path = self.checkpoint(iteration)
        reason = self.log.mismatch(path)
        if reason is not None:
            raise IntegrityError(
                f"{path.name} cannot be used: {reason}. Rerun that round with --auto_resume "
                f"--resume_from_iteration {iteration}"
            )
        record = CheckpointRecord.read(self.checkpoint_record(iteration))
        for base in record.base_models:
            reason = self.digests.directory_mismatch(base["path"], base["files"])
            if reason is not None:
                raise IntegrityError(
                    f"{path.name} is a LoRA adapter on {base['path']}, which has changed since "
                    f"the adapter was trained ({reason}); restore that base model or retrain"
                )
        return VerifiedCheckpoint(path, iteration, record.fingerprint, record.meta)

    # ---- evaluation ----
    def write_results_summary(self) -> dict:
        """Rebuild evaluation_results.json from the validation files of every round."""
        results = {
            f"iter_{i}": Evaluation.read(self.evaluation("val", i)).metrics
            for i in self.evaluated_rounds("val")
        }
        if results or self.evaluation_results.is_file():
            write_json_atomic(self.evaluation_results, results)
        return results
