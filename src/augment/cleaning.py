"""Clean-up and rejection rules for generated modification texts (pure functions).

A generation is cleaned (the `cot` answer after its marker, the first line and sentence,
labels, list markers, markdown and quotes stripped) and then judged; the first rule that
fails names the rejection reason, and every reason is counted in the file's stats.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass

from src.augment.filters import FilterResult, Rejection
from src.augment.pairs import CaptionPair
from src.augment.prompts import FINAL_MARKER
from src.records import Generation

# In the order they are checked.
REJECTION_REASONS = (
    "not_describable",  # the generator wrote nothing (scene oracle: no 1-2 edit difference)
    "no_final_marker",  # cot: the final-text marker never came
    "empty",  # no letters left after clean-up
    "truncated",  # generation hit --max_new_tokens before the sentence ended
    "mentions_images",  # talks about "the first image", "the right image", ...
    "too_long",
    "copies_original",  # the original text again
    "duplicate",  # same reference and text as an earlier kept pair
)

# "Overlong": more words than MAX_LENGTH_RATIO x the original's, and more than MIN_WORD_LIMIT
# (short originals still leave room for a two-step change).
MAX_LENGTH_RATIO = 3
MIN_WORD_LIMIT = 32

QUOTES = "\"'`“”‘’«»"
_FILLER = re.compile(r"^(?:sure|certainly|of course|okay|ok)\b[\s,.!:]*", re.IGNORECASE)
_LABEL = re.compile(
    r"^(?:here(?:'s|\s+is)\s+)?(?:(?:the|a|my)\s+)?"
    r"(?:(?:new|final|modified|updated|rewritten)\s+)?(?:modification\s+)?"
    r"(?:text|caption|instruction|answer|description|sentence|modification|output|response)"
    r"\s*(?:is\s*)?[:\-–—]\s*",
    re.IGNORECASE,
)
_LIST_MARKER = re.compile(r"^\s*(?:[-*•>#]+|\d+[.)])\s+")
_MARKDOWN = re.compile(r"\*\*|__|`")
_SENTENCE_END = re.compile(r"[.!?][\"'”’»]*(?=\s|$)")
_MARKER = re.compile(re.escape(FINAL_MARKER), re.IGNORECASE)
_IMAGE_TALK = re.compile(
    r"\b(?:first|second|left|right|reference|target|other)\s+(?:image|picture|photo)s?\b"
    r"|\b(?:image|picture|photo)\s*(?:1|2|one|two)\b|\b(?:both|two)\s+(?:images|pictures|photos)\b",
    re.IGNORECASE,
)


@dataclass(frozen=True)
class Judged:
    """A cleaned text and why it was rejected (None: kept)."""

    text: str | None
    reason: str | None


def final_text(raw: str) -> str | None:
    """The `cot` answer: what follows the last final-text marker, None without one."""
    parts = _MARKER.split(raw)
    return parts[-1] if len(parts) > 1 else None


def _printable(text: str) -> str:
    kept = []
    for char in text:
        if char in "\t\r":
            kept.append(" ")
        elif char == "\n" or not (unicodedata.category(char).startswith("C") or char == "\ufffd"):
            kept.append(char)
    return "".join(kept)


def strip_quotes(text: str) -> str:
    """Quotes around the text, and a lone quote left at either end."""
    text = text.strip()
    while len(text) >= 2 and text[0] in QUOTES and text[-1] in QUOTES:
        text = text[1:-1].strip()
    if sum(text.count(q) for q in QUOTES) == 1:
        if text[:1] in QUOTES:
            text = text[1:]
        elif text[-1:] in QUOTES:
            text = text[:-1]
    return text.strip()


def _strip_line(line: str) -> str:
    line = _MARKDOWN.sub("", line)
    previous = None
    while previous != line:
        previous = line
        line = _LIST_MARKER.sub("", line)
        line = strip_quotes(_LABEL.sub("", _FILLER.sub("", line.strip())))
    return line


def clean_text(raw: str) -> tuple[str, bool]:
    """The first sentence of the first non-empty line, without labels, list markers,
    markdown and quotes; and whether it visibly ended (a sentence end or a line break).

    A line holding only a label ("New text:") is skipped, so the text on the next line is
    taken.
    """
    lines = _printable(raw).split("\n")
    for index, line in enumerate(lines):
        stripped = _strip_line(line)
        if not stripped:
            continue
        sentence_end = _SENTENCE_END.search(stripped)
        if sentence_end is not None:
            stripped = stripped[: sentence_end.end()]
        ended = sentence_end is not None or index < len(lines) - 1
        return " ".join(strip_quotes(stripped).split()), ended
    return "", False


def normalize(text: str) -> str:
    """Lower case, letters and digits only, single spaces: the form compared for copies."""
    return " ".join(re.sub(r"[^\w\s]", " ", text.lower()).split())


def mentions_images(text: str) -> bool:
    return _IMAGE_TALK.search(text) is not None


def too_long(text: str, original: str) -> bool:
    return len(text.split()) > max(MIN_WORD_LIMIT, MAX_LENGTH_RATIO * len(original.split()))


def judge(raw: str | None, original: str, mode: str, finished: bool) -> Judged:
    """Clean one generation and apply every rule but `duplicate` (which needs the others)."""
    if raw is None:
        return Judged(None, "not_describable")
    if mode == "cot":
        raw = final_text(raw)
        if raw is None:
            return Judged(None, "no_final_marker")
    text, ended = clean_text(raw)
    if not any(char.isalpha() for char in text):
        return Judged(None, "empty")
    if not (ended or finished):
        return Judged(text, "truncated")
    if mentions_images(text):
        return Judged(text, "mentions_images")
    if too_long(text, original):
        return Judged(text, "too_long")
    if normalize(text) == normalize(original):
        return Judged(text, "copies_original")
    return Judged(text, None)


def filter_generations(
    pairs: list[CaptionPair], generations: dict[str, Generation], mode: str
) -> FilterResult:
    """Clean and judge each pair's generation (by pairid); a text already kept for the
    same reference image is a `duplicate`."""
    result, seen = FilterResult(), set()
    for pair in pairs:
        generation = generations[pair.pairid]
        judged = judge(generation.text, pair.original_caption, mode, generation.finished)
        if judged.reason is None:
            key = (pair.reference, normalize(judged.text))
            if key in seen:
                judged = Judged(judged.text, "duplicate")
            seen.add(key)
        if judged.reason is None:
            result.kept.append((pair, judged.text))
        else:
            result.rejected.append(Rejection(pair, judged.text, judged.reason))
    return result
