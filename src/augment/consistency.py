"""The foundation model's yes/no consistency check of new triplets (pure functions).

Two questions per kept sample, both about the (reference, hard negative) images:
does the new text describe the change? does the original text describe it too? A sample
stays only on yes / no. A yes to the second question means the mined negative matches
the original query: a likely false negative, recorded and dropped from the next round's
negatives. Answers are the probabilities of "yes" against "no" at the first generated
position, read from one forward pass, not from generated text.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from src.augment.filters import FilterResult, Kept, Rejection

FALSE_NEGATIVE = "consistency_false_negative"
CONSISTENCY_REASONS = ("consistency_new_text_no", FALSE_NEGATIVE)
YES_THRESHOLD = 0.5


def answer_token_ids(
    tokenizer, yes_answers: tuple[str, ...], no_answers: tuple[str, ...]
) -> tuple[list[int], list[int]]:
    """The first token ids of the yes and of the no answers, written alone and after a space
    (as they follow "ASSISTANT:"); ids that both answers start with are left out."""

    def first_tokens(answers: tuple[str, ...]) -> set[int]:
        ids = set()
        for answer in answers:
            for variant in (answer, " " + answer):
                tokens = tokenizer.encode(variant, add_special_tokens=False)
                if tokens:
                    ids.add(tokens[0])
        return ids

    yes, no = first_tokens(yes_answers), first_tokens(no_answers)
    shared = yes & no
    if not yes - shared or not no - shared:
        raise ValueError(
            f"the tokenizer starts {yes_answers} and {no_answers} with the same tokens; the "
            "consistency check cannot tell the answers apart"
        )
    return sorted(yes - shared), sorted(no - shared)


def yes_probability(logits: torch.Tensor, yes_ids: list[int], no_ids: list[int]) -> torch.Tensor:
    """P(yes) / (P(yes) + P(no)) per row of next-token `logits` (rows x vocabulary)."""
    probabilities = logits.float().softmax(dim=-1)
    yes = probabilities[:, yes_ids].sum(dim=-1)
    no = probabilities[:, no_ids].sum(dim=-1)
    return yes / (yes + no).clamp_min(torch.finfo(torch.float32).tiny)


@dataclass(frozen=True)
class Verdict:
    keep: bool
    reason: str | None


def verdict(new_text_yes: float, original_text_yes: float) -> Verdict:
    """Keep on yes / no; a yes to the original text flags a false negative (and drops the sample)."""
    if original_text_yes > YES_THRESHOLD:
        return Verdict(False, FALSE_NEGATIVE)
    if new_text_yes <= YES_THRESHOLD:
        return Verdict(False, "consistency_new_text_no")
    return Verdict(True, None)


def apply_answers(kept: Kept, answers: dict[str, tuple[float, float]]) -> FilterResult:
    """Filter `kept` by the answers {pairid: (new text yes, original text yes)}."""
    result = FilterResult()
    for pair, text in kept:
        decision = verdict(*answers[pair.pairid])
        if decision.keep:
            result.kept.append((pair, text))
        else:
            result.rejected.append(Rejection(pair, text, decision.reason))
    return result


def false_negatives(rejected: list[Rejection]) -> dict[str, list[str]]:
    """{source pairid: [mined negatives]} that the check found to match the original text."""
    found: dict[str, list[str]] = {}
    for rejection in rejected:
        if rejection.reason == FALSE_NEGATIVE:
            found.setdefault(rejection.pair.source_pairid, []).append(rejection.pair.negative)
    return found
