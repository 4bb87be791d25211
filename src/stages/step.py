"""A step of the job: one stage of one round, as data.

`src/rounds.py` lists the job's steps in order; the run executes them and `--plan` prints
them, from the same list, so the two cannot disagree.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from src.artifacts import Artifact


@dataclass(frozen=True)
class Step:
    """`stage` of round `round`, writing `artifact` (a `kind` of src/artifacts.py).

    `iteration` is the index in the artifact's name (round i mines hard_negatives_iter_{i-1});
    `meta()` is what a finished artifact must have been made from to be skipped; `run()`
    does the stage (skipping it when done); `describes` what it does, for `--plan`, and
    `work` its amounts ({"train": optimizer steps, "encode": items, "caption": pairs}).
    """

    stage: str
    round: int
    iteration: int
    artifact: Path
    kind: type[Artifact]
    meta: Callable[[], dict]
    run: Callable[[], Artifact]
    describes: str
    work: dict[str, int] = field(default_factory=dict)
