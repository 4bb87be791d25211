"""An experiment's config (experiment_config.json) and its lock: one run at a time, and a
resume that does not silently change what the experiment computes."""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import logging
import os
import socket
import tempfile
from collections.abc import Iterator
from importlib import metadata
from pathlib import Path

from filelock import FileLock, SoftFileLock, Timeout

from src.arguments import result_config, trainer_defaults
from src.errors import ExperimentError
from src.experiment.layout import CONFIG_NAME, ExperimentLayout
from src.experiment.stage_log import now
from src.experiment_io import write_json_atomic
from src.records import ConfigChange, ExperimentRecord

logger = logging.getLogger("experiment")

PACKAGES = ("torch", "transformers", "peft", "accelerate", "faiss-cpu", "qwen-vl-utils")


def package_versions() -> dict[str, str]:
    versions = {}
    for name in PACKAGES:
        with contextlib.suppress(metadata.PackageNotFoundError):
            versions[name] = metadata.version(name)
    return versions


def config_differences(
    saved: dict, current: dict, saved_defaults: dict | None = None
) -> list[tuple[str, object, object]]:
    """Result-changing keys that differ, both sides read by the current rules (a flag that
    no longer changes results is ignored; one added since counts only off its default; a
    Trainer field only off its default: the saved side's `saved_defaults` where the
    experiment recorded them). Each difference: (key, saved value, current value)."""
    today = trainer_defaults()
    # a field the experiment predates had, for it, today's default
    saved_defaults = today if saved_defaults is None else today | saved_defaults
    kept_saved = result_config(saved, defaults=saved_defaults)
    kept_current = result_config(current)
    at_default = object()

    def shown(kept: dict, raw: dict, key: str, defaults: dict) -> object:
        return kept[key] if key in kept else raw.get(key, defaults.get(key))

    return [
        (k, shown(kept_saved, saved, k, saved_defaults), shown(kept_current, current, k, today))
        for k in sorted(set(kept_saved) | set(kept_current))
        if kept_saved.get(k, at_default) != kept_current.get(k, at_default)
    ]


class ExperimentConfig:
    """experiment_config.json: every argument, versions, seed, start time, allowed changes."""

    def __init__(self, layout: ExperimentLayout):
        self.layout = layout

    @property
    def path(self):
        return self.layout.config_file

    def exists(self) -> bool:
        return self.path.is_file()

    def record(self) -> ExperimentRecord:
        """The experiment's record, its arguments parsed back into the flag groups."""
        if not self.exists():
            raise ExperimentError(f"{self.layout.dir}: no {CONFIG_NAME}; is this an experiment directory?")
        return ExperimentRecord.read(self.path)

    def check_start(self, arguments: dict, resuming: bool, allow_config_change: bool) -> list:
        """What `start` would refuse, raised before anything is written; returns the
        result-changing differences a resume with --allow_config_change records."""
        directory = self.layout.dir
        if not self.exists() or not self.layout.has_work():
            if self.layout.has_work():
                raise ExperimentError(
                    f"{directory} is not empty but has no {CONFIG_NAME}; choose another --experiment_dir"
                )
            return []
        if not resuming:
            raise ExperimentError(
                f"{directory} already holds an experiment. Continue it with --auto_resume, rerun "
                "from a round with --auto_resume --resume_from_iteration N, or pass another "
                "--experiment_dir."
            )
        record = self.record()
        differences = config_differences(record.result_config, arguments, record.trainer_defaults)
        if differences and not allow_config_change:
            listing = "\n".join(
                f"  {key}: experiment {old!r} -> now {new!r}" for key, old, new in differences
            )
            raise ExperimentError(
                f"resuming {directory} with arguments that change its results:\n{listing}\n"
                "Use the experiment's arguments, another --experiment_dir, or --allow_config_change."
            )
        return differences

    def start(self, arguments: dict, resuming: bool, allow_config_change: bool) -> None:
        """Write the config of a new run (or of one that stopped before writing anything
        else), or check it against a resumed one and record allowed changes."""
        differences = self.check_start(arguments, resuming, allow_config_change)
        if not self.exists() or not self.layout.has_work():
            record = ExperimentRecord(
                arguments=arguments,
                result_config=result_config(arguments),
                versions=package_versions(),
                seed=arguments["seed"],
                start_time=now(),
                trainer_defaults=trainer_defaults(),
            )
            write_json_atomic(self.path, record.to_json())
            return
        if differences:
            record = self.record()
            record.config_changes.append(
                ConfigChange(time=now(), changes=[list(d) for d in differences])
            )
            record.result_config = result_config(arguments)
            record.trainer_defaults = trainer_defaults()
            write_json_atomic(self.path, record.to_json())


# What flock(2) answers on a filesystem that does not offer it: Lustre mounted without
# `flock` (ENOSYS; filelock falls back to a soft lock by itself there, with a warning), NFS
# without a lock manager (ENOLCK), others (EOPNOTSUPP, EINVAL).
FLOCK_MISSING = (errno.ENOSYS, errno.ENOLCK, errno.EOPNOTSUPP, errno.EINVAL)


def flock_works(directory: Path) -> bool:
    """Whether the filesystem of `directory` (or of its nearest existing parent) takes
    flock, probed on a temporary file there."""
    existing = Path(directory)
    while not existing.exists():
        existing = existing.parent
    with tempfile.TemporaryFile(dir=existing) as probe:
        try:
            fcntl.flock(probe.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as error:
            if error.errno in FLOCK_MISSING:
                return False
            raise
        fcntl.flock(probe.fileno(), fcntl.LOCK_UN)
    return True


def soft_lock_line(directory: Path) -> str:
    return (
        f"{directory}: its filesystem has no flock; one run at a time is kept by a soft lock "
        "(a marker file, .lock: a run that died on another host leaves it behind)"
    )


@contextlib.contextmanager
def experiment_lock(layout: ExperimentLayout) -> Iterator[None]:
    """Refuse a second run on the same directory while the first is alive.

    The OS lock (flock, through filelock) is released when its holder dies, however it
    dies, so a crashed run never blocks the directory; the owner file only names the
    holder in the message. On a filesystem without flock (probed first: `flock_works`),
    filelock's SoftFileLock instead: a marker file, which it takes over from a holder that
    died on this host; one that died on another host must be deleted by hand.
    """
    layout.dir.mkdir(parents=True, exist_ok=True)
    soft = not flock_works(layout.dir)
    if soft:
        logger.warning(soft_lock_line(layout.dir))
    lock = (SoftFileLock if soft else FileLock)(layout.lock_file, timeout=0)
    try:
        lock.acquire()
    except Timeout:
        delete = f" (if that run is gone, delete {layout.lock_file})" if soft else ""
        raise ExperimentError(
            f"{layout.dir} is in use by {_lock_owner(layout)}{delete}; wait for that run to "
            "finish or pass another --experiment_dir"
        ) from None
    try:
        write_json_atomic(
            layout.lock_owner_file, {"pid": os.getpid(), "host": socket.gethostname(), "since": now()}
        )
        yield
    finally:
        layout.lock_owner_file.unlink(missing_ok=True)
        lock.release()


def _lock_owner(layout: ExperimentLayout) -> str:
    try:
        owner = json.loads(layout.lock_owner_file.read_text())
        return f"process {owner['pid']} on {owner['host']} (since {owner['since']})"
    except (OSError, ValueError, KeyError, TypeError):
        return "another process"
