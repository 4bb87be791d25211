"""The experiment directory's layout: every file and folder name a run writes, in one place.

docs/experiment_directory.md describes what each holds. No other module spells an
artifact's name; they ask an `ExperimentLayout` (an `Experiment` is one) for its path.
"""

from __future__ import annotations

import datetime as dt
import re
from pathlib import Path

from src.distributed import SHARED_CHECK_DIR

CONFIG_NAME = "experiment_config.json"
STAGES_NAME = "stages.jsonl"
STAGE_RECORD_NAME = "stage.json"  # inside a checkpoint_iter_{i}/
RESULTS_NAME = "evaluation_results.json"
RESULTS_PLOT_NAME = "evaluation_results.png"
EMBEDDINGS_NAME = "embeddings"
TENSORBOARD_NAME = "tensorboard"
REPORT_NAME = "report"
LOCK_NAME = ".lock"
LOCK_OWNER_NAME = ".lock.owner"
DIGESTS_NAME = ".digests.json"
MOVED_ASIDE_PREFIX = "moved_aside_"
CHECKPOINT_PREFIX = "checkpoint_iter_"
PARTIAL_SUFFIX = ".partial"  # a checkpoint being written, renamed into place when whole
# Files that are not the experiment's work: its lock, the hash memory, a process check.
HIDDEN_NAMES = (LOCK_NAME, LOCK_OWNER_NAME, DIGESTS_NAME, SHARED_CHECK_DIR)


def round_of(name: str) -> int | None:
    """The round an artifact belongs to, from its name (round i mines with checkpoint_iter_{i-1})."""
    stem = name.removesuffix(".json")
    prefix, _, number = stem.rpartition("_iter_")
    if not prefix or not number.isdigit():
        return None
    return int(number) + 1 if prefix == "hard_negatives" else int(number)


class ExperimentLayout:
    """Paths of an experiment directory's files."""

    def __init__(self, directory: str | Path):
        self.dir = Path(directory)

    def checkpoint(self, i: int) -> Path:
        return self.dir / f"{CHECKPOINT_PREFIX}{i}"

    def checkpoint_record(self, i: int) -> Path:
        return self.checkpoint(i) / STAGE_RECORD_NAME

    def hard_negatives(self, i: int) -> Path:
        """Mined with checkpoint_iter_{i}; round i + 1 trains with them."""
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

    def evaluated_rounds(self, split: str = "val") -> list[int]:
        return sorted(round_of(p.name) for p in self.dir.glob(self.evaluation(split, "*").name))

    def submission(self, i: int, metric: str) -> Path:
        """A CIRR test1 submission file of checkpoint_iter_{i}."""
        return self.dir / f"cirr_test_submission_iter_{i}_{metric}.json"

    def train_dir(self, i: int) -> Path:
        """The Trainer's output of round i (checkpoint-N for mid-round resume)."""
        return self.dir / f"train_iter_{i}"

    @property
    def tensorboard_root(self) -> Path:
        return self.dir / TENSORBOARD_NAME

    def tensorboard_dir(self, i: int) -> Path:
        """Round i's TensorBoard run (`tensorboard --logdir {experiment}/tensorboard`)."""
        return self.tensorboard_root / f"round_{i}"

    @property
    def embeddings_dir(self) -> Path:
        return self.dir / EMBEDDINGS_NAME

    @property
    def evaluation_results(self) -> Path:
        return self.dir / RESULTS_NAME

    @property
    def evaluation_plot(self) -> Path:
        return self.dir / RESULTS_PLOT_NAME

    @property
    def config_file(self) -> Path:
        return self.dir / CONFIG_NAME

    @property
    def stages_file(self) -> Path:
        return self.dir / STAGES_NAME

    @property
    def report_dir(self) -> Path:
        return self.dir / REPORT_NAME

    @property
    def lock_file(self) -> Path:
        return self.dir / LOCK_NAME

    @property
    def lock_owner_file(self) -> Path:
        return self.dir / LOCK_OWNER_NAME

    @property
    def digests_file(self) -> Path:
        return self.dir / DIGESTS_NAME

    def new_moved_aside_dir(self) -> Path:
        return self.dir / f"{MOVED_ASIDE_PREFIX}{dt.datetime.now().strftime('%Y%m%d_%H%M%S_%f')}"

    def checkpoint_iterations(self) -> list[int]:
        """Iterations that have a checkpoint_iter_{i} folder (finished or not)."""
        found = []
        for path in self.dir.glob(f"{CHECKPOINT_PREFIX}*"):
            match = re.fullmatch(rf"{CHECKPOINT_PREFIX}(\d+)", path.name)
            if match and path.is_dir():
                found.append(int(match.group(1)))
        return sorted(found)

    def artifacts_from_round(self, first_round: int) -> list[Path]:
        """Everything rounds >= first_round wrote."""
        return [
            path
            for path in sorted(self.dir.glob("*_iter_*"))
            if (found := round_of(path.name)) is not None and found >= first_round
        ]

    def own_artifacts(self, iteration: int) -> list[Path]:
        """checkpoint_iter_{iteration} and what was made from it in its own round."""
        return [
            self.checkpoint(iteration),
            self.train_dir(iteration),
            *self.dir.glob(self.evaluation("*", iteration).name),
        ]

    def has_work(self) -> bool:
        """Whether anything but the config, the lock and the caches was written here."""
        ignored = {*HIDDEN_NAMES, CONFIG_NAME}
        return self.dir.exists() and any(p.name not in ignored for p in self.dir.iterdir())
