"""The experiment directory: its layout, its config, its lock, and which stages are done.

```
{experiment_dir}/
  experiment_config.json            every argument, versions, seed, start time
  stages.jsonl                      one line per stage that ran: what, when, a summary, and
                                    the size and hash of every file it wrote
  checkpoint_iter_{i}/              embedder (full model or LoRA adapter) + processor + stage.json
  hard_negatives_iter_{i}.json      mined with checkpoint_iter_{i}
  augmented_samples_iter_{i}.json   new triplets for round i
  evaluation_{split}_iter_{i}.json  metrics of checkpoint_iter_{i} on a split (test1: the
                                    submission files written)
  evaluation_results.json           {"iter_i": {metric: value}}: the validation metrics of
                                    every evaluated round, rebuilt from the files above
  embeddings/                       cached embeddings keyed by weights and inputs
  train_iter_{i}/                   Trainer output (checkpoint-N for mid-round resume)
  tensorboard/round_{i}/            the round's training curves (TensorBoard)
  report/index.html                 the HTML report (src/report/html.py)
```

A stage is done when its artifact exists, matches the size and hash recorded in
stages.jsonl when it was written, and the meta stored with it matches the current run's.
`run_stage` is the one place that decides this, runs the stage on every process when it
is not done, writes the artifact from rank 0 and waits for the others.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import json
import logging
import os
import re
import shutil
import socket
import time
from collections.abc import Callable, Iterator
from importlib import metadata
from pathlib import Path

from filelock import FileLock, Timeout

from src.distributed import barrier, is_main
from src.errors import ExperimentError, IntegrityError
from src.experiment_io import read_json, write_json_atomic
from src.integrity import DigestCache

logger = logging.getLogger("experiment")

CONFIG_NAME = "experiment_config.json"
LOCK_NAME = ".lock"
LOCK_OWNER_NAME = ".lock.owner"
DIGESTS_NAME = ".digests.json"
STAGES_NAME = "stages.jsonl"
STAGE_META_NAME = "stage.json"
RESULTS_NAME = "evaluation_results.json"
TENSORBOARD_NAME = "tensorboard"
CHECKPOINT_PREFIX = "checkpoint_iter_"
_HIDDEN = (LOCK_NAME, LOCK_OWNER_NAME, DIGESTS_NAME)

# Arguments that change how a run is operated, not what it computes.
OPERATIONAL_KEYS = frozenset(
    {
        "config",
        "experiment_dir",
        "auto_resume",
        "resume_from_iteration",
        "allow_config_change",
        "plan",
        "no_report",
        "report_queries",
        "allow_external_images",
        "max_image_pixels",
        "num_iterations",
        "encode_batch_size",
        "foundation_batch_size",
        "augment_flush_every",
        "output_dir",
        "logging_dir",
        "logging_steps",
        "logging_first_step",
        "logging_strategy",
        "save_steps",
        "save_strategy",
        "save_total_limit",
        "disable_tqdm",
        "dataloader_num_workers",
        "dataloader_pin_memory",
        "dataloader_persistent_workers",
        "dataloader_prefetch_factor",
        "report_to",
        "run_name",
        "overwrite_output_dir",
        "resume_from_checkpoint",
        "cache_dir",
        "log_level",
        "log_level_replica",
        "use_cpu",
        "ddp_backend",
    }
)
PACKAGES = ("torch", "transformers", "peft", "accelerate", "datasets", "faiss-cpu", "qwen-vl-utils")


def result_config(arguments: dict) -> dict:
    """The arguments that change results (those a resume must not silently change)."""
    return {k: v for k, v in sorted(arguments.items()) if k not in OPERATIONAL_KEYS}


def package_versions() -> dict[str, str]:
    versions = {}
    for name in PACKAGES:
        with contextlib.suppress(metadata.PackageNotFoundError):
            versions[name] = metadata.version(name)
    return versions


def config_differences(saved: dict, current: dict) -> list[tuple[str, object, object]]:
    keys = sorted(set(saved) | set(current))
    return [(k, saved.get(k), current.get(k)) for k in keys if saved.get(k) != current.get(k)]


def _now() -> str:
    return dt.datetime.now().astimezone().isoformat(timespec="seconds")


def round_of(name: str) -> int | None:
    """The round an artifact belongs to, from its name (round i mines with checkpoint_iter_{i-1})."""
    stem = name.removesuffix(".json")
    prefix, _, number = stem.rpartition("_iter_")
    if not prefix or not number.isdigit():
        return None
    return int(number) + 1 if prefix == "hard_negatives" else int(number)


@dataclasses.dataclass
class StageResult:
    """What a stage's work gives: the artifact's content, and a summary for stages.jsonl."""

    content: dict
    summary: dict = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(frozen=True)
class VerifiedCheckpoint:
    """A finished checkpoint_iter_i whose files match their records, and its identity."""

    path: Path
    iteration: int
    fingerprint: str
    meta: dict


class Experiment:
    def __init__(self, directory: str | Path):
        self.dir = Path(directory)
        self.digests = DigestCache(self.dir / DIGESTS_NAME)

    # ---- layout ----
    def checkpoint(self, i: int) -> Path:
        return self.dir / f"{CHECKPOINT_PREFIX}{i}"

    def hard_negatives(self, i: int) -> Path:
        return self.dir / f"hard_negatives_iter_{i}.json"

    def augmented(self, i: int) -> Path:
        return self.dir / f"augmented_samples_iter_{i}.json"

    def partial_augmented(self, i: int, process: int | str) -> Path:
        """A process's augmentation in progress (the name ends in _iter_{i}.json, so it
        moves aside with round i)."""
        return self.dir / f"partial_rank{process}_augmented_samples_iter_{i}.json"

    def partial_augmented_files(self, i: int) -> list[Path]:
        """Every process's partial file of round i (from runs with any number of processes)."""
        return sorted(self.dir.glob(self.partial_augmented(i, "*").name))

    def evaluation(self, split: str, i: int) -> Path:
        return self.dir / f"evaluation_{split}_iter_{i}.json"

    def train_dir(self, i: int) -> Path:
        return self.dir / f"train_iter_{i}"

    def tensorboard_dir(self, i: int) -> Path:
        """Round i's TensorBoard run (`tensorboard --logdir {experiment}/tensorboard`)."""
        return self.dir / TENSORBOARD_NAME / f"round_{i}"

    @property
    def embeddings_dir(self) -> Path:
        return self.dir / "embeddings"

    @property
    def evaluation_results(self) -> Path:
        return self.dir / RESULTS_NAME

    @property
    def config_file(self) -> Path:
        return self.dir / CONFIG_NAME

    def finished_checkpoints(self) -> list[int]:
        """Iterations whose checkpoint_iter_i has a record of being finished."""
        found = []
        for path in self.dir.glob(f"{CHECKPOINT_PREFIX}*"):
            match = re.fullmatch(rf"{CHECKPOINT_PREFIX}(\d+)", path.name)
            if match and self.record_of(path) is not None:
                found.append(int(match.group(1)))
        return sorted(found)

    def artifacts_from_round(self, first_round: int) -> list[Path]:
        """Everything rounds >= first_round wrote."""
        return [
            path
            for path in sorted(self.dir.glob("*_iter_*"))
            if (found := round_of(path.name)) is not None and found >= first_round
        ]

    # ---- starting and resuming ----
    @contextlib.contextmanager
    def lock(self) -> Iterator[None]:
        """Refuse a second run on the same directory while the first is alive.

        The OS lock (flock, through filelock) is released when its holder dies, however it
        dies, so a crashed run never blocks the directory; the owner file only names the
        holder in the message.
        """
        self.dir.mkdir(parents=True, exist_ok=True)
        lock = FileLock(self.dir / LOCK_NAME, timeout=0)
        try:
            lock.acquire()
        except Timeout:
            raise ExperimentError(
                f"{self.dir} is in use by {self._lock_owner()}; wait for that run to finish or "
                "pass another --experiment_dir"
            ) from None
        try:
            write_json_atomic(
                self.dir / LOCK_OWNER_NAME,
                {"pid": os.getpid(), "host": socket.gethostname(), "since": _now()},
            )
            yield
        finally:
            (self.dir / LOCK_OWNER_NAME).unlink(missing_ok=True)
            lock.release()

    def _lock_owner(self) -> str:
        try:
            owner = json.loads((self.dir / LOCK_OWNER_NAME).read_text())
            return f"process {owner['pid']} on {owner['host']} (since {owner['since']})"
        except (OSError, ValueError, KeyError, TypeError):
            return "another process"

    def has_work(self) -> bool:
        """Whether anything but the config, the lock and the caches was written here."""
        ignored = {*_HIDDEN, CONFIG_NAME}
        return self.dir.exists() and any(p.name not in ignored for p in self.dir.iterdir())

    def check_start(self, arguments: dict, resuming: bool, allow_config_change: bool) -> list:
        """What `start` would refuse, raised before anything is written; returns the
        result-changing differences a resume with --allow_config_change records."""
        if not self.config_file.is_file() or not self.has_work():
            if self.has_work():
                raise ExperimentError(
                    f"{self.dir} is not empty but has no {CONFIG_NAME}; choose another --experiment_dir"
                )
            return []
        if not resuming:
            raise ExperimentError(
                f"{self.dir} already holds an experiment. Continue it with --auto_resume, rerun from "
                "a round with --auto_resume --resume_from_iteration N, or pass another --experiment_dir."
            )
        saved = read_json(self.config_file)
        differences = config_differences(saved["result_config"], result_config(arguments))
        if differences and not allow_config_change:
            listing = "\n".join(
                f"  {key}: experiment {old!r} -> now {new!r}" for key, old, new in differences
            )
            raise ExperimentError(
                f"resuming {self.dir} with arguments that change its results:\n{listing}\n"
                "Use the experiment's arguments, another --experiment_dir, or --allow_config_change."
            )
        return differences

    def start(self, arguments: dict, resuming: bool, allow_config_change: bool) -> None:
        """Write experiment_config.json for a new run (or one that stopped before writing
        anything else), or check it against a resumed one and record allowed changes."""
        differences = self.check_start(arguments, resuming, allow_config_change)
        if not self.config_file.is_file() or not self.has_work():
            self._write_config(arguments)
            return
        if differences:
            saved = read_json(self.config_file)
            saved.setdefault("config_changes", []).append(
                {"time": _now(), "changes": [list(d) for d in differences]}
            )
            saved["result_config"] = result_config(arguments)
            write_json_atomic(self.config_file, saved)

    def _write_config(self, arguments: dict) -> None:
        write_json_atomic(
            self.config_file,
            {
                "arguments": arguments,
                "result_config": result_config(arguments),
                "versions": package_versions(),
                "seed": arguments.get("seed"),
                "start_time": _now(),
            },
        )

    def saved_arguments(self) -> dict:
        if not self.config_file.is_file():
            raise ExperimentError(f"{self.dir}: no {CONFIG_NAME}; is this an experiment directory?")
        return read_json(self.config_file)["arguments"]

    def move_aside(self, paths: list[Path]) -> Path | None:
        """Move `paths` into a new `moved_aside_{time}/` (never delete); rebuild the summary."""
        paths = [path for path in paths if path.exists()]
        if not paths:
            return None
        moved = self.dir / f"moved_aside_{dt.datetime.now().strftime('%Y%m%d_%H%M%S_%f')}"
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
        own = [
            self.checkpoint(iteration),
            self.train_dir(iteration),
            *self.dir.glob(f"evaluation_*_iter_{iteration}.json"),
        ]
        return self.move_aside(own + self.artifacts_from_round(iteration + 1))

    # ---- stage records ----
    def record_stage(
        self, stage: str, iteration: int, summary: dict, artifact: Path | None = None
    ) -> None:
        """Append a finished stage, with the size and hash of what it wrote, to stages.jsonl."""
        entry = {"stage": stage, "iteration": iteration, "time": _now(), "meta": summary}
        if artifact is not None:
            records = (
                self.digests.directory(artifact)
                if artifact.is_dir()
                else self.digests.record(artifact)
            )
            entry["artifact"] = {"name": artifact.name, "files": records}
        with open(self.dir / STAGES_NAME, "a") as file:
            file.write(json.dumps(entry) + "\n")
            file.flush()
            os.fsync(file.fileno())

    def stage_log(self) -> list[dict]:
        """The stages.jsonl entries; a line cut off by a crash mid-write is skipped."""
        path = self.dir / STAGES_NAME
        if not path.is_file():
            return []
        entries = []
        for line in path.read_text().splitlines():
            with contextlib.suppress(ValueError):
                entries.append(json.loads(line))
        return entries

    def record_of(self, artifact: Path) -> dict | None:
        """The file records of the last stage that wrote `artifact` (None: never finished)."""
        records = None
        for entry in self.stage_log():
            if entry.get("artifact", {}).get("name") == artifact.name:
                records = entry["artifact"]["files"]
        return records

    def mismatch(self, artifact: Path) -> str | None:
        """Why `artifact` cannot be trusted (None when it matches what was recorded)."""
        if not artifact.exists():
            return f"{artifact} does not exist"
        records = self.record_of(artifact)
        if records is None:
            return f"{artifact} has no record of being finished (interrupted before it was recorded?)"
        if artifact.is_dir():
            return self.digests.directory_mismatch(artifact, records)
        return self.digests.mismatch(artifact, records)

    @staticmethod
    def stored_meta(artifact: Path) -> dict:
        if artifact.is_dir():
            return read_json(artifact / STAGE_META_NAME)["meta"]
        return read_json(artifact)["meta"]

    def why_not_done(self, artifact: Path, meta: dict) -> str | None:
        """None when `artifact` is done for `meta` (every key of `meta` equal); else why not."""
        reason = self.mismatch(artifact)
        if reason is not None:
            return reason
        stored = self.stored_meta(artifact)
        meta = json.loads(json.dumps(meta))  # as it reads back from JSON (keys, tuples)
        changed = sorted(key for key in meta if stored.get(key) != meta[key])
        if changed:
            return f"{artifact.name} was made with other settings ({', '.join(changed)})"
        return None

    def run_stage(
        self,
        stage: str,
        iteration: int,
        artifact: Path,
        meta: dict,
        work: Callable[[], StageResult],
        save: Callable[[Path, StageResult], None] | None = None,
    ) -> dict:
        """Run a stage unless its artifact is done; returns the artifact's content.

        `work` runs on every process; rank 0 then writes the artifact (JSON: `{"meta": ...}`
        plus the content; a directory: through `save`), records it in stages.jsonl, and
        every process waits at a barrier. An artifact that exists but is not done is
        reported; a JSON file is rewritten, a directory is moved aside with every later
        round (nothing is deleted).
        """
        reason = self.why_not_done(artifact, meta)
        if reason is None:
            logger.info("%s %d: %s is done, skipping", stage, iteration, artifact.name)
            return read_json(artifact / STAGE_META_NAME if artifact.is_dir() else artifact)
        if artifact.exists():
            logger.warning("%s %d: redoing it: %s", stage, iteration, reason)
            if artifact.is_dir() and is_main():  # a checkpoint: it and what was made from it
                self.move_checkpoint_aside(round_of(artifact.name))
            barrier()
        start = time.perf_counter()
        logger.info("== %s %d -> %s", stage, iteration, artifact.name)
        result = work()
        content = result.content
        if save is None:
            rest = {key: value for key, value in content.items() if key != "meta"}
            content = {"meta": {**content.get("meta", {}), **meta}, **rest}
        if is_main():
            if save is None:
                write_json_atomic(artifact, content)
            else:
                save(artifact, result)
            self.record_stage(stage, iteration, result.summary, artifact)
        barrier()
        logger.info("== %s %d done in %.1f s", stage, iteration, time.perf_counter() - start)
        return content

    # ---- checkpoints ----
    def verified_checkpoint(self, iteration: int) -> VerifiedCheckpoint:
        """checkpoint_iter_{iteration}, after checking its files against their records.

        A checkpoint (or, for a LoRA adapter, its base model) changed or damaged since it
        was written is an IntegrityError that names the file: its embeddings and metrics
        would not be what they claim to be.
        """
        path = self.checkpoint(iteration)
        reason = self.mismatch(path)
        if reason is not None:
            raise IntegrityError(
                f"{path.name} cannot be used: {reason}. Rerun that round with --auto_resume "
                f"--resume_from_iteration {iteration}"
            )
        stage = read_json(path / STAGE_META_NAME)
        for base in stage["base_models"]:
            reason = self.digests.directory_mismatch(base["path"], base["files"])
            if reason is not None:
                raise IntegrityError(
                    f"{path.name} is a LoRA adapter on {base['path']}, which has changed since "
                    f"the adapter was trained ({reason}); restore that base model or retrain"
                )
        return VerifiedCheckpoint(path, iteration, stage["fingerprint"], stage["meta"])

    # ---- evaluation ----
    def write_results_summary(self) -> dict:
        """Rebuild evaluation_results.json from the validation files of every round."""
        results = {}
        for path in sorted(self.dir.glob("evaluation_val_iter_*.json")):
            results[f"iter_{round_of(path.name)}"] = read_json(path)["metrics"]
        results = dict(sorted(results.items(), key=lambda item: int(item[0].split("_")[1])))
        if results or self.evaluation_results.is_file():
            write_json_atomic(self.evaluation_results, results)
        return results
