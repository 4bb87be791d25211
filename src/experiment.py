"""The experiment directory: its layout, its config, its lock, and which stages are done.

```
{experiment_dir}/
  experiment_config.json            every argument, versions, seed, start time
  stages.jsonl                      one line per finished stage (what ran, when, its meta)
  checkpoint_iter_{i}/              embedder (full model or LoRA adapter) + processor + stage.json
  hard_negatives_iter_{i}.json      mined with checkpoint_iter_{i}
  augmented_samples_iter_{i}.json   new triplets for round i
  embeddings/                       cached embeddings keyed by weights and inputs
  evaluation_results.json           {"iter_i": {metric: value}}
  train_iter_{i}/                   Trainer output (checkpoint-N for mid-round resume)
```
A stage is done when its artifact exists and the meta stored with it matches the current
configuration. Every JSON is written atomically (temporary file, then rename).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import shutil
import socket
from collections.abc import Iterator
from importlib import metadata
from pathlib import Path

from src.experiment_io import read_json, write_json_atomic

CONFIG_NAME = "experiment_config.json"
LOCK_NAME = ".lock"
STAGES_NAME = "stages.jsonl"
STAGE_META_NAME = "stage.json"

# Arguments that change how a run is operated, not what it computes.
OPERATIONAL_KEYS = frozenset(
    {
        "config",
        "experiment_dir",
        "auto_resume",
        "resume_from_iteration",
        "allow_config_change",
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
    }
)
PACKAGES = ("torch", "transformers", "peft", "accelerate", "datasets", "faiss-cpu", "qwen-vl-utils")


class ExperimentError(RuntimeError):
    """A run that must not go on; the message says why and what to do."""


def result_config(arguments: dict) -> dict:
    """The arguments that change results (those a resume must not silently change)."""
    return {k: v for k, v in sorted(arguments.items()) if k not in OPERATIONAL_KEYS}


def package_versions() -> dict[str, str]:
    versions = {}
    for name in PACKAGES:
        with contextlib.suppress(metadata.PackageNotFoundError):
            versions[name] = metadata.version(name)
    return versions


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class Experiment:
    def __init__(self, directory: str | Path):
        self.dir = Path(directory)

    # ---- layout ----
    def checkpoint(self, i: int) -> Path:
        return self.dir / f"checkpoint_iter_{i}"

    def hard_negatives(self, i: int) -> Path:
        return self.dir / f"hard_negatives_iter_{i}.json"

    def augmented(self, i: int) -> Path:
        return self.dir / f"augmented_samples_iter_{i}.json"

    def train_dir(self, i: int) -> Path:
        return self.dir / f"train_iter_{i}"

    @property
    def embeddings_dir(self) -> Path:
        return self.dir / "embeddings"

    @property
    def evaluation_results(self) -> Path:
        return self.dir / "evaluation_results.json"

    @property
    def config_file(self) -> Path:
        return self.dir / CONFIG_NAME

    def artifacts_from_round(self, first_round: int) -> list[Path]:
        """Everything rounds >= first_round wrote (round i mines with checkpoint_iter_{i-1})."""
        found = []
        for path in sorted(self.dir.glob("*_iter_*")):
            stem = path.name.removesuffix(".json")
            prefix, _, number = stem.rpartition("_iter_")
            if not number.isdigit():
                continue
            round_of = int(number) + 1 if prefix == "hard_negatives" else int(number)
            if round_of >= first_round:
                found.append(path)
        return found

    # ---- starting and resuming ----
    def is_empty(self) -> bool:
        return not self.dir.exists() or not any(p.name != LOCK_NAME for p in self.dir.iterdir())

    @contextlib.contextmanager
    def lock(self) -> Iterator[None]:
        """Refuse a second run on the same directory; a lock left by a dead process is taken over."""
        self.dir.mkdir(parents=True, exist_ok=True)
        path = self.dir / LOCK_NAME
        owner = {"pid": os.getpid(), "host": socket.gethostname()}
        while True:
            try:
                handle = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
            except FileExistsError:
                holder = json.loads(path.read_text() or "{}")
                same_host = holder.get("host") == owner["host"]
                if same_host and not _pid_alive(int(holder.get("pid", -1))):
                    path.unlink(missing_ok=True)
                    continue
                raise ExperimentError(
                    f"{self.dir} is in use by process {holder.get('pid')} on {holder.get('host')} "
                    f"(lock file {path}). Wait for it to finish, or delete the lock file if that "
                    "run is gone."
                ) from None
            with os.fdopen(handle, "w") as file:
                json.dump(owner, file)
            break
        try:
            yield
        finally:
            path.unlink(missing_ok=True)

    def start(self, arguments: dict, auto_resume: bool, allow_config_change: bool) -> None:
        """Write experiment_config.json for a new run, or check it against a resumed one."""
        if not self.config_file.is_file():
            if not self.is_empty():
                raise ExperimentError(
                    f"{self.dir} is not empty but has no {CONFIG_NAME}; choose another --experiment_dir"
                )
            self._write_config(arguments)
            return
        if not auto_resume:
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
        if differences:
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

    def move_rounds_aside(self, first_round: int) -> Path | None:
        """Move the artifacts of rounds >= first_round into `moved_aside_{time}/` (never delete)."""
        moved = self.dir / f"moved_aside_{dt.datetime.now().strftime('%Y%m%d_%H%M%S')}"
        artifacts = self.artifacts_from_round(first_round)
        for path in artifacts:
            moved.mkdir(parents=True, exist_ok=True)
            shutil.move(str(path), moved / path.name)
        anything = bool(artifacts)
        if self.evaluation_results.is_file():
            results = read_json(self.evaluation_results)
            kept = {k: v for k, v in results.items() if int(k.split("_")[-1]) < first_round}
            if kept != results:
                moved.mkdir(parents=True, exist_ok=True)
                shutil.copy(self.evaluation_results, moved / self.evaluation_results.name)
                write_json_atomic(self.evaluation_results, kept)
                anything = True
        return moved if anything else None

    # ---- stages ----
    def record_stage(self, stage: str, iteration: int, meta: dict) -> None:
        """Append a finished stage to stages.jsonl (the run's own account of what it did)."""
        line = json.dumps({"stage": stage, "iteration": iteration, "time": _now(), "meta": meta})
        with open(self.dir / STAGES_NAME, "a") as file:
            file.write(line + "\n")
            file.flush()
            os.fsync(file.fileno())

    def stage_log(self) -> list[dict]:
        path = self.dir / STAGES_NAME
        if not path.is_file():
            return []
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def config_differences(saved: dict, current: dict) -> list[tuple[str, object, object]]:
    keys = sorted(set(saved) | set(current))
    return [(k, saved.get(k), current.get(k)) for k in keys if saved.get(k) != current.get(k)]


def _now() -> str:
    return dt.datetime.now().astimezone().isoformat(timespec="seconds")
