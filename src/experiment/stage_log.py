"""stages.jsonl: one line per stage that ran, with the size and hash of every file it wrote.

A stage's artifact is trusted only while its files match the record written with it
(src/integrity.py re-checks them cheaply by inode stamp).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
from pathlib import Path

from src.integrity import DigestCache


def now() -> str:
    return dt.datetime.now().astimezone().isoformat(timespec="seconds")


class StageLog:
    def __init__(self, path: Path, digests: DigestCache):
        self.path = path
        self.digests = digests

    def record(self, stage: str, iteration: int, summary: dict, artifact: Path | None = None) -> None:
        """Append a finished stage, with the size and hash of what it wrote."""
        entry = {"stage": stage, "iteration": iteration, "time": now(), "meta": summary}
        if artifact is not None:
            records = (
                self.digests.directory(artifact)
                if artifact.is_dir()
                else self.digests.record(artifact)
            )
            entry["artifact"] = {"name": artifact.name, "files": records}
        with open(self.path, "a") as file:
            file.write(json.dumps(entry) + "\n")
            file.flush()
            os.fsync(file.fileno())

    def entries(self) -> list[dict]:
        """Every entry; a line cut off by a crash mid-write is skipped."""
        if not self.path.is_file():
            return []
        entries = []
        for line in self.path.read_text().splitlines():
            with contextlib.suppress(ValueError):
                entries.append(json.loads(line))
        return entries

    def record_of(self, artifact: Path) -> dict | None:
        """The file records of the last stage that wrote `artifact` (None: never finished)."""
        records = None
        for entry in self.entries():
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
