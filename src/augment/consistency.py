"""The foundation model's yes/no consistency check of new triplets (pure functions).

Two questions per kept sample, both about the (reference, hard negative) images:
does the new text describe the change? does the original text describe it too? A sample
stays only on yes / no. A yes to the second question means the mined negative matches
the original query: a likely false negative, recorded and dropped from the next round's
negatives. Answers are the probabilities of "yes" against "no" at the first generated
position, read from one forward pass, not from generated text.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

import torch

from src.augment.pairs import CaptionPair

CONSISTENCY_REASONS = ("consistency_new_text_no", "consistency_false_negative")
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
    false_negative: bool
    reason: str | None


def verdict(new_text_yes: float, original_text_yes: float) -> Verdict:
    """Keep on yes / no; a yes to the original text flags a false negative (and drops the sample)."""
    if original_text_yes > YES_THRESHOLD:
        return Verdict(False, True, "consistency_false_negative")
    if new_text_yes <= YES_THRESHOLD:
        return Verdict(False, False, "consistency_new_text_no")
    return Verdict(True, False, None)


def apply_answers(
    kept: list[tuple[CaptionPair, str]], answers: dict[str, tuple[float, float]]
) -> tuple[list[tuple[CaptionPair, str]], list[tuple[CaptionPair, str, str]], Counter, dict]:
    """Filter `kept` by the answers {pairid: (new text yes, original text yes)}.

    Returns the samples that stay, the dropped ones as (pair, text, reason), the count of
    each reason, and the false negatives as {source pairid: [negative images]}.
    """
    stay, dropped, reasons, false_negatives = [], [], Counter(), {}
    for pair, text in kept:
        decision = verdict(*answers[pair.pairid])
        if decision.false_negative:
            false_negatives.setdefault(pair.source_pairid, []).append(pair.negative)
        if decision.keep:
            stay.append((pair, text))
        else:
            dropped.append((pair, text, decision.reason))
            reasons[decision.reason] += 1
    return stay, dropped, reasons, false_negatives
