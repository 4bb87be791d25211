"""What a careful captioner writes for a pair, and whether a text is that: `describes`.

A careful captioner at cap k names the min(k, n) most salient of a pair's n differences,
in the domain's own grammar. "Most salient" is taken over the sets one text can state:
among the k-subsets of the differences that the grammar can state together, the first in
lexicographic order of salience rank (so the most salient change is in it whenever some
statable set holds it). Where no k-subset is statable, the largest statable smaller one is
taken; where no change can be stated alone (two shapes swapping cells), nothing is named.

`describes` is the one truth of the simulated captioner: its generations are labelled
correct by it, and its judge answers by it (then errs at the judge's rate).
"""

from __future__ import annotations

import itertools
from collections import Counter
from collections.abc import Sequence

from src.offline.domain import Change, Description, Domain
from src.offline.domains import description_domain

DEFAULT_MAX_NAMED_CHANGES = 2


def check_cap(domain: Domain, max_named_changes: int) -> None:
    """ValueError when the domain's grammar cannot state that many changes in one text."""
    if not 1 <= max_named_changes <= domain.max_changes_per_text:
        raise ValueError(
            f"max_named_changes {max_named_changes}: the {domain.name} grammar states 1 to "
            f"{domain.max_changes_per_text} changes in one text"
        )


def statable(domain: Domain, reference: Description, changes: Sequence[Change]) -> bool:
    return domain.render_changes(reference, changes, None) is not None


def most_salient_statable(
    domain: Domain, reference: Description, differences: Sequence[Change], k: int
) -> list[Change]:
    """The first statable subset of `differences` (most salient first) of the largest size
    up to k, in lexicographic order of salience rank; [] when none is."""
    for size in range(min(k, len(differences)), 0, -1):
        for subset in itertools.combinations(differences, size):
            if statable(domain, reference, subset):
                return list(subset)
    return []


def named_changes(
    domain: Domain, reference: Description, target: Description, max_named_changes: int
) -> list[Change]:
    """What a careful captioner at this cap names for the pair, most salient first."""
    differences = domain.differences(reference, target)
    return most_salient_statable(domain, reference, differences, max_named_changes)


def stated_or_none(domain: Domain, reference: Description, text: str | None) -> list[Change] | None:
    """The changes a text states about the reference; None when there is no text or it is not
    of the domain's grammar (or does not apply to the reference)."""
    if text is None:
        return None
    try:
        return domain.stated_changes(reference, text)
    except ValueError:
        return None


def describes(
    reference: Description,
    target: Description,
    text: str | None,
    max_named_changes: int = DEFAULT_MAX_NAMED_CHANGES,
    domain: Domain | None = None,
) -> bool:
    """Whether `text` is what a careful captioner writes for reference -> target, phrasing
    aside: it parses in the domain's grammar (the domain of the descriptions unless given),
    every change it states is a true difference of the pair (right object, right value,
    right direction), and the changes it states are exactly the min(max_named_changes, n)
    most salient differences (see the module docstring). No text, or no difference to name:
    False."""
    domain = domain or description_domain(reference)
    check_cap(domain, max_named_changes)
    stated = stated_or_none(domain, reference, text)
    named = named_changes(domain, reference, target, max_named_changes)
    return bool(named) and stated is not None and Counter(stated) == Counter(named)
