"""A step of the job: one stage of one round, as data, with what it reads and depends on.

A step names its stage, round, artifact and the artifact's kind once; it declares the
inputs it reads (`Reads`: a checkpoint's fingerprint, a file's digest, a split's rows)
and the flags its output depends on (`DependsOn`: flag groups, or one flag); its meta,
what a finished artifact must have been made from to be skipped, is derived from those
declarations (`Step.meta`), so a flag added to a group it depends on enters the meta
without another edit. Every step runs through one runner, `Experiment.run_step`
(src/experiment/runner.py). `src/rounds.py` lists the job's steps in order; the run
executes them and `--plan` prints them, from the same list.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from src.arguments import result_config, result_options
from src.artifacts import Artifact

if TYPE_CHECKING:
    from src.experiment.runner import Experiment, StageOutput


def _put(meta: dict, key: str, value: object) -> None:
    """meta[key] = value, a dotted key nesting ("inputs.start")."""
    *outer, last = key.split(".")
    for part in outer:
        meta = meta.setdefault(part, {})
    meta[last] = value


@dataclass(frozen=True)
class Reads:
    """An input the step reads: its identity (a fingerprint or digest, computed when the
    meta is asked for) goes into the meta under `key`; `path`: the file, where it is one."""

    key: str
    identity: Callable[[], object]
    path: Path | None = None

    @classmethod
    def checkpoint(cls, experiment: Experiment, iteration: int) -> Reads:
        """The round's checkpoint, identified by its verified fingerprint."""
        return cls(
            "checkpoint_fingerprint",
            lambda: experiment.verified_checkpoint(iteration).fingerprint,
            experiment.checkpoint(iteration),
        )


@dataclass(frozen=True)
class DependsOn:
    """Flags the step's output depends on, under `key` in the meta: the result-changing
    flags of `groups` (flag-group instances: a flag added to a group is in, by its
    declaration), less `leave_out` (flags that choose which input is read, not what comes
    out); `only`: the value of that one field instead; `omit_empty`: no key while no flag
    counts, so a meta written before the key existed still matches."""

    key: str
    groups: tuple[object, ...]
    leave_out: tuple[str, ...] = ()
    only: str | None = None
    omit_empty: bool = False

    def value(self) -> object:
        if self.only is not None:
            return getattr(self.groups[0], self.only)
        return result_options(*self.groups, leave_out=self.leave_out)


@dataclass(frozen=True)
class DependsOnArguments:
    """Every result-changing argument of the run (`arguments()`: as experiment_config.json
    records them), under `key`: what a training round depends on."""

    key: str
    arguments: Callable[[], dict]
    omit_empty: bool = False

    def value(self) -> object:
        return result_config(self.arguments())


@dataclass(frozen=True)
class Step:
    """`stage` of round `round`, writing `artifact` (a `kind` of src/artifacts.py) in
    `experiment`.

    `iteration` is the index in the artifact's name (round i mines hard_negatives_iter_{i-1});
    `reads` and `depends_on` make its meta, with `facts` (what else the output depends on:
    the generator, the split's name, a prompt version); `produce` does the work (run on
    every process; `save` writes a directory artifact; `after` runs on the artifact, done
    or made); `describes` what it does, for `--plan`, and `work` its amounts ({"train":
    optimizer steps, "encode": items, "caption": pairs}).
    """

    stage: str
    round: int
    iteration: int
    artifact: Path
    kind: type[Artifact]
    experiment: Experiment
    produce: Callable[[], StageOutput]
    reads: tuple[Reads, ...] = ()
    depends_on: tuple[DependsOn | DependsOnArguments, ...] = ()
    facts: Callable[[], dict] = dict
    save: Callable[[Path, StageOutput], None] | None = None
    after: Callable[[Artifact], None] | None = None
    describes: str = ""
    work: dict[str, int] = field(default_factory=dict)

    def meta(self) -> dict:
        """What a finished artifact must have been made from to count as done."""
        meta: dict = {}
        for read in self.reads:
            _put(meta, read.key, read.identity())
        for dependency in self.depends_on:
            value = dependency.value()
            if value or not dependency.omit_empty:
                _put(meta, dependency.key, value)
        meta.update(self.facts())
        return meta

    def run(self) -> Artifact:
        """Run the step unless its artifact is done (`Experiment.run_step`)."""
        artifact = self.experiment.run_step(self)
        if self.after is not None:
            self.after(artifact)
        return artifact
