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
from src.records import ArtifactFiles, StageEntry


def now() -> str:
    return dt.datetime.now().astimezone().isoformat(timespec="seconds")


class StageLog:
    def __init__(self, path: Path, digests: DigestCache):
        self.path = path
        self.digests = digests

    def record(self, stage: str, iteration: int, summary: object, artifact: Path | None = None) -> None:
        """Append a finished stage (`summary`: its record, src/records.py SUMMARIES), with
        the size and hash of what it wrote."""
        files = None
        if artifact is not None:
            records = (
                self.digests.directory(artifact)
                if artifact.is_dir()
                else self.digests.record(artifact)
            )
            files = ArtifactFiles(name=artifact.name, files=records)
        entry = StageEntry(stage=stage, iteration=iteration, time=now(), summary=summary, artifact=files)
        line = entry.to_json()
        StageEntry.from_json(json.loads(json.dumps(line)), str(self.path))  # as it will read back
        with open(self.path, "a") as file:
            file.write(json.dumps(line) + "\n")
            file.flush()
            os.fsync(file.fileno())

    def entries(self) -> list[StageEntry]:
        """Every entry; a line cut off by a crash mid-write is skipped, one that reads but
        does not match its record is an error naming the file and field."""
        if not self.path.is_file():
            return []
        entries = []
        for number, line in enumerate(self.path.read_text().splitlines(), start=1):
            data = None
            with contextlib.suppress(ValueError):
                data = json.loads(line)
            if data is not None:
                entries.append(StageEntry.from_json(data, f"{self.path} line {number}"))
        return entries

    def latest(self) -> dict[tuple[str, int], object]:
        """The summary of the last run of each (stage, iteration)."""
        return {(entry.stage, entry.iteration): entry.summary for entry in self.entries()}

    def record_of(self, artifact: Path) -> dict | None:
        """The file records of the last stage that wrote `artifact` (None: never finished)."""
        records = None
        for entry in self.entries():
            if entry.artifact is not None and entry.artifact.name == artifact.name:
                records = entry.artifact.files
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
