"""What a synthetic domain offers the captioners: its descriptions, its caption grammar and
its changes.

A domain (the shapes of `synthetic/`, the garments of `garments/`) describes every image of
its benchmark by a structured description, written beside the CIRR files in a file of its
own (`descriptions_file`). The scene oracle needs the domain's exact texts for pairs one or
two edits apart; the simulated captioner needs the full list of atomic differences between
any two descriptions, in the domain's salience order, and a grammar that states a chosen
set of them and reads them back.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Change:
    """One atomic difference, stated relative to the reference description.

    `kind` is the domain's name for it ("recolour", "add", "colour", ...); `subject` says
    what it is about where a description holds several objects (None where it holds one);
    `value` is the new value (None for a removal). Two texts state the same change when
    their changes are equal.
    """

    kind: str
    subject: Hashable
    value: Hashable

    @property
    def topic(self) -> Hashable:
        """What the change is about: its subject, or its kind in a one-object domain. A
        false change never shares a topic with a named one (caption_errors.py)."""
        return self.kind if self.subject is None else self.subject


Description = Hashable
Changes = Sequence[Change]


@dataclass(frozen=True)
class Domain:
    """One synthetic domain, as functions over its descriptions.

    - `describe_difference(reference, target, rng)`: the scene oracle's exact text, None
      when the two are equal or more than two edits apart;
    - `apply_caption(reference, text)`: the description a text turns the reference into
      (ValueError when it does not parse or apply);
    - `differences(reference, target)`: every atomic difference, most salient first (each
      domain documents its salience order);
    - `render_changes(reference, changes, rng)`: a text stating exactly these changes
      (canonical without rng), None when the grammar cannot state them together;
    - `stated_changes(reference, text)`: the changes a text states (ValueError when it does
      not parse or apply);
    - `alternatives(reference, change)`: the same change with another value;
    - `possible_changes(reference)`: every single change the reference allows.
    """

    name: str
    descriptions_file: str
    max_changes_per_text: int
    owns: Callable[[object], bool]
    load_descriptions: Callable[[Path], dict[str, Description]]
    describe_difference: Callable[[Description, Description, random.Random | None], str | None]
    apply_caption: Callable[[Description, str], Description]
    differences: Callable[[Description, Description], list[Change]]
    render_changes: Callable[[Description, Changes, random.Random | None], str | None]
    stated_changes: Callable[[Description, str], list[Change]]
    alternatives: Callable[[Description, Change], list[Change]]
    possible_changes: Callable[[Description], list[Change]]
