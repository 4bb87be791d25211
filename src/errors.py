"""The project's error types: what the user can fix, told in one line.

A `UsageError` is a mistake in what the user gave (a path, a flag, an annotation file, a
resume that does not match, a directory in use). The entry points print its message on
one line and exit with status 2, without a traceback (`--debug` or CIR_DEBUG=1 shows it).
Anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

USAGE_EXIT_STATUS = 2
INTERRUPTED_EXIT_STATUS = 128 + 15  # as a process ended by SIGTERM


class UsageError(ValueError):
    """A user error; the message names the file, field or flag and says what to do."""


class ArgumentError(UsageError):
    """A flag out of range, or flags that do not go together."""


class AnnotationError(UsageError):
    """Bad dataset input; the message names the file and the field or entry."""


class ExperimentError(UsageError):
    """An experiment directory that a run must not use as it is; the message says why."""


class QueryError(UsageError):
    """A query that cannot be asked: a missing or unreadable image, an empty text."""


class IntegrityError(UsageError):
    """A file that does not match the size and hash recorded when it was written."""


class TrainingInterrupted(Exception):
    """Training stopped on SIGTERM after saving a checkpoint; the run ends, resumable."""
