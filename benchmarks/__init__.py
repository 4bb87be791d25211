"""Benchmarks: each script writes JSON under benchmarks/results/; run them as `python -m benchmarks.<name>`.

Each script's options are a small dataclass declared with src/arguments.py's `flag()` (a
training flag it takes is that flag's own declaration, `flag_of`), read by `parse_options`.
It lives here, not in src/arguments.py, because it ends the process as a command line
does: the entry points run under src/cli.py's `run_entry`, which turns the same
`ArgumentError` into the same one line and exit status 2, but a benchmark is no entry
point (it starts no process group, and tests call its `main(argv)` directly).
"""

from __future__ import annotations

import sys
from collections.abc import Collection
from typing import TypeVar

from src.errors import USAGE_EXIT_STATUS, ArgumentError

Options = TypeVar("Options")


def check_listed(name: str, text: str, allowed: Collection[str]) -> list[str]:
    """The comma-separated names `--name` gives, each one of `allowed`: an options class's
    `__post_init__` calls it for a list flag (`--parts train,encode`), whose choices `flag()`
    cannot check as one value."""
    names = [item.strip() for item in text.split(",") if item.strip()]
    if not names or any(item not in allowed for item in names):
        raise ArgumentError(f"--{name} {text!r}: comma-separated, each one of {', '.join(allowed)}")
    return names


def listed_integers(name: str, text: str, at_least: int) -> list[int]:
    """The comma-separated integers `--name` gives (`--seeds 0,1,2`), each >= `at_least`."""
    items = [item.strip() for item in text.split(",")]
    if not all(item.isdigit() and int(item) >= at_least for item in items):
        raise ArgumentError(f"--{name} {text!r}: comma-separated integers, each >= {at_least}")
    return [int(item) for item in items]


def parse_options(options: type[Options], argv: list[str] | None, description: str) -> Options:
    """`argv` (default: the command line) read into `options`; a value out of its declared
    range or choices ends the process with one line naming the flag and exit status 2, as
    train_iterative.py does (argparse's own refusals, an unknown flag or a value that is
    not a number, exit 2 too)."""
    return _parse(options, argv, description, hand_on=False)[0]


def parse_known_options(
    options: type[Options], argv: list[str] | None, description: str
) -> tuple[Options, list[str]]:
    """As `parse_options`, and the strings it does not know (the flags a benchmark hands
    on to train_iterative.py, which checks them), a bare `--` left out."""
    return _parse(options, argv, description, hand_on=True)


def _parse(
    options: type[Options], argv: list[str] | None, description: str, hand_on: bool
) -> tuple[Options, list[str]]:
    # Imported here: src.arguments imports torch and transformers, which a benchmark that
    # only imports this package (benchmarks/float_order.py) does not need.
    from src.arguments import FlagParser

    parser = FlagParser((options,), description=description)
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        parsed, unknown = parser.parse_args_into_dataclasses(args=argv, return_remaining_strings=True)
    except ArgumentError as error:
        parser.exit(USAGE_EXIT_STATUS, f"error: {error}\n")
    unknown = [item for item in unknown if item != "--"]
    if unknown and not hand_on:
        parser.error(f"unrecognized arguments: {' '.join(unknown)}")
    return parsed, unknown
