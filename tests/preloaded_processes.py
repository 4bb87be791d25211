"""Child processes that start with the project already imported, for the tests that must
end a process (a kill at a named point, SIGTERM) and see what it left.

They come from multiprocessing's fork server with `src.cli` preloaded: the server imports
torch, transformers and the project once, then forks one fresh child per run, which
starts at once instead of importing them again (about 6 s of CPU each here). Not forked
from the pytest process itself: a process that has already run OpenMP work (any torch
operation on 2 threads) hangs in the first parallel region of a forked child (measured on
this project's machine); the server has only imported, never computed.

A child is as `python train_iterative.py ...` would be: a process of its own with the
default torch thread count, its output in a file, its exit status the entry point's.
"""

from __future__ import annotations

import multiprocessing
import os
import sys
from multiprocessing.context import BaseContext
from pathlib import Path

PRELOADED = ["src.cli"]


def preloaded_context() -> BaseContext:
    """The fork server's context, the project preloaded in the server."""
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(PRELOADED)
    return context


def train_in_child(argv: list[str], environment: dict[str, str], log: str) -> None:
    """train_iterative.py's work in this (child) process: stdout and stderr to `log`, the
    exit status train_main's."""
    os.environ.update(environment)
    output = open(log, "w", buffering=1)  # noqa: SIM115 (the process ends with it open)
    os.dup2(output.fileno(), 1)
    os.dup2(output.fileno(), 2)
    sys.stdout = sys.stderr = output
    from src.cli import train_main

    sys.exit(train_main(argv))


def start_training(
    context: BaseContext, argv: list[str], log: Path, environment: dict[str, str] | None = None
) -> multiprocessing.Process:
    """A started child running `train_main(argv)` with `environment` added."""
    child = context.Process(target=train_in_child, args=(argv, environment or {}, str(log)))
    child.start()
    return child
